"""Resampling of dead latents (Bricken et al. 2023, "Towards Monosemanticity", simplified).

Every dead latent (silent for `dead_steps` steps) is re-pointed at an input the SAE reconstructs
badly: inputs are drawn with probability proportional to their squared reconstruction loss squared
(loss²); the latent's decoder row becomes the drawn input's unit direction (after b_dec), its
encoder column the same direction scaled to `encoder_scale` × the mean encoder norm of the live
latents, and every other latent-indexed param (b_enc, thresholds, gated biases) returns to its
init value. The optimizer's moments for those latents are zeroed and their counters reset.
"""

import jax
import jax.numpy as jnp
import optax

from saejax import normalization
from saejax.errors import ConfigError
from saejax.sae import SAE, Params
from saejax.step import TrainState, unit_rows


def _replace_latents(value: jax.Array, replacement: jax.Array, dead: jax.Array, axis: int) -> jax.Array:
    """value with its latents (along `axis`) where `dead` [d_sae] taken from replacement."""
    shape = [1] * value.ndim
    shape[axis] = dead.shape[0]
    return jnp.where(dead.reshape(shape), replacement, value)


def _latent_masks(sae: SAE, params: Params, dead: jax.Array) -> Params:
    """A bool array per param, True on the dead latents' entries (all False without a latent axis)."""
    masks = {}
    for key, value in params.items():
        axis = sae.latent_axes.get(key)
        if axis is None or jnp.ndim(value) == 0:
            masks[key] = jnp.zeros(jnp.shape(value), bool)
        else:
            masks[key] = _replace_latents(jnp.zeros(value.shape, bool), True, dead, axis)
    return masks


def resample_dead_latents(
    sae: SAE,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    x: jax.Array,
    key: jax.Array,
    dead_steps: int,
    encoder_scale: float = 0.2,
) -> tuple[TrainState, jax.Array]:
    """Resample the dead latents of `state` using the normalised batch x [B, d_in].

    Returns the new state and the number of latents resampled ([] int32). Pure; jit it.
    """
    if not sae.spec.has_linear_decoder:
        raise ConfigError(f"train.resample_every > 0 is not supported for sae.arch={sae.arch!r} "
                          "(no linear decoder rows)")
    params = state.params
    dead = state.steps_since_fired >= dead_steps
    k_draw, k_init = jax.random.split(key)

    out = sae.forward(params, x, train=False)
    loss = jnp.sum(jnp.square(x - out.x_hat), axis=-1)
    weights = jnp.square(loss) + 1e-12
    drawn = jax.random.choice(k_draw, x.shape[0], (sae.d_sae,), p=weights / jnp.sum(weights))
    directions = unit_rows(x[drawn] - params["b_dec"])  # [d_sae, d_in]

    fresh = sae.init(k_init)
    new_params = dict(params)
    for key_name, axis in sae.latent_axes.items():
        if key_name in params and axis is not None and key_name not in ("W_enc", "W_dec"):
            new_params[key_name] = _replace_latents(params[key_name], fresh[key_name], dead, axis)
    new_params["W_dec"] = _replace_latents(params["W_dec"], directions * jnp.linalg.norm(
        params["W_dec"], axis=-1, keepdims=True).mean(), dead, 0)
    if "W_enc" in params:
        norms = jnp.linalg.norm(params["W_enc"], axis=0)
        alive_norm = jnp.sum(jnp.where(dead, 0.0, norms)) / jnp.maximum(jnp.sum(~dead), 1)
        alive_norm = jnp.where(jnp.any(~dead), alive_norm, 1.0)
        new_params["W_enc"] = _replace_latents(params["W_enc"], directions.T * alive_norm * encoder_scale, dead, 1)

    masks = _latent_masks(sae, params, dead)
    opt_state = optax.tree_utils.tree_map_params(
        optimizer, lambda v, m: jnp.where(m, jnp.zeros_like(v), v), state.opt_state, masks,
    )
    counters = jnp.where(dead, 0, state.steps_since_fired)
    new_state = state._replace(params=new_params, opt_state=opt_state, steps_since_fired=counters)
    return new_state, jnp.sum(dead).astype(jnp.int32)


def resample_step(sae: SAE, optimizer: optax.GradientTransformation, dead_steps: int):
    """(state, batch, key) -> (state, resampled count): `resample_dead_latents` on a raw batch (pmap's
    [N, B/N, d_in] flattened), normalised as the train step normalises it. Pure; jit it."""

    def resample(state: TrainState, batch: jax.Array, key: jax.Array):
        x = normalization.normalize(batch.reshape(-1, sae.d_in), state.norm_scale)
        return resample_dead_latents(sae, optimizer, state, x, key, dead_steps)

    return resample
