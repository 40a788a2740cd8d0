"""The gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude path
sharing W_enc (rescaled by exp(r_mag)) decides how much. It has no b_enc: b_gate, b_mag, r_mag [d_sae]."""

import jax
import jax.numpy as jnp

from saejax import activations
from saejax.sae import core, linear, registry

Params = registry.Params


def gated_magnitude(params: Params, shared: jax.Array, latents=slice(None)) -> jax.Array:
    """The gated SAE's magnitude path from the shared (x - b_dec) @ W_enc[:, latents] [B, n]:
    rescaled by exp(r_mag) and shifted by b_mag, per latent. -> [B, n]"""
    return shared * jnp.exp(params["r_mag"][latents]) + params["b_mag"][latents]


def gated_pre_acts_of(params: Params, x: jax.Array, latents: jax.Array | None, dtype: str) -> jax.Array:
    """The gated SAE's magnitude pre-activations of `latents` [n] (None: all): [B, d_in] -> [B, n]."""
    every = slice(None) if latents is None else latents
    return gated_magnitude(params, linear.centered_matmul(x, params["b_dec"], params["W_enc"][:, every], dtype), every)


def init(key: jax.Array, opts: registry.Options) -> Params:
    """Linear params plus b_gate, b_mag, r_mag [d_sae] at zero."""
    zeros = linear.zero_latents(opts)
    return {**linear.init_linear_of(key, opts), "b_gate": zeros, "b_mag": zeros, "r_mag": zeros}


def encode(params: Params, x: jax.Array, train: bool, opts: registry.Options):
    """x [B, d_in] -> (z [B, d_sae], the magnitude pre-activations [B, d_sae], {"gate_pre": [B, d_sae]})."""
    shared = linear.linear_pre_acts(params, x, opts.dtype)
    gate_pre = shared + params["b_gate"]
    mag_pre = gated_magnitude(params, shared)
    z = (gate_pre > 0) * activations.relu(mag_pre)
    return z, mag_pre, {"gate_pre": gate_pre}


SPEC = registry.Architecture(
    name="gated", init=init, encode=encode, decode=linear.decode, forward=core.dense_forward,
    pre_acts_of=gated_pre_acts_of, penalties=("l1", "tanh", "kl"), l1_term="gated_sparsity",
    export=registry.SAELensExport("gated"),
)
