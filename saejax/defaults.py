"""Defaults that depend on the architecture, and the one place a run's config is completed.

`saejax.config.base_config` leaves the architecture-dependent fields unset (None); `resolve`
fills them in from the tables below, so that a user who sets only ``sae.arch``, ``sae.d_sae``,
``sae.k`` and ``train.steps`` gets the recipe the literature (and our side-by-side measurements
with SAELens and sparsify, see BUILD_NOTES.md) found for that architecture, whatever config file
the run started from. It also keeps a config's job-specific penalties with their job: a sparsity
penalty the chosen architecture does not have (an L1 coefficient inherited from a ReLU config by a
TopK run, say) is switched off, with a note saying so.

The resolved values are what ``config.json`` records, so a resumed run, `saejax.load` and the
export all see concrete numbers.
"""

import math

import ml_collections

# Architectures whose sparsity is a fixed number of latents per row (or per batch).
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")

# The sparsity penalties each architecture's loss has. Other sparsity penalties are switched off by
# `resolve` (TopK-style SAEs get their sparsity from k; JumpReLU from its L0 term).
SPARSITY_PENALTIES = ("l1", "tanh", "kl", "l0", "target_l0")
PENALTIES_OF = {
    "relu": ("l1", "tanh", "kl"),
    "mlp": ("l1", "kl"),
    "gated": ("l1", "tanh", "kl"),
    "jumprelu": ("l0", "target_l0"),
    **{arch: () for arch in TOPK_FAMILY},
}

# AuxK coefficient for the TopK family: α = 1/32 (Gao et al. 2024, "Scaling and evaluating sparse
# autoencoders", section 2.4 and appendix B.1). The peers differ: sparsify 1.3 has AuxK off by default,
# SAELens uses 1.0 on its unnormalised MSE with a 1000-step dead window.
AUXK_COEFF = 1 / 32

# The dead window (config `loss.dead_tokens`): a latent that fired on none of this many training rows
# counts as dead, for AuxK, resampling and the training dead fraction. Gao et al. 2024 and sparsify use
# 10M tokens; on superposition data with a 400x spread of feature frequencies (TopK k 10, d_sae 800,
# 3000 steps of 1024) the dictionary recovery (MMCS) was 0.807 / 0.830 / 0.877 / 0.944 with windows
# of 10M / 1M / 300k / 100k rows (sparsify 0.812, SAELens 0.674), while on MiniLM activations
# (200 steps of 4096) 100k left FVU and dead share unchanged (BUILD_NOTES.md). A run whose data is
# mostly rare features (dictionaries of millions of latents) may want the longer window back.
DEAD_TOKENS = 100_000

# Initial norm of the encoder's rows (W_enc = scale · W_decᵀ with unit decoder rows; with a free
# decoder norm the decoder rows start at this norm too).
# - ReLU/Gated/JumpReLU/MLP: 0.1, Anthropic's April 2024 update (Conerly et al.), as SAELens.
# - TopK family: 1/√3 ≈ 0.577, the row norm of PyTorch's default nn.Linear init that sparsify's
#   encoder starts from (uniform ±1/√d_in entries); measured beside sparsify and SAELens on
#   MiniLM activations (BUILD_NOTES.md, "Peers on the same activations").
ENCODER_INIT_SCALE = {"relu": 0.1, "gated": 0.1, "jumprelu": 0.1, "mlp": 0.1,
                      **{arch: 1 / math.sqrt(3) for arch in TOPK_FAMILY}}


# Decoder rows kept at unit norm (and the gradient along them removed), except for ReLU, which follows
# Anthropic's April 2024 update (Conerly et al., as SAELens' standard SAE): a free decoder norm, the L1
# term weighted by each latent's decoder norm. On MiniLM activations (d_sae 3072, L1 5, 200 steps of
# 4096) this kept 0.1 % of latents dead against 41 % with unit-norm rows (BUILD_NOTES.md).
FREE_DECODER_NORM = ("relu",)


# Adam's learning rate. TopK family: 1.3e-3 / sqrt(d_sae / 2^14), i.e. the 1/sqrt(d_sae) scaling of
# Gao et al. 2024 (sparsify's Adam rule, 2e-4 / sqrt(d_sae / 2^14)) at 6.5x its size: on MiniLM activations
# (d_sae 3072, k 32, 200 steps of 4096) lr 1e-3 / 3e-3 / 5e-3 left a held-out FVU of 0.151 / 0.115 / 0.109
# with 0 / 0.8 / 4.6 % of latents dead (BUILD_NOTES.md). JumpReLU follows the same rule: aiming at L0 32
# on the same rows, lr 1e-3 (thresholds at 30x) / 3e-3 (at 10x) gave FVU 0.130 / 0.108 with 1.8 / 4.0 %
# dead. Other architectures: 1e-3.
TOPK_LR_AT_16K = 1.3e-3
SCALED_LR_ARCHS = TOPK_FAMILY + ("jumprelu",)
OTHER_LR = 1e-3


# Global gradient-norm clipping at 1.0 for every architecture, as SAELens' trainer. On MiniLM activations
# (200 steps of 4096, d_sae 3072) it took TopK's held-out FVU from 0.1508 to 0.1398 at lr 1e-3 and from
# 0.117 to 0.112 at this module's default lr, and ReLU + L1 (λ 8) from FVU 0.461 at L0 34.9 (5.8 % dead)
# to 0.394 at L0 19.6 (4.7 % dead) (BUILD_NOTES.md).
GRAD_CLIP = 1.0


# The TopK family's decoder rows take Adam steps this many times the learning rate. Unit-norm rows
# turn by ~lr·sqrt(d_in) a step while the encoder's rows (norm 0.58) turn 1.7x as fast; SAELens'
# TopK SAE, whose decoder rows start at norm 0.1 and are normalised in the forward pass, turns them
# ~10x as fast. On MiniLM activations (d_sae 3072, k 32, 200 steps of 4096) 1x / 2x / 3x / 10x gave a
# held-out FVU of 0.1398 / 0.1276 / 0.1248 / 0.1269 at a constant lr of 1e-3 (SAELens 0.1365), and
# 0.2462 / 0.1966 / 0.1797 at 2e-4 (SAELens 0.2557); at the default lr 0.1112 / 0.1094 / 0.1104 (1.0 /
# 1.4 / 1.6 % dead); on Gemma-3-270M layer 6 0.0474 / 0.0453 / 0.0455 (10.1 / 8.1 / 7.5 % dead); on superposition
# data (the default lr is 5.9e-3 there) dictionary recovery fell from 0.944 to 0.937 (MMCS) at 2x and
# 3x, FVU rose from 0.016 to 0.019 / 0.021. At 2,000 steps on MiniLM, 2x gave 0.0872 against 1x's
# 0.0883 at a constant lr of 1e-3 (SAELens 0.0875), but 0.0898 against 0.0873 at the default lr
# (SAELens 0.0993): it helps most where the lr is below the best (BUILD_NOTES.md). ReLU at a constant
# 1e-3: 2x gave FVU 0.218 at L0 32 against 1x's 0.268 at L0 31.5; other architectures: 1 (not
# measured at their defaults).
DECODER_LR_SCALE = {arch: 2.0 for arch in TOPK_FAMILY}


def decoder_lr_scale(arch: str, chosen: float | None = None) -> float:
    """`chosen` (optim.decoder_lr_scale) unless it is None, else `DECODER_LR_SCALE` of `arch` (1 if unset)."""
    return DECODER_LR_SCALE.get(arch, 1.0) if chosen is None else chosen


# JumpReLU (Rajamanoharan et al. 2024). Bandwidth of the straight-through kernel: 0.05, as SAELens, on
# rows scaled to E||x||² = d_in (Gemma Scope's 0.001 is for E||x||² = 1, where pre-activations are
# sqrt(d_in) times smaller). Sparsity: aim at an L0 (Gemma Scope 2's target-L0 penalty, here on the
# batch's mean L0) of sae.k, starting there (thresholds from the data, `saejax.initializers`).
JUMPRELU_BANDWIDTH = 0.05
TARGET_L0_COEFF = 1.0
# JumpReLU's thresholds take Adam steps this many times the learning rate: Adam moves every parameter
# by ~lr a step, and one step of the encoder moves a pre-activation by up to ~lr · ||x||_1 (~0.3 at
# lr 1e-3, d_in 384), so thresholds stepped at lr alone trail far behind the pre-activations (aiming
# at L0 32 on MiniLM activations with a 38th of the default target penalty, L0 was 194 after 200 steps
# at 1x and 48.8 at 30x; at the default penalty and lr 3e-3, 10x left FVU 0.108 with 4.0 % of latents
# dead, 30x 0.110 with 10.4 %; BUILD_NOTES.md).
THRESHOLD_LR_SCALE = 10.0
# Anthropic's pre-activation loss (Conerly et al. 2025: λ · Σ_i ReLU(θ_i - pre_i) · ||W_dec[i]|| over every
# latent; `losses.pre_act`) on by default for JumpReLU: a latent whose pre-activations all fall below its
# threshold gets no other gradient and stays dead. Gemma-3 layer 6 (d_sae 3072, target L0 32, 200 steps
# of 4096 at lr 3e-3): λ 0 / 1e-5 / 1e-4 / 1e-3 left 56 / 46 / 22 / 12 % of latents dead on held-out
# rows at FVU 0.0588 / 0.0564 / 0.0561 / 0.1112 (SAELens' dead-latents-only form at 1e-3: 32 %, 0.0596);
# BUILD_NOTES.md, "JumpReLU aiming at an L0".
PRE_ACT_COEFF = 1e-4


def threshold_lr_scale(chosen: float | None = None) -> float:
    """`chosen` (optim.threshold_lr_scale) unless it is None, else THRESHOLD_LR_SCALE."""
    return THRESHOLD_LR_SCALE if chosen is None else chosen


def target_l0(arch: str, k: int, l0_coeff: float, chosen: float | None = None) -> float:
    """`chosen` (loss.target_l0) unless it is None, else `k` for a JumpReLU SAE without an L0
    coefficient (`l0_coeff`, loss.l0) and 0 (no target) otherwise."""
    if chosen is not None:
        return chosen
    return float(k) if arch == "jumprelu" and not l0_coeff else 0.0


def grad_clip(chosen: float | None = None) -> float:
    """`chosen` (optim.grad_clip) unless it is None, else GRAD_CLIP (the same for every architecture)."""
    return GRAD_CLIP if chosen is None else chosen


def learning_rate(arch: str, d_sae: int, chosen: float | None = None) -> float:
    """`chosen` (optim.lr) unless it is None, else the architecture's default (see TOPK_LR_AT_16K)."""
    if chosen is not None:
        return chosen
    return TOPK_LR_AT_16K / math.sqrt(d_sae / 2**14) if arch in SCALED_LR_ARCHS else OTHER_LR


def unit_norm_decoder(arch: str, chosen: bool | None = None) -> bool:
    """`chosen` (train.unit_norm_decoder) unless it is None, else True except for `FREE_DECODER_NORM`."""
    return arch not in FREE_DECODER_NORM if chosen is None else chosen


def l1_decoder_weighted(arch: str, chosen: bool | None = None, unit_norm: bool | None = None) -> bool:
    """`chosen` (loss.l1_decoder_weighted) unless it is None, else whether the decoder norm is free
    (`unit_norm`, or the architecture's default): a free norm must not let the L1 term shrink the
    latents while their decoder rows grow."""
    if chosen is not None:
        return chosen
    return arch != "mlp" and not unit_norm_decoder(arch, unit_norm)


def encoder_init_scale(arch: str, chosen: float | None = None) -> float:
    """`chosen` (sae.dec_init_norm) unless it is None, else `ENCODER_INIT_SCALE` of `arch`."""
    return ENCODER_INIT_SCALE.get(arch, 0.1) if chosen is None else chosen


def auxk_coeff(arch: str, chosen: float | None = None) -> float:
    """`chosen` (loss.auxk) unless it is None, else 1/32 for the TopK family and 0 for the rest."""
    return (AUXK_COEFF if arch in TOPK_FAMILY else 0.0) if chosen is None else chosen


def pre_act_coeff(arch: str, chosen: float | None = None) -> float:
    """`chosen` (loss.pre_act) unless it is None, else `PRE_ACT_COEFF` for JumpReLU and 0 for the rest."""
    return (PRE_ACT_COEFF if arch == "jumprelu" else 0.0) if chosen is None else chosen


def resolve(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(a copy of `config` with every architecture-dependent field set, notes for the user).

    Fields filled in when unset (None): ``train.unit_norm_decoder`` (`FREE_DECODER_NORM`),
    ``loss.l1_decoder_weighted`` (when the decoder norm is free), ``loss.auxk`` (1/32 for the TopK family, else 0),
    ``loss.pre_act`` (`PRE_ACT_COEFF` for JumpReLU, else 0),
    ``optim.lr`` (`learning_rate`), ``optim.grad_clip`` (`grad_clip`), ``optim.threshold_lr_scale``,
    ``optim.decoder_lr_scale``, ``loss.target_l0`` (`target_l0`),
    ``sae.dec_init_norm`` (`ENCODER_INIT_SCALE`) and ``loss.dead_steps`` (``loss.dead_tokens``
    rows, rounded up to whole batches). Sparsity penalties the architecture does not have
    (`PENALTIES_OF`) are set to 0, each with a note. Resolving a resolved config changes nothing.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # a copy (FieldReferences to plain values)
    arch, notes = config.sae.arch, []
    if arch in PENALTIES_OF:  # an unknown arch is reported by make_sae
        for penalty in SPARSITY_PENALTIES:
            if penalty not in PENALTIES_OF[arch] and config.loss[penalty]:
                notes.append(f"loss.{penalty}={config.loss[penalty]} is not a penalty of sae.arch={arch!r} "
                             f"({_sparsity_of(arch)}); not applied")
                config.loss[penalty] = 0.0
    config.train.unit_norm_decoder = unit_norm_decoder(arch, config.train.unit_norm_decoder)
    config.loss.l1_decoder_weighted = l1_decoder_weighted(arch, config.loss.l1_decoder_weighted,
                                                          config.train.unit_norm_decoder)
    config.loss.auxk = auxk_coeff(arch, config.loss.auxk)
    config.loss.pre_act = pre_act_coeff(arch, config.loss.get("pre_act"))
    config.optim.lr = learning_rate(arch, config.sae.d_sae, config.optim.lr)
    config.loss.target_l0 = target_l0(arch, config.sae.k, config.loss.l0, config.loss.target_l0)
    config.optim.grad_clip = grad_clip(config.optim.grad_clip)
    config.optim.threshold_lr_scale = threshold_lr_scale(config.optim.get("threshold_lr_scale"))
    config.optim.decoder_lr_scale = decoder_lr_scale(arch, config.optim.get("decoder_lr_scale"))
    config.sae.dec_init_norm = encoder_init_scale(arch, config.sae.dec_init_norm)
    if config.loss.dead_steps is None:
        config.loss.dead_steps = max(1, math.ceil(config.loss.dead_tokens / config.train.batch_size))
    return config, notes


def _sparsity_of(arch: str) -> str:
    if arch in TOPK_FAMILY:
        return "its sparsity is sae.k"
    penalties = PENALTIES_OF[arch]
    return f"its sparsity penalties are {', '.join('loss.' + p for p in penalties)}"
