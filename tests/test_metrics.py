"""Exact small-case values for saejax.metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax import metrics
from saejax.errors import SaejaxError
from saejax.sae import SAEOutput

Z = jnp.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
X = jnp.array([[1.0, 2.0], [3.0, 4.0]])
X_HAT = jnp.array([[1.0, 0.0], [0.0, 4.0]])


def test_l0_counts_nonzeros_per_row():
    assert float(metrics.l0(Z)) == 1.5
    assert float(metrics.l0(jnp.zeros((4, 3)))) == 0.0


def test_nonzero_is_the_comparison_with_zero_as_floats():
    """sign(|z|) is z != 0 for every finite value and infinity, -0.0 and XLA-CPU's flushed subnormals
    included (NaN stays NaN); under jit `l0` (through it) and `fired_latents` (max |z| > 0) count what
    `z != 0` counts, an empty batch included."""
    z = jnp.array([[0.0, -0.0, 1e-40, -2.5, 3.0, jnp.inf, -jnp.inf, 7e-38]], jnp.float32)
    for fn in (metrics.nonzero, jax.jit(metrics.nonzero)):
        np.testing.assert_array_equal(fn(z), jax.jit(lambda z: (z != 0).astype(jnp.float32))(z))
    assert jnp.isnan(metrics.nonzero(jnp.array([jnp.nan])))[0]
    wide = jnp.where(jax.random.uniform(jax.random.key(0), (64, 300)) < 0.1, jax.random.normal(jax.random.key(1), (64, 300)), 0.0)
    assert float(jax.jit(metrics.l0)(wide)) == float(jnp.mean(jnp.sum(wide != 0, axis=-1)))
    fired = jax.jit(lambda z: metrics.fired_latents(SAEOutput(x_hat=z[:, :2], z=z, pre_acts=z, aux={})))(wide)
    np.testing.assert_array_equal(fired, jnp.any(wide != 0, axis=0))
    assert float(jax.jit(metrics.l0)(jnp.array([[jnp.nan, 1.0, 0.0]]))) != 1.0  # NaN, not a count of 2
    empty = jnp.zeros((0, 5))
    assert not jax.jit(lambda z: metrics.fired_latents(SAEOutput(x_hat=z, z=z, pre_acts=z, aux={})))(empty).any()


def test_mse_is_mean_of_row_sums():
    # rows: 0 + 4 = 4 and 9 + 0 = 9
    assert float(metrics.mse(X, X_HAT)) == 6.5


def test_fvu_is_relative_to_the_data_mean():
    # error 13; variance about the mean [2, 3] is 4
    assert float(metrics.fvu(X, X_HAT)) == pytest.approx(3.25)
    assert float(metrics.explained_variance(X, X_HAT)) == pytest.approx(-2.25)
    mean = jnp.broadcast_to(X.mean(0), X.shape)
    assert float(metrics.fvu(X, mean)) == pytest.approx(1.0)
    assert float(metrics.fvu(X, X)) == 0.0
    assert float(metrics.explained_variance(X, X)) == 1.0


def test_cosine_similarity_mean_over_rows():
    x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    x_hat = jnp.array([[2.0, 0.0], [1.0, -1.0]])
    assert float(metrics.cosine_similarity(x, x_hat)) == pytest.approx(0.5)
    zero_row = jnp.array([[0.0, 0.0], [0.0, 3.0]])
    assert float(metrics.cosine_similarity(zero_row, zero_row)) == pytest.approx(0.5)


def test_feature_density():
    np.testing.assert_array_equal(metrics.feature_density(Z), [0.0, 0.5, 1.0])
    z3 = jnp.stack([Z, Z])  # [2, 2, 3]: extra leading axes count as rows
    np.testing.assert_array_equal(metrics.feature_density(z3), [0.0, 0.5, 1.0])


def test_log10_density_histogram_fixed_bins():
    density = jnp.array([0.0, 1e-9, 3e-5, 0.5, 1.0, 0.0])
    counts, edges, never = metrics.log10_density_histogram(density, bins=8)
    # 1e-9 clips into bin 0; log10(3e-5) = -4.52 -> bin 3; 0.5 -> bin 7; 1.0 -> last
    np.testing.assert_array_equal(counts, [1, 0, 0, 1, 0, 0, 0, 2])
    np.testing.assert_allclose(edges, np.arange(-8.0, 0.5, 1.0))
    assert int(never) == 2
    assert counts.dtype == jnp.int32
    as_numpy = metrics.log10_density_histogram(np.asarray(density), bins=8)  # counted in numpy
    assert all(isinstance(a, (np.ndarray, np.generic)) for a in as_numpy)
    for ours, theirs in zip(as_numpy, (counts, edges, never)):
        np.testing.assert_array_equal(ours, theirs)


def test_steps_since_fired_and_dead_fraction():
    counter = jnp.array([0, 5, 2], jnp.int32)
    z = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    new = metrics.update_steps_since_fired(counter, z)
    np.testing.assert_array_equal(new, [1, 0, 3])
    assert new.dtype == jnp.int32
    assert float(metrics.dead_fraction(jnp.array([1, 0, 3, 10]), 3)) == 0.5


def test_mmcs_max_over_learned_mean_over_true():
    true = jnp.eye(2)
    learned = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    # true 0 -> 1, true 1 -> 1/sqrt(2)
    expected = (1.0 + 2**-0.5) / 2
    assert float(metrics.mmcs(learned, true)) == pytest.approx(expected, rel=1e-6)
    # signed: an anti-parallel learned row scores -1
    anti = metrics.mmcs(jnp.array([[-2.0, 0.0]]), jnp.array([[1.0, 0.0]]))
    assert float(anti) == pytest.approx(-1.0)


def test_matched_mean_abs_cos_is_one_to_one():
    true = np.eye(3)[:2]  # e1, e2
    learned = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # both true features prefer learned 0 (|cos| 1/sqrt 2); only one may have it
    assert metrics.matched_mean_abs_cos(learned, true) == pytest.approx(0.5 * 2**-0.5)
    assert float(metrics.mmcs(learned, true)) == pytest.approx(2**-0.5, rel=1e-6)
    # sign-blind, and an unmatched true feature (m < n) counts as 0
    assert metrics.matched_mean_abs_cos(-np.eye(2), np.eye(2)) == pytest.approx(1.0)
    assert metrics.matched_mean_abs_cos(np.eye(2)[:1], np.eye(2)) == pytest.approx(0.5)
    assert isinstance(metrics.matched_mean_abs_cos(np.eye(2), np.eye(2)), float)


def test_dictionary_shape_mismatch_raises():
    with pytest.raises(SaejaxError, match=r"\(2, 3\).*\(2, 2\)"):
        metrics.mmcs(jnp.ones((2, 3)), jnp.ones((2, 2)))
    with pytest.raises(SaejaxError):
        metrics.matched_mean_abs_cos(np.ones((2, 3)), np.ones((2, 2)))


def test_metrics_jit():
    assert float(jax.jit(metrics.l0)(Z)) == 1.5
    assert float(jax.jit(metrics.fvu)(X, X_HAT)) == pytest.approx(3.25)
    hist = jax.jit(metrics.log10_density_histogram, static_argnames="bins")
    counts, _, never = hist(metrics.feature_density(Z), bins=4)
    assert int(counts.sum()) == 2 and int(never) == 1
    counter = jax.jit(metrics.update_steps_since_fired)(jnp.zeros(3, jnp.int32), Z)
    np.testing.assert_array_equal(counter, [1, 0, 0])
    assert float(jax.jit(metrics.dead_fraction, static_argnums=1)(counter, 1)) == (
        pytest.approx(1 / 3)
    )
