"""The SAE, loss and optimizer a run's config describes.

    config, notes = saejax.config.complete(config)
    sae, loss, optimizer = model_from_config(config, d_in)
"""

import optax

from saejax import defaults, losses, optimizers
from saejax.errors import ConfigError
from saejax.sae import SAE, registry, sae_from_config


def is_transcoder(config) -> bool:
    """Whether a run's config trains a transcoder: model.target_site is set (its data are (input,
    target) pairs, `saejax.data.pair_columns`)."""
    return bool(config.get("model", {}).get("target_site"))


def sae_of(config, d_in: int, d_out: int | None = None) -> SAE:
    """The SAE a run's config describes (completed by `saejax.defaults.resolve`), for inputs of width
    `d_in` (a transcoder to targets of width `d_out` when given); e.g. to encode with a loaded SAE,
    which needs no loss or optimizer."""
    config, _ = defaults.resolve(config)
    return sae_from_config(config.sae, d_in, unit_norm_decoder=config.train.unit_norm_decoder, d_out=d_out)


def model_from_config(config, d_in: int, d_out: int | None = None
                      ) -> tuple[SAE, losses.LossTerm, optax.GradientTransformation]:
    """The SAE, loss and optimizer a run's config describes (completed by `saejax.defaults.resolve`),
    for inputs of width `d_in` (a transcoder to targets of width `d_out` when given)."""
    config, _ = defaults.resolve(config)
    sae = sae_of(config, d_in, d_out)
    if config.train.resample_every and not sae.spec.has_linear_decoder:
        raise ConfigError(f"train.resample_every > 0 needs linear decoder rows; sae.arch={sae.arch!r} has none")
    if sae.transcoder:
        check_transcoder_run(config)
    return sae, losses.loss_from_config(config.loss, sae), optimizers.optimizer_from_config(config.optim, config.train, sae)


def check_transcoder_run(config) -> None:
    """ConfigError for what a transcoder run does not do yet: resampling (it draws decoder rows from
    inputs, which live in another space than a transcoder's outputs)."""
    if config.train.resample_every:
        raise ConfigError("train.resample_every > 0 is not supported for transcoders (model.target_site set): "
                          "resampling points decoder rows at inputs; leave it at 0")


def jumprelu_threshold_rate(config) -> float | None:
    """The share of rows each JumpReLU latent starts firing on: the target L0 (loss.target_l0, else
    sae.k) over sae.d_sae; None when sae.jumprelu_init_threshold sets the thresholds (or not JumpReLU)."""
    sae_config = config.sae
    spec = registry.find(sae_config.arch)
    if spec is None or not spec.learned_thresholds or sae_config.get("jumprelu_init_threshold") is not None:
        return None
    return (config.loss.get("target_l0") or sae_config.k) / sae_config.d_sae
