"""Evaluation metrics for sparse autoencoders.

Everything except `matched_mean_abs_cos` is a pure, batched, jit-friendly ``jnp``
function. Shapes: ``x, x_hat [B, d_in]`` (inputs and reconstructions), ``z [B, d_sae]``
(latents); leading batch axes beyond one are allowed wherever a function reduces over
"rows", i.e. everything but the last axis.
"""

import jax.numpy as jnp
import numpy as np

from saejax import batch_axis
from saejax.errors import SaejaxError

_EPS = 1e-8


def nonzero(z: jnp.ndarray) -> jnp.ndarray:
    """1.0 where z is non-zero, 0.0 where it is zero, as float arithmetic: sign(|z|) (NaN stays NaN).

    Reductions of this read z itself on XLA's CPU backend: its YNNPACK reductions fuse float
    elementwise producers, while a comparison (``z != 0``) is first written out as a [B, d_sae]
    mask, ~15-20 ms a step at batch 4096, d_sae 8192 (BUILD_NOTES, "Performance suite").
    z: [...] -> same shape and dtype.
    """
    return jnp.sign(jnp.abs(z))


def l0(z: jnp.ndarray) -> jnp.ndarray:
    """Mean number of non-zero latents per row.

    z: [..., d_sae]. Returns a scalar [].
    """
    return batch_axis.mean(jnp.sum(nonzero(z), axis=-1, dtype=jnp.float32))


def mse(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Mean over rows of the per-row sum of squared errors.

    x, x_hat: [..., d_in]. Returns a scalar [].
    """
    return batch_axis.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))


def fvu(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.

    The denominator is measured against the batch mean of x (not zero), so predicting
    the mean scores 1. x, x_hat: [B, d_in]. Returns a scalar []; a batch of identical
    rows has zero variance and gives inf (or nan if also reconstructed exactly).
    """
    x2 = x.reshape(-1, x.shape[-1])
    err = batch_axis.total(jnp.square(x2 - x_hat.reshape(x2.shape)))
    var = batch_axis.total(jnp.square(x2 - batch_axis.mean(x2, axis=0)))
    return err / var


def explained_variance(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """1 - fvu(x, x_hat). x, x_hat: [B, d_in]. Returns a scalar []."""
    return 1.0 - fvu(x, x_hat)


def _unit_rows(a: jnp.ndarray) -> jnp.ndarray:
    """Rows of a scaled to unit L2 norm (zero rows stay zero). a: [..., d]."""
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), _EPS)


def _unit_rows_np(a: np.ndarray) -> np.ndarray:
    """Host-side `_unit_rows` in a's own precision. a: [..., d]."""
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _EPS)


def row_cosine_similarities(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """cos(x_row, x_hat_row) of each row; a zero row gives 0. x, x_hat: [..., d_in] -> [...]."""
    return jnp.sum(_unit_rows(x) * _unit_rows(x_hat), axis=-1)


def cosine_similarity(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Mean over rows of cos(x_row, x_hat_row); a zero row counts as 0.

    x, x_hat: [..., d_in]. Returns a scalar [].
    """
    return batch_axis.mean(row_cosine_similarities(x, x_hat))


def feature_density(z: jnp.ndarray) -> jnp.ndarray:
    """Fraction of rows in which each latent is non-zero.

    z: [..., d_sae]. Returns [d_sae] float32 in [0, 1].
    """
    fired = (z != 0).reshape(-1, z.shape[-1])
    return batch_axis.mean(fired.astype(jnp.float32), axis=0)


def log10_density_histogram(
    density: jnp.ndarray, bins: int = 32, lo: float = -8.0, hi: float = 0.0
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Histogram of log10(density) over fixed bins, never-firing latents counted apart.

    density: [d_sae] in [0, 1]. The `bins` equal-width bins span [lo, hi] in log10;
    positive densities outside that range are clipped into the first/last bin.
    Returns (counts [bins] int32, edges [bins + 1] float32, n_never_fired [] int32).
    `bins`, `lo` and `hi` must be static under jit. A numpy density is counted in numpy (numpy
    results; no XLA programs to compile for a plot).
    """
    xp = np if isinstance(density, np.ndarray) else jnp
    edges = xp.linspace(lo, hi, bins + 1, dtype=xp.float32)
    alive = density > 0
    log_d = xp.log10(xp.where(alive, density, 1.0))
    idx = xp.clip(xp.floor((log_d - lo) / (hi - lo) * bins).astype(xp.int32), 0, bins - 1)
    if xp is np:
        counts = np.bincount(idx[alive], minlength=bins).astype(np.int32)
    else:
        counts = jnp.zeros(bins, jnp.int32).at[idx].add(alive.astype(jnp.int32))
    n_never = xp.sum(~alive, dtype=xp.int32)
    return counts, edges, n_never


def fired_in(z: jnp.ndarray) -> jnp.ndarray:
    """Which latents are non-zero in any row of the batch (all replicas), from dense latents:
    max_b |z| > 0, which XLA-CPU reduces straight from z (see `nonzero`). A latent with a NaN in the
    batch may come out either way (XLA's reductions differ in whether max propagates NaN); its loss
    is NaN then and the train loop stops. z: [..., d_sae] -> [d_sae] bool."""
    magnitude = jnp.max(jnp.abs(z).reshape(-1, z.shape[-1]), axis=0, initial=0.0)
    return batch_axis.any_row((magnitude > 0)[None])


def update_steps_since_fired(counter: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """Reset the counter to 0 for latents that fired in this batch, add 1 elsewhere.

    counter: [d_sae] int32; z: [..., d_sae]. Returns [d_sae] of counter's dtype.
    """
    return reset_fired(counter, fired_in(z))


def fired_latents(out) -> jnp.ndarray:
    """Which latents are non-zero in any row of the batch (all replicas), from an `SAEOutput`.

    Sparse TopK outputs are read from their k values per row (aux "values"/"indices"), so the
    dense z [B, d_sae] need not be built; dense ones through `fired_in`. Returns [d_sae] bool.
    """
    if "indices" in out.aux:
        values, indices = out.aux["values"], out.aux["indices"]
        local = jnp.zeros(out.z.shape[-1], bool).at[indices.reshape(-1)].max((values != 0).reshape(-1))
        return batch_axis.any_row(local[None])
    return fired_in(out.z)


def reset_fired(counter: jnp.ndarray, fired: jnp.ndarray) -> jnp.ndarray:
    """`update_steps_since_fired` given the fired latents [d_sae] bool (`fired_latents`)."""
    return jnp.where(fired, jnp.zeros_like(counter), counter + 1)


def output_l0(out) -> jnp.ndarray:
    """`l0` of an `SAEOutput`'s latents (sparse TopK: from its k values per row). Returns []."""
    if "indices" in out.aux:
        return batch_axis.mean(jnp.sum(out.aux["values"] != 0, axis=-1, dtype=jnp.float32))
    return l0(out.z)


def dead_fraction(counter: jnp.ndarray, window: int) -> jnp.ndarray:
    """Fraction of latents silent for at least `window` steps.

    counter: [d_sae] steps since each latent last fired. Returns a scalar [].
    """
    return jnp.mean(counter >= window, dtype=jnp.float32)


def _check_dicts(learned_shape: tuple, true_shape: tuple) -> None:
    """Raise unless both are 2-D with the same feature dimension."""
    if len(learned_shape) != 2 or len(true_shape) != 2 or (
        learned_shape[1] != true_shape[1]
    ):
        raise SaejaxError(
            f"learned {tuple(learned_shape)} and true {tuple(true_shape)} features must "
            "be [m, d] and [n, d] with the same d"
        )


def mmcs(learned: jnp.ndarray, true: jnp.ndarray) -> jnp.ndarray:
    """Mean max cosine similarity (Sharkey et al. 2022).

    For each TRUE feature, the largest (signed) cosine with any learned row; averaged
    over true features. learned: [m, d]; true: [n, d]. Returns a scalar [].
    """
    _check_dicts(learned.shape, true.shape)
    cos = _unit_rows(true) @ _unit_rows(learned).T  # [n, m]
    return jnp.mean(jnp.max(cos, axis=1))


def matched_mean_abs_cos(learned: np.ndarray, true: np.ndarray) -> float:
    """Mean |cos| of a one-to-one (Hungarian) matching of learned to true features.

    Maximises the total |cos| over one-to-one pairs (scipy's linear_sum_assignment),
    then divides by the number of TRUE features n, so an unmatched true feature
    (when m < n) counts as 0. learned: [m, d]; true: [n, d]. Host-side; returns a float.
    """
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415 (slow to import: only here)
    learned = np.asarray(learned, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    _check_dicts(learned.shape, true.shape)
    abs_cos = np.abs(_unit_rows_np(true) @ _unit_rows_np(learned).T)  # [n, m]
    rows, cols = linear_sum_assignment(abs_cos, maximize=True)
    return float(abs_cos[rows, cols].sum() / true.shape[0])
