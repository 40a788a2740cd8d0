"""The JumpReLU SAE (Rajamanoharan et al. 2024): z = pre · 1[pre > θ] with a learned threshold θ
per latent, trained through a straight-through kernel of width `bandwidth`."""

import jax
import jax.numpy as jnp

from saejax import activations
from saejax.errors import ConfigError
from saejax.sae import core, linear, registry

# Anthropic's pre-activation loss (Conerly et al. 2025: λ · Σ_i ReLU(θ_i - pre_i) · ||W_dec[i]|| over every
# latent; `losses.pre_act`) on by default for JumpReLU: a latent whose pre-activations all fall below its
# threshold gets no other gradient and stays dead. Gemma-3 layer 6 (d_sae 3072, target L0 32, 200 steps
# of 4096 at lr 3e-3): λ 0 / 1e-5 / 1e-4 / 1e-3 left 56 / 46 / 22 / 12 % of latents dead on held-out
# rows at FVU 0.0588 / 0.0564 / 0.0561 / 0.1112 (SAELens' dead-latents-only form at 1e-3: 32 %, 0.0596);
# BUILD_NOTES.md, "JumpReLU aiming at an L0".
PRE_ACT_COEFF = 1e-4


def validate(opts: registry.Options) -> None:
    """ConfigError unless the bandwidth and the initial threshold (when set) are > 0."""
    if not (opts.bandwidth > 0 and (opts.init_threshold is None or opts.init_threshold > 0)):
        raise ConfigError(
            f"sae.jumprelu_bandwidth={opts.bandwidth} and sae.jumprelu_init_threshold={opts.init_threshold} must be > 0"
        )


def init(key: jax.Array, opts: registry.Options) -> registry.Params:
    """Linear params, b_enc [d_sae] at zero and threshold [d_sae] at opts.init_threshold (None: 0,
    for `saejax.step.init_train_state` to set from the data)."""
    threshold = jnp.full((opts.d_sae,), opts.init_threshold or 0.0, jnp.float32)
    return {**linear.init_linear_of(key, opts), "b_enc": linear.zero_latents(opts), "threshold": threshold}


def encode(params: registry.Params, x: jax.Array, train: bool, opts: registry.Options):
    """x [B, d_in] -> (z [B, d_sae], pre_acts [B, d_sae], {})."""
    pre = linear.pre_acts(params, x, opts)
    return activations.jumprelu(pre, params["threshold"], opts.bandwidth), pre, {}


SPEC = registry.Architecture(
    name="jumprelu", init=init, encode=encode, decode=linear.decode, forward=core.dense_forward,
    pre_acts_of=linear.linear_pre_acts_of, validate=validate, tieable=True, separate_output=True,
    learned_thresholds=True,
    penalties=("l0", "target_l0"), scaled_lr=True, lr_decay="linear", pre_act=PRE_ACT_COEFF, target_l0_from_k=True,
    export=registry.SAELensExport("jumprelu", transcoder="jumprelu_transcoder"),
)
