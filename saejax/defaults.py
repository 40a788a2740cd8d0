"""Defaults that depend on the architecture, and the one place a run's config is completed.

`saejax.config.base_config` leaves the architecture-dependent fields unset (None); `resolve`
fills them in from the architecture's spec (`saejax.sae.registry`) and the
constants below, so that a user who sets only ``sae.arch``, ``sae.d_sae``,
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

from saejax import sae as sae_lib
from saejax.sae import registry

# What each architecture is, and its own defaults (encoder init scale, decoder lr scale, AuxK and
# pre-activation coefficients, free decoder norm, sparsity penalties), is declared by its spec in
# `saejax.sae.registry` (numbers and their sources in saejax/sae/{relu,topk,jumprelu}.py); the
# functions below read the spec. The tables further down are views of the shipped architectures.

# The sparsity penalties a loss may have. Those the chosen architecture does not have (its spec's
# `penalties`) are switched off by `resolve` (TopK-style SAEs get their sparsity from k; JumpReLU
# from its L0 term).
SPARSITY_PENALTIES = ("l1", "tanh", "kl", "l0", "target_l0")

# The dead window (config `loss.dead_tokens`): a latent that fired on none of this many training rows
# counts as dead, for AuxK, resampling and the training dead fraction. Gao et al. 2024 and sparsify use
# 10M tokens; on superposition data with a 400x spread of feature frequencies (TopK k 10, d_sae 800,
# 3000 steps of 1024) the dictionary recovery (MMCS) was 0.807 / 0.830 / 0.877 / 0.944 / 0.985 with
# windows of 10M / 1M / 300k / 100k / 25k rows (sparsify 0.812, SAELens 0.674). 25k against 100k, TopK at
# its defaults: Gemma-3 layer 6 (2000 steps of 1024) held-out FVU 0.0317 / 0.0325 with 3.4 / 11.5 % of
# latents dead; SynthSAEBench (3000 steps of 1024) FVU 0.2247 / 0.2265, dead 1.2 / 2.3 %, MCC 0.692 /
# 0.677; MiniLM (200 steps of 4096) FVU 0.1047 / 0.105, dead 0.4 / 1.5 % (BUILD_NOTES.md). Not measured
# past d_sae 4096: a dictionary of a million latents, most of them rare, may want a longer window.
DEAD_TOKENS = 25_000

# Adam's learning rate. TopK family: 1.3e-3 / sqrt(d_sae / 2^14) at batches of 4096 rows, i.e. the
# 1/sqrt(d_sae) scaling of Gao et al. 2024 (sparsify's Adam rule, 2e-4 / sqrt(d_sae / 2^14)) at 6.5x its
# size: on MiniLM activations (d_sae 3072, k 32, 200 steps of 4096) lr 1e-3 / 3e-3 / 5e-3 left a held-out
# FVU of 0.151 / 0.115 / 0.109 with 0 / 0.8 / 4.6 % of latents dead (BUILD_NOTES.md). JumpReLU follows the
# same rule: aiming at L0 32 on the same rows, lr 1e-3 (thresholds at 30x) / 3e-3 (at 10x) gave FVU 0.130 /
# 0.108 with 1.8 / 4.0 % dead. Smaller batches scale it by sqrt(batch / 4096), Adam's square-root rule
# (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient algorithms"); larger ones keep
# it (not measured). Same 3M rows, TopK k 25, d_sae 4096: on SynthSAEBench data at batch 1024, lr 2.6e-3 /
# 1e-3 gave FVU 0.246 / 0.222, dead 15 / 0.6 %, MCC 0.611 / 0.697, while at batch 4096 2.6e-3 won (0.231
# vs 0.256); on MiniLM (d_sae 3072, 800 steps of 1024) 3e-3 / 1.5e-3 gave 0.096 / 0.098 with 5.2 / 0.9 %
# dead; on toy superposition data (400 features in 200 dims, 3000 steps of 1024) MMCS 0.951 / 0.935 with
# 43.5 / 37.9 % dead: the higher lr is ahead on short or toy runs, far behind on SynthSAEBench.
# Other architectures: 1e-3. (Which rule an architecture follows: its spec's `scaled_lr`.)
TOPK_LR_AT_16K = 1.3e-3
LR_REFERENCE_BATCH = 4096
OTHER_LR = 1e-3


# Global gradient-norm clipping at 1.0 for every architecture, as SAELens' trainer. On MiniLM activations
# (200 steps of 4096, d_sae 3072) it took TopK's held-out FVU from 0.1508 to 0.1398 at lr 1e-3 and from
# 0.117 to 0.112 at this module's default lr, and ReLU + L1 (λ 8) from FVU 0.461 at L0 34.9 (5.8 % dead)
# to 0.394 at L0 19.6 (4.7 % dead) (BUILD_NOTES.md).
GRAD_CLIP = 1.0


# The TopK family and JumpReLU (their specs' `lr_decay`) decay the learning rate linearly to 0 over the
# last fifth of train.steps (Anthropic's April 2024 update, Conerly et al.; SAELens' lr_decay_steps);
# before it, after the warm-up, it is constant. Held-out FVU against a constant lr, d_sae 3072, k 32,
# batches of 4096: TopK on MiniLM 0.1094 -> 0.1048 at 200 steps and 0.0898 -> 0.0816 at 2,000 (SAELens
# at its defaults 0.0993), on Gemma-3 layer 6 0.0453 -> 0.0434; superposition data MMCS 0.937 -> 0.951;
# JumpReLU on MiniLM 0.1083 -> 0.1058. ReLU + L1 got worse (λ 4: FVU 0.249 at L0 35.1 -> 0.256 at L0
# 39.7) and keeps a constant lr, as do the unmeasured Gated and MLP SAEs. Decaying over the whole run
# cost TopK 0.1112 -> 0.1245 at 200 steps (BUILD_NOTES.md, "Peers on the same activations").
DECAY_FRACTION = 0.2


def decoder_lr_scale(arch: str, chosen: float | None = None) -> float:
    """`chosen` (optim.decoder_lr_scale) unless it is None, else the architecture's `decoder_lr_scale`
    (the TopK family's 2x: saejax/sae/topk.py; 1 for the rest)."""
    return _default(arch, "decoder_lr_scale", 1.0) if chosen is None else chosen


# JumpReLU (Rajamanoharan et al. 2024). Bandwidth of the straight-through kernel: 0.05, as SAELens, on
# rows scaled to E||x||² = d_in (Gemma Scope's 0.001 is for E||x||² = 1, where pre-activations are
# sqrt(d_in) times smaller). Sparsity: aim at an L0 (Gemma Scope 2's target-L0 penalty, here on the
# batch's mean L0) of sae.k, starting there (thresholds from the data, `saejax.initializers`).
JUMPRELU_BANDWIDTH = 0.05
TARGET_L0_COEFF = 1.0
# JumpReLU's thresholds take Adam steps of the same size as every other parameter (a scale of 1). A larger
# scale lets them keep up with the pre-activations that the encoder moves early in training: MiniLM layer 3,
# 200 steps of 4096, FVU 0.1055 at L0 32.5 with 10x, 0.1132 with 3x, and 0.1293 with 1x, still at L0 66.7
# against its target of 32. Over longer runs, though, a larger scale pushes the weak latents' thresholds above
# every pre-activation they have (Gemma-3: the dead latents' thresholds sat a median 0.71 above their largest
# pre-activation), where only the pre-activation loss reaches them, too weakly to bring them back (a sudden
# die-off near step 750, and none came back by step 2000). With 10x / 3x / 1x: Gemma-3 layer 6
# (2000 steps of 1024) left 69 / 34 / 1.6 % of latents dead at held-out FVU 0.0433 / 0.0381 / 0.0359;
# SynthSAEBench (3000 steps of 1024, L0 25) with 10x / 1x: 13.3 / 1.2 % dead, FVU 0.310 / 0.250, MCC 0.366 /
# 0.552; MiniLM (2000 steps of 4096) at 1x FVU 0.0788 with 0.3 % dead (BUILD_NOTES.md). A run of a few hundred
# steps that must reach its L0 may set optim.threshold_lr_scale=10.
THRESHOLD_LR_SCALE = 1.0


def threshold_lr_scale(chosen: float | None = None) -> float:
    """`chosen` (optim.threshold_lr_scale) unless it is None, else THRESHOLD_LR_SCALE."""
    return THRESHOLD_LR_SCALE if chosen is None else chosen


def target_l0(arch: str, k: int, l0_coeff: float, chosen: float | None = None) -> float:
    """`chosen` (loss.target_l0) unless it is None, else `k` for an architecture aiming at sae.k
    (`target_l0_from_k`: JumpReLU) without an L0 coefficient (`l0_coeff`, loss.l0) and 0 (no target) otherwise."""
    if chosen is not None:
        return chosen
    return float(k) if _default(arch, "target_l0_from_k", False) and not l0_coeff else 0.0


def lr_decay(arch: str, chosen: str | None = None) -> str:
    """`chosen` (optim.decay) unless it is None, else the architecture's spec's `lr_decay`."""
    return _default(arch, "lr_decay", "constant") if chosen is None else chosen


def decay_steps(train_steps: int, chosen: int | None = None) -> int:
    """`chosen` (optim.decay_steps) unless it is None, else DECAY_FRACTION of `train_steps`, rounded."""
    return max(1, round(DECAY_FRACTION * train_steps)) if chosen is None else chosen


def grad_clip(chosen: float | None = None) -> float:
    """`chosen` (optim.grad_clip) unless it is None, else GRAD_CLIP (the same for every architecture)."""
    return GRAD_CLIP if chosen is None else chosen


def learning_rate(arch: str, d_sae: int, batch_size: int, chosen: float | None = None) -> float:
    """`chosen` (optim.lr) unless it is None, else the architecture's default for `d_sae` latents and
    batches of `batch_size` rows over all devices (see TOPK_LR_AT_16K)."""
    if chosen is not None:
        return chosen
    if not _default(arch, "scaled_lr", False):
        return OTHER_LR
    batch_scale = math.sqrt(min(batch_size, LR_REFERENCE_BATCH) / LR_REFERENCE_BATCH)
    return TOPK_LR_AT_16K / math.sqrt(d_sae / 2**14) * batch_scale


def unit_norm_decoder(arch: str, chosen: bool | None = None) -> bool:
    """`chosen` (train.unit_norm_decoder) unless it is None, else True except for an architecture with
    a free decoder norm (ReLU: saejax/sae/relu.py)."""
    return not _default(arch, "free_decoder_norm", False) if chosen is None else chosen


def l1_decoder_weighted(arch: str, chosen: bool | None = None, unit_norm: bool | None = None) -> bool:
    """`chosen` (loss.l1_decoder_weighted) unless it is None, else whether the decoder norm is free
    (`unit_norm`, or the architecture's default): a free norm must not let the L1 term shrink the
    latents while their decoder rows grow."""
    if chosen is not None:
        return chosen
    return _default(arch, "has_linear_decoder", True) and not unit_norm_decoder(arch, unit_norm)


def encoder_init_scale(arch: str, chosen: float | None = None) -> float:
    """`chosen` (sae.dec_init_norm) unless it is None, else the architecture's `encoder_init_scale`."""
    return sae_lib.encoder_init_scale(arch, chosen)


def auxk_coeff(arch: str, chosen: float | None = None) -> float:
    """`chosen` (loss.auxk) unless it is None, else the architecture's `auxk`: 1/32 for the TopK family
    and 0 for the rest."""
    return _default(arch, "auxk", 0.0) if chosen is None else chosen


def pre_act_coeff(arch: str, chosen: float | None = None) -> float:
    """`chosen` (loss.pre_act) unless it is None, else the architecture's `pre_act`: 1e-4 for JumpReLU
    (saejax/sae/jumprelu.py) and 0 for the rest."""
    return _default(arch, "pre_act", 0.0) if chosen is None else chosen


def resolve(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(a copy of `config` with every architecture-dependent field set, notes for the user).

    Fields filled in when unset (None): ``train.unit_norm_decoder`` (the spec's `free_decoder_norm`),
    ``loss.l1_decoder_weighted`` (when the decoder norm is free), ``loss.auxk`` (1/32 for the TopK family, else 0),
    ``loss.pre_act`` (1e-4 for JumpReLU, else 0),
    ``optim.lr`` (`learning_rate`), ``optim.grad_clip`` (`grad_clip`), ``optim.decay`` (`lr_decay`),
    ``optim.decay_steps`` (`decay_steps`), ``optim.threshold_lr_scale``,
    ``optim.decoder_lr_scale``, ``loss.target_l0`` (`target_l0`),
    ``sae.dec_init_norm`` (the spec's `encoder_init_scale`) and ``loss.dead_steps`` (``loss.dead_tokens``
    rows, rounded up to whole batches). Sparsity penalties the architecture does not have
    (the spec's `penalties`) are set to 0, each with a note. Resolving a resolved config changes nothing.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # a copy (FieldReferences to plain values)
    arch, notes = config.sae.arch, []
    spec = registry.find(arch)
    if spec is not None:  # an unknown arch is reported by make_sae
        for penalty in SPARSITY_PENALTIES:
            if penalty not in spec.penalties and config.loss[penalty]:
                notes.append(f"loss.{penalty}={config.loss[penalty]} is not a penalty of sae.arch={arch!r} "
                             f"({_sparsity_of(arch)}); not applied")
                config.loss[penalty] = 0.0
    config.train.unit_norm_decoder = unit_norm_decoder(arch, config.train.unit_norm_decoder)
    config.loss.l1_decoder_weighted = l1_decoder_weighted(arch, config.loss.l1_decoder_weighted,
                                                          config.train.unit_norm_decoder)
    config.loss.auxk = auxk_coeff(arch, config.loss.auxk)
    config.loss.pre_act = pre_act_coeff(arch, config.loss.get("pre_act"))
    config.optim.lr = learning_rate(arch, config.sae.d_sae, config.train.batch_size, config.optim.lr)
    config.loss.target_l0 = target_l0(arch, config.sae.k, config.loss.l0, config.loss.target_l0)
    config.optim.grad_clip = grad_clip(config.optim.grad_clip)
    config.optim.decay = lr_decay(arch, config.optim.get("decay"))
    config.optim.decay_steps = decay_steps(config.train.steps, config.optim.get("decay_steps"))
    config.optim.threshold_lr_scale = threshold_lr_scale(config.optim.get("threshold_lr_scale"))
    config.optim.decoder_lr_scale = decoder_lr_scale(arch, config.optim.get("decoder_lr_scale"))
    config.sae.dec_init_norm = encoder_init_scale(arch, config.sae.dec_init_norm)
    if config.loss.dead_steps is None:
        config.loss.dead_steps = max(1, math.ceil(config.loss.dead_tokens / config.train.batch_size))
    return config, notes


def _sparsity_of(arch: str) -> str:
    spec = registry.get(arch)
    if spec.needs_k:
        return "its sparsity is sae.k"
    return f"its sparsity penalties are {', '.join('loss.' + p for p in spec.penalties)}"


def _default(arch: str, field: str, unknown):
    """The `field` of the spec registered as `arch`, or `unknown` when there is none (make_sae reports it)."""
    spec = registry.find(arch)
    return unknown if spec is None else getattr(spec, field)


# The shipped architectures whose sparsity is sae.k (a view of their specs).
TOPK_FAMILY = tuple(name for name in sae_lib.ARCHITECTURES if registry.get(name).needs_k)
