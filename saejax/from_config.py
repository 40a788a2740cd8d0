"""The SAE, loss and optimizer a run's config describes.

    config, notes = saejax.config.complete(config)
    sae, loss, optimizer = model_from_config(config, d_in)
"""

import optax

from saejax import defaults, losses, optimizers
from saejax.errors import ConfigError
from saejax.sae import SAE, registry, sae_from_config


def sae_of(config, d_in: int) -> SAE:
    """The SAE a run's config describes (completed by `saejax.defaults.resolve`), for inputs of width
    `d_in`; e.g. to encode with a loaded SAE, which needs no loss or optimizer."""
    config, _ = defaults.resolve(config)
    return sae_from_config(config.sae, d_in, unit_norm_decoder=config.train.unit_norm_decoder)


def model_from_config(config, d_in: int) -> tuple[SAE, losses.LossTerm, optax.GradientTransformation]:
    """The SAE, loss and optimizer a run's config describes (completed by `saejax.defaults.resolve`),
    for inputs of width `d_in`."""
    config, _ = defaults.resolve(config)
    sae = sae_of(config, d_in)
    if config.train.resample_every and not sae.spec.has_linear_decoder:
        raise ConfigError(f"train.resample_every > 0 needs linear decoder rows; sae.arch={sae.arch!r} has none")
    return sae, losses.loss_from_config(config.loss, sae), optimizers.optimizer_from_config(config.optim, config.train, sae)


def jumprelu_threshold_rate(config) -> float | None:
    """The share of rows each JumpReLU latent starts firing on: the target L0 (loss.target_l0, else
    sae.k) over sae.d_sae; None when sae.jumprelu_init_threshold sets the thresholds (or not JumpReLU)."""
    sae_config = config.sae
    spec = registry.find(sae_config.arch)
    if spec is None or not spec.learned_thresholds or sae_config.get("jumprelu_init_threshold") is not None:
        return None
    return (config.loss.get("target_l0") or sae_config.k) / sae_config.d_sae
