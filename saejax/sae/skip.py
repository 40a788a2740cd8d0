"""Skip transcoders (Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse autoencoders for
interpretability"; sparsify's ``skip_connection``, SAELens' ``SkipTranscoder``): a transcoder plus a
linear skip term from its input,

    x_hat = decode(encode(x)) + x @ W_skip.T        W_skip [d_out, d_in], zero at init

W_skip is oriented as SAELens and sparsify hold it. Each is the skip variant of a transcoder
architecture: relu_skip, topk_skip, batchtopk_skip, jumprelu_skip (`skip_variant`), with everything
else (encoder, decoder, penalties, defaults, the sparse TopK path) the base's. A skip transcoder is
a transcoder only (`registry.Architecture.needs_target`). `SAE.decode(params, z)` is the latents' part
alone; the skip term needs x, so reconstructions come from `SAE.forward`.
"""

import dataclasses

import jax
import jax.numpy as jnp

from saejax.sae import core, linear, registry

# SAELens' architecture for a transcoder -> for its skip variant.
SAELENS_SKIP = {"transcoder": "skip_transcoder", "jumprelu_transcoder": "jumprelu_skip_transcoder"}


def skip_term(params: registry.Params, x: jax.Array, dtype: str) -> jax.Array:
    """x @ W_skip.T in `dtype` with float32 accumulation: [B, d_in] -> [B, d_out]."""
    return linear.matmul(x, params["W_skip"].T, dtype)


def _export(base: registry.Architecture) -> registry.SAELensExport | None:
    """The skip variant's SAELens mapping: the base's transcoder architecture's skip variant."""
    if base.export is None or base.export.transcoder not in SAELENS_SKIP:
        return None
    name = SAELENS_SKIP[base.export.transcoder]
    return dataclasses.replace(base.export, architecture=name, transcoder=name)


def skip_variant(base: registry.Architecture) -> registry.Architecture:
    """The architecture `base` (a transcoder architecture: `separate_output`) with the skip term:
    named base.name + "_skip", params + W_skip [d_out, d_in] at zero (no latent axis)."""

    def init(key: jax.Array, opts: registry.Options) -> registry.Params:
        return {**base.init(key, opts), "W_skip": jnp.zeros((opts.d_out, opts.d_in), jnp.float32)}

    def forward(encode_fn, decode_fn, opts: registry.Options):
        inner = base.forward(encode_fn, decode_fn, opts)

        def forward_with_skip(params, x, train=True) -> core.SAEOutput:
            out = inner(params, x, train)
            return out._replace(x_hat=out.x_hat + skip_term(params, x, opts.dtype))

        return forward_with_skip

    return dataclasses.replace(base, name=f"{base.name}_skip", init=init, forward=forward,
                               latent_axes={**base.latent_axes, "W_skip": None}, tieable=False, needs_target=True,
                               export=_export(base))
