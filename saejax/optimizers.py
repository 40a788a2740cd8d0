"""The optimizer of a run: an optax optimizer by name, its learning-rate schedule, and the SAE-specific
transforms around it (decoder-gradient projection, per-parameter learning rates, frozen buffers).

    optimizer = make_optimizer(optax.adam(lr_schedule(1e-3, steps, decay="linear")), sae)
"""

import inspect

import jax
import jax.numpy as jnp
import optax

from saejax import defaults
from saejax.errors import ConfigError
from saejax.sae import SAE
from saejax.step import unit_rows


def remove_parallel_component(grad: jax.Array, w: jax.Array) -> jax.Array:
    """Each row of grad [n, d] minus its component along the matching row of w [n, d]."""
    unit = unit_rows(w)
    return grad - jnp.sum(grad * unit, axis=-1, keepdims=True) * unit


def project_decoder_grads() -> optax.GradientTransformation:
    """An optax transform removing from W_dec's gradient the part parallel to each decoder row,
    the part that the unit-norm constraint would undo anyway."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("project_decoder_grads needs params: call optimizer.update(grads, state, params)")
        projected = remove_parallel_component(updates["W_dec"], params["W_dec"])
        return {**updates, "W_dec": projected}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def zero_updates(keys: tuple[str, ...]) -> optax.GradientTransformation:
    """An optax transform setting the updates of the top-level params `keys` to zero: for buffers
    that the SAE sets itself (e.g. BatchTopK's threshold), which no optimizer (nor weight decay)
    may move."""

    def update(updates, state, params=None):
        return {k: jnp.zeros_like(v) if k in keys else v for k, v in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_updates(keys: tuple[str, ...], factor: float) -> optax.GradientTransformation:
    """An optax transform multiplying the updates of the top-level params `keys` by `factor`: a
    learning rate of their own for parameters whose useful step differs from the rest (JumpReLU's
    thresholds, which must follow pre-activations that every encoder step moves)."""

    def update(updates, state, params=None):
        return {k: v * factor if k in keys else v for k, v in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lr_schedule(lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "constant",
                decay_steps: int = 0) -> optax.Schedule:
    """Linear warm-up from 0 over warmup_steps, then constant, or a cosine / linear decay to 0 over the
    last `decay_steps` steps (0: every step after the warm-up)."""
    if not lr > 0:
        raise ConfigError(f"optim.lr={lr} must be > 0")
    if decay_steps < 0:
        raise ConfigError(f"optim.decay_steps={decay_steps} must be >= 0 (0: decay over the whole run)")
    warmup = min(warmup_steps, total_steps)
    rest = max(total_steps - warmup, 1)
    span = min(decay_steps, rest) if decay_steps else rest
    decays = {
        "constant": optax.constant_schedule(lr),
        "cosine": optax.cosine_decay_schedule(lr, span),
        "linear": optax.linear_schedule(lr, 0.0, span),
    }
    if decay not in decays:
        raise ConfigError(f"unknown optim.decay={decay!r}; choose one of {', '.join(decays)}")
    pieces, boundaries = [decays[decay]], []
    if decay != "constant" and span < rest:  # hold lr until the decay's last `span` steps
        pieces, boundaries = [optax.constant_schedule(lr), decays[decay]], [total_steps - span]
    if warmup > 0:
        pieces, boundaries = [optax.linear_schedule(0.0, lr, warmup), *pieces], [warmup, *boundaries]
    return pieces[0] if not boundaries else optax.join_schedules(pieces, boundaries)


def optax_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, **options) -> optax.GradientTransformation:
    """Any optax optimizer by name (adam, adamw, sgd, lion, ...); options it does not take are dropped."""
    factory = getattr(optax, name, None)
    if not callable(factory) or "learning_rate" not in inspect.signature(factory).parameters:
        raise ConfigError(f"optim.name={name!r} is not an optax optimizer taking a learning_rate (e.g. adam, adamw, sgd)")
    accepted = inspect.signature(factory).parameters
    return factory(learning_rate=learning_rate, **{k: v for k, v in options.items() if k in accepted})


def make_optimizer(
    base: optax.GradientTransformation,
    sae: SAE,
    *,
    project_decoder: bool = True,
    grad_clip: float = 0.0,
    threshold_lr_scale: float = 1.0,
    decoder_lr_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Wrap an optax optimizer for an SAE: optional global-norm clipping, removal of the gradient
    parallel to the decoder rows, JumpReLU's thresholds stepped `threshold_lr_scale` times and the
    decoder rows (W_dec) `decoder_lr_scale` times as far as the rest, and the SAE's buffers (e.g.
    BatchTopK's threshold) left to `sae.update_buffers` instead of the optimizer."""
    parts = []
    if grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    spec = sae.spec
    if project_decoder and spec.has_linear_decoder:
        parts.append(project_decoder_grads())
    parts.append(base)
    if threshold_lr_scale != 1.0 and spec.learned_thresholds:
        if not threshold_lr_scale > 0:
            raise ConfigError(f"optim.threshold_lr_scale={threshold_lr_scale} must be > 0")
        parts.append(scale_updates(("threshold",), threshold_lr_scale))
    if decoder_lr_scale != 1.0 and spec.has_linear_decoder:
        if not decoder_lr_scale > 0:
            raise ConfigError(f"optim.decoder_lr_scale={decoder_lr_scale} must be > 0")
        parts.append(scale_updates(("W_dec",), decoder_lr_scale))
    if sae.buffers:
        parts.append(zero_updates(sae.buffers))
    return optax.chain(*parts)


def optimizer_from_config(optim_config, train_config, sae: SAE) -> optax.GradientTransformation:
    """The optimizer the `optim` section of a run's config describes."""
    lr = defaults.learning_rate(sae.arch, sae.d_sae, train_config.batch_size, optim_config.lr)
    schedule = lr_schedule(lr, train_config.steps, optim_config.warmup_steps,
                           defaults.lr_decay(sae.arch, optim_config.get("decay")),
                           defaults.decay_steps(train_config.steps, optim_config.get("decay_steps", 0)))
    base = optax_optimizer(optim_config.name, schedule, b1=optim_config.b1, b2=optim_config.b2)
    momentum = optim_config.get("schedule_free_momentum", 0.0)
    if momentum:
        if not 0 < momentum < 1:
            raise ConfigError(f"optim.schedule_free_momentum={momentum} must be in (0, 1), or 0 for plain training")
        base = optax.contrib.schedule_free(base, learning_rate=schedule, b1=momentum)
    constrained = defaults.unit_norm_decoder(sae.arch, train_config.unit_norm_decoder)
    return make_optimizer(
        base, sae, project_decoder=constrained and train_config.project_decoder_grads,
        grad_clip=defaults.grad_clip(optim_config.grad_clip),
        threshold_lr_scale=defaults.threshold_lr_scale(optim_config.get("threshold_lr_scale")),
        decoder_lr_scale=defaults.decoder_lr_scale(sae.arch, optim_config.get("decoder_lr_scale")),
    )
