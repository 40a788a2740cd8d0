"""Matryoshka SAEs (Bussmann et al. 2025): BatchTopK latents whose nested prefixes [0, m) each
reconstruct the input on their own (aux["prefix_x_hats"], read by `losses.matryoshka_mse`). Without
sae.matryoshka_prefixes the prefixes are `core.default_prefixes`."""

import functools

import jax.numpy as jnp

from saejax.errors import ConfigError
from saejax.sae import core, linear, registry, topk


def validate(opts: registry.Options) -> None:
    """ConfigError unless the prefixes are strictly increasing, positive, and end at d_sae."""
    prefixes = opts.prefixes
    if list(prefixes) != sorted(set(prefixes)) or prefixes[0] <= 0 or prefixes[-1] != opts.d_sae:
        raise ConfigError(
            f"sae.matryoshka_prefixes={list(prefixes)} must be strictly increasing, positive, "
            f"and end at d_sae={opts.d_sae}"
        )


def _forward_matryoshka(encode_fn, dtype, prefixes, params, x, train=True):
    """Decode prefix by prefix: aux["prefix_x_hats"][i] uses latents [0, prefixes[i]) only."""
    z, pre, aux = encode_fn(params, x, train)
    x_hat = jnp.broadcast_to(params["b_dec"], x.shape)
    prefix_x_hats = []
    for start, stop in zip((0,) + tuple(prefixes[:-1]), prefixes):
        x_hat = x_hat + linear.matmul(z[:, start:stop], params["W_dec"][start:stop], dtype)
        prefix_x_hats.append(x_hat)
    return core.SAEOutput(x_hat, z, pre, {**aux, "prefix_x_hats": prefix_x_hats})


def forward(encode_fn, decode_fn, opts: registry.Options):
    """The prefix-by-prefix forward (x_hat: all latents' reconstruction)."""
    return functools.partial(_forward_matryoshka, encode_fn, opts.dtype, opts.prefixes)


SPEC = registry.Architecture(
    name="matryoshka", init=topk.init_batchtopk, encode=topk.encode_batchtopk, decode=linear.decode,
    forward=forward, pre_acts_of=linear.linear_pre_acts_of, latent_axes=topk.SCALAR_THRESHOLD_AXES,
    buffers=("threshold",), update_buffers=topk.update_running_threshold, validate=validate,
    extra_hparams=lambda opts: {"prefixes": opts.prefixes}, reconstruction="matryoshka_mse",
    export=registry.SAELensExport("jumprelu", scalar_threshold=True), **topk.FAMILY,
)
