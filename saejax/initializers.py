"""Data-dependent initialisation: b_dec and JumpReLU thresholds (the normalisation scale: `saejax.normalization`).

All are computed once, at the start of a run, from a fixed sample of the data [n, d_in].
"""

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import ConfigError

B_DEC_INITS = ("geometric_median", "mean", "zeros")


@jax.jit
def geometric_median(points: jax.Array, iterations: int = 100, eps: float = 1e-8) -> jax.Array:
    """argmin_y Σ_i ||points_i - y|| by Weiszfeld's iterations, started at the mean. [n, d] -> [d]."""

    def weiszfeld(_, y):
        weights = 1.0 / jnp.maximum(jnp.linalg.norm(points - y, axis=-1), eps)
        return weights @ points / jnp.sum(weights)

    return jax.lax.fori_loop(0, iterations, weiszfeld, jnp.mean(points, axis=0))


def initial_b_dec(sample: np.ndarray, method: str) -> jax.Array:
    """b_dec from a (normalised) data sample [n, d_in]: geometric median, mean or zeros. -> [d_in]"""
    if method == "geometric_median":
        return geometric_median(jnp.asarray(sample, jnp.float32))
    if method == "mean":
        return jnp.mean(jnp.asarray(sample, jnp.float32), axis=0)
    if method == "zeros":
        return jnp.zeros((sample.shape[-1],), jnp.float32)
    raise ConfigError(f"unknown sae.init_b_dec={method!r}; choose one of {', '.join(B_DEC_INITS)}")


def jumprelu_thresholds(pre_acts: jax.Array, rate: float) -> jax.Array:
    """Each latent's threshold at the (1 - `rate`) quantile of its initial pre-activations
    [n, d_sae] (not below 0), so that every latent starts firing on a `rate` share of the rows
    and the SAE starts at an L0 of rate · d_sae. -> [d_sae]

    A constant initial threshold fixes the initial L0 by the scale of the data and of the
    encoder instead; Adam then moves each threshold by at most ~lr per step, so a short run
    ends near wherever the constant put it.
    """
    if not 0 < rate < 1:
        raise ConfigError(f"JumpReLU initial firing rate {rate} must be in (0, 1): the target L0 over sae.d_sae")
    return jnp.maximum(jnp.quantile(jnp.asarray(pre_acts, jnp.float32), 1.0 - rate, axis=0), 0.0)
