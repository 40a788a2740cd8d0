"""The ReLU SAE (optionally leaky), the standard SAE of Bricken et al. 2023: z = ReLU((x - b_dec) @ W_enc + b_enc)."""

import jax

from saejax import activations
from saejax.sae import core, linear, registry

# Decoder rows kept at unit norm (and the gradient along them removed), except for ReLU, which follows
# Anthropic's April 2024 update (Conerly et al., as SAELens' standard SAE): a free decoder norm, the L1
# term weighted by each latent's decoder norm. On MiniLM activations (d_sae 3072, L1 5, 200 steps of
# 4096) this kept 0.1 % of latents dead against 41 % with unit-norm rows (BUILD_NOTES.md).
FREE_DECODER_NORM = True


def init(key: jax.Array, opts: registry.Options) -> registry.Params:
    """Linear params (`linear.init_linear_of`) plus b_enc [d_sae] at zero."""
    return {**linear.init_linear_of(key, opts), "b_enc": linear.zero_latents(opts)}


def rectify(pre: jax.Array, leak: float) -> jax.Array:
    """ReLU, or a leaky ReLU of negative slope `leak` when it is non-zero. [B, d_sae] -> [B, d_sae]"""
    return activations.leaky_relu(pre, leak) if leak else activations.relu(pre)


def encode(params: registry.Params, x: jax.Array, train: bool, opts: registry.Options):
    """x [B, d_in] -> (z, pre_acts [B, d_sae], {})."""
    pre = linear.pre_acts(params, x, opts)
    return rectify(pre, opts.leak), pre, {}


def export_skip(hparams) -> str | None:
    """SAELens has no leaky ReLU SAE."""
    return "skipped: SAELens has no leaky-ReLU SAE (sae.leak > 0)" if hparams["leak"] else None


SPEC = registry.Architecture(
    name="relu", init=init, encode=encode, decode=linear.decode, forward=core.dense_forward,
    pre_acts_of=linear.linear_pre_acts_of, tieable=True, separate_output=True, penalties=("l1", "tanh", "kl"),
    free_decoder_norm=FREE_DECODER_NORM, export=registry.SAELensExport("standard", transcoder="transcoder"),
    export_skip=export_skip,
)
