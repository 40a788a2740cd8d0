"""The deep SAE: Flax MLP encoder and decoder (`saejax.mlp.MLP`), whose params sit under "encoder" /
"decoder" beside b_dec. It has no linear decoder rows, so no SAELens export, resampling, decoder
constraints or AuxK."""

import functools

import jax
import jax.numpy as jnp

from saejax.sae import core, registry, relu

Params = registry.Params


@functools.lru_cache(maxsize=None)
def modules(d_in: int, d_sae: int, hidden: tuple[int, ...], dtype: str):
    """(encoder [.., d_in] -> [.., d_sae], decoder [.., d_sae] -> [.., d_in]) Flax modules."""
    from saejax.mlp import MLP  # noqa: PLC0415 (Flax is imported by MLP SAEs only: 0.15 s of start-up)

    encoder = MLP(tuple(hidden) + (d_sae,), final_bias=True, dtype=dtype)
    decoder = MLP(tuple(reversed(hidden)) + (d_in,), final_bias=False, dtype=dtype)
    return encoder, decoder


def _modules_of(opts: registry.Options):
    return modules(opts.d_in, opts.d_sae, tuple(opts.mlp_hidden), opts.dtype)


def init(key: jax.Array, opts: registry.Options) -> Params:
    """{"encoder": Flax params, "decoder": Flax params, "b_dec": [d_in] zeros}."""
    encoder, decoder = _modules_of(opts)
    k_enc, k_dec = jax.random.split(key)
    return {
        "encoder": encoder.init(k_enc, jnp.zeros((1, opts.d_in)))["params"],
        "decoder": decoder.init(k_dec, jnp.zeros((1, opts.d_sae)))["params"],
        "b_dec": jnp.zeros((opts.d_in,), jnp.float32),
    }


def encode(params: Params, x: jax.Array, train: bool, opts: registry.Options):
    """x [B, d_in] -> (z = (leaky) ReLU(encoder(x - b_dec)) [B, d_sae], pre_acts [B, d_sae], {})."""
    pre = _modules_of(opts)[0].apply({"params": params["encoder"]}, x - params["b_dec"])
    return relu.rectify(pre, opts.leak), pre, {}


def decode(params: Params, z: jax.Array, opts: registry.Options) -> jax.Array:
    """decoder(z) + b_dec: [B, d_sae] -> [B, d_in]."""
    return _modules_of(opts)[1].apply({"params": params["decoder"]}, z) + params["b_dec"]


SPEC = registry.Architecture(
    name="mlp", init=init, encode=encode, decode=decode, forward=core.dense_forward, pre_acts_of=None,
    latent_axes={"b_dec": None}, extra_hparams=lambda opts: {"mlp_hidden": tuple(opts.mlp_hidden)},
    has_linear_decoder=False, penalties=("l1", "kl"),
)
