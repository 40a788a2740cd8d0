"""Defining properties of saejax.activations, checked against numpy and hand-derived formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax import activations as A


def _rect(u):
    """The rectangle kernel K(u) = 1[|u| < 1/2], in numpy."""
    return (np.abs(u) < 0.5).astype(np.float64)


def _distinct(key, shape, scale=1.0):
    """Random float32 values, all distinct (so top-k selections are unambiguous)."""
    x = np.asarray(jax.random.normal(key, shape, jnp.float32)) * scale
    assert len(np.unique(x)) == x.size
    return x


# ---------------------------------------------------------------------------------------------
# relu / leaky_relu


def test_relu_matches_numpy():
    z = _distinct(jax.random.key(0), (3, 5))
    np.testing.assert_array_equal(np.asarray(A.relu(jnp.asarray(z))), np.maximum(z, 0))


def test_leaky_relu_scales_negatives_only():
    z = jnp.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    out = np.asarray(A.leaky_relu(z, 0.1))
    np.testing.assert_allclose(out, [[-0.2, -0.05, 0.0, 0.5, 3.0]], rtol=1e-6)
    grad = np.asarray(jax.grad(lambda v: A.leaky_relu(v, 0.1).sum())(z))
    np.testing.assert_allclose(grad[0, [0, 1]], [0.1, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(grad[0, [3, 4]], [1.0, 1.0])
    # slope 0 is a plain ReLU
    np.testing.assert_array_equal(np.asarray(A.leaky_relu(z, 0.0)), np.asarray(A.relu(z)))


# ---------------------------------------------------------------------------------------------
# topk


def _topk_reference(z, k):
    """(selected mask, output) in numpy: per row the k largest, ties to the lower index."""
    order = np.argsort(-z, axis=-1, kind="stable")[:, :k]
    mask = np.zeros(z.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask, np.where(mask, np.maximum(z, 0), 0.0)


def test_topk_keeps_the_k_largest_relud():
    k = 3
    z = _distinct(jax.random.key(1), (6, 10))
    z[0] = -np.abs(z[0])  # a row with no positive entry: output all zero
    z[1] = -np.abs(z[1])
    z[1, 7] = 2.5  # a row with a single positive entry: only it survives
    mask, ref = _topk_reference(z, k)
    out = np.asarray(A.topk(jnp.asarray(z), k))
    np.testing.assert_array_equal(out, ref)
    assert out.shape == z.shape
    # zeros outside the selection, and exactly k non-zeros wherever a row has >= k positives
    assert np.all(out[~mask] == 0)
    n_pos = (z > 0).sum(-1)
    np.testing.assert_array_equal((out != 0).sum(-1), np.minimum(n_pos, k))
    assert (out != 0).sum(-1)[0] == 0 and (out != 0).sum(-1)[1] == 1
    # the selected entries are each row's k largest
    for row, m in zip(z, mask):
        assert row[m].min() > row[~m].max()


def test_topk_selects_exactly_k_on_ties():
    out = np.asarray(A.topk(jnp.ones((2, 5)), 2))
    np.testing.assert_array_equal((out != 0).sum(-1), [2, 2])
    np.testing.assert_array_equal(out, [[1, 1, 0, 0, 0]] * 2)  # ties broken by index


def test_topk_gradient_reaches_selected_entries_only():
    k = 2
    z = _distinct(jax.random.key(2), (4, 7))
    w = _distinct(jax.random.key(3), (4, 7))
    mask, _ = _topk_reference(z, k)
    grad = np.asarray(jax.grad(lambda v: jnp.sum(jnp.asarray(w) * A.topk(v, k)))(jnp.asarray(z)))
    # selected and positive: the weight; everything else (unselected or ReLU'd to 0): zero
    np.testing.assert_allclose(grad, np.where(mask & (z > 0), w, 0.0), rtol=1e-6)


def test_topk_jits():
    z = jnp.asarray(_distinct(jax.random.key(4), (3, 8)))
    np.testing.assert_array_equal(np.asarray(jax.jit(A.topk, static_argnums=1)(z, 3)), np.asarray(A.topk(z, 3)))


# ---------------------------------------------------------------------------------------------
# batchtopk


def _batchtopk_reference(z, k):
    acts = np.maximum(z, 0).reshape(-1)
    order = np.argsort(-acts, kind="stable")[: k * z.shape[0]]
    mask = np.zeros(acts.shape, bool)
    mask[order] = True
    return mask.reshape(z.shape), np.where(mask, acts, 0.0).reshape(z.shape)


def test_batchtopk_selects_k_times_batch_over_the_whole_batch():
    k, batch, width = 2, 4, 8
    z = np.abs(_distinct(jax.random.key(5), (batch, width)))  # all positive: exactly k·B non-zeros
    z[0] += 10.0  # row 0 dominates: it takes more than k latents, other rows fewer
    mask, ref = _batchtopk_reference(z, k)
    out, min_selected = A.batchtopk(jnp.asarray(z), k)
    out = np.asarray(out)
    np.testing.assert_array_equal(out, ref)
    assert (out != 0).sum() == k * batch
    per_row = (out != 0).sum(-1)
    assert per_row[0] == width and per_row.min() < k  # a row may hold more or fewer than k
    assert z[mask].min() > z[~mask].max()
    assert float(min_selected) == z[mask].min()


def test_batchtopk_relus_and_min_selected_is_smallest_positive():
    k = 3
    z = np.array([[-1.0, 0.5, -2.0, 0.25], [-0.1, -0.3, 2.0, -0.7]], np.float32)  # 3 positives < k·B = 6
    out, min_selected = A.batchtopk(jnp.asarray(z), k)
    np.testing.assert_array_equal(np.asarray(out), np.maximum(z, 0))
    assert float(min_selected) == 0.25  # not the zeros that also got selected
    out, min_selected = A.batchtopk(-jnp.abs(jnp.asarray(z)) - 0.1, k)
    assert float(min_selected) == 0.0 and not np.asarray(out).any()


def test_batchtopk_gradient_reaches_selected_entries_only():
    k = 2
    z = _distinct(jax.random.key(6), (4, 6))
    w = _distinct(jax.random.key(7), (4, 6))
    mask, _ = _batchtopk_reference(z, k)
    assert (mask & (z > 0)).sum() == k * 4  # enough positives: every selected entry is positive
    grad = np.asarray(jax.grad(lambda v: jnp.sum(jnp.asarray(w) * A.batchtopk(v, k)[0]))(jnp.asarray(z)))
    np.testing.assert_allclose(grad, np.where(mask, w, 0.0), rtol=1e-6)
    # min_selected is a buffer statistic: no gradient
    grad_min = jax.grad(lambda v: A.batchtopk(v, k)[1])(jnp.asarray(z))
    assert not np.asarray(grad_min).any()


def test_batchtopk_jits():
    z = jnp.asarray(_distinct(jax.random.key(8), (4, 6)))
    out, m = jax.jit(A.batchtopk, static_argnums=1)(z, 2)
    ref, m_ref = A.batchtopk(z, 2)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert float(m) == float(m_ref)


# ---------------------------------------------------------------------------------------------
# jumprelu and step: z placed by hand inside and outside each kernel window.

EPS = 0.1
# offsets z - θ, with ε = 0.1: inside the window |u| < 1/2 for |offset| < 0.05; some just outside
# (0.07, -0.08) so that a wider kernel would be caught
OFFSETS = np.array(
    [[-0.3, -0.04, 0.02, 0.2], [0.03, -0.08, 0.6, -0.01], [0.038, 0.07, -0.035, 0.4]], np.float32
)


def _jump_inputs(threshold):
    """z = θ + OFFSETS (threshold [F] or []), with g a fixed random cotangent."""
    z = (np.asarray(threshold, np.float32) + OFFSETS).astype(np.float32)
    g = _distinct(jax.random.key(9), z.shape)
    u = (z.astype(np.float64) - np.asarray(threshold, np.float64)) / EPS
    assert np.all(np.abs(np.abs(u) - 0.5) > 0.05)  # no point near a window edge
    assert _rect(u).sum() >= 4 and (1 - _rect(u)).sum() >= 4  # both inside and outside
    return z, g, u


@pytest.mark.parametrize("threshold", [np.array([0.5, 1.0, 0.3, 0.8], np.float32), np.float32(0.6)],
                         ids=["vector", "scalar"])
def test_jumprelu_forward_and_ste_vjp(threshold):
    z, g, u = _jump_inputs(threshold)
    theta = jnp.asarray(threshold)
    out, vjp = jax.vjp(lambda p, t: A.jumprelu(p, t, EPS), jnp.asarray(z), theta)
    above = z > threshold
    np.testing.assert_array_equal(np.asarray(out), np.maximum(z, 0) * above)
    d_z, d_theta = vjp(jnp.asarray(g))
    assert d_theta.shape == theta.shape
    np.testing.assert_array_equal(np.asarray(d_z), g * above)
    theta64 = np.broadcast_to(np.asarray(threshold, np.float64), z.shape)
    ref = (-(theta64 / EPS) * _rect(u) * g).sum(0)
    ref = ref.sum() if np.ndim(threshold) == 0 else ref
    np.testing.assert_allclose(np.asarray(d_theta), ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(d_theta) != 0) if np.ndim(threshold) else float(d_theta) != 0


def test_jumprelu_ste_under_jit_and_grad():
    threshold = np.array([0.5, 1.0, 0.3, 0.8], np.float32)
    z, g, u = _jump_inputs(threshold)

    def loss(t):
        return jnp.sum(jnp.asarray(g) * A.jumprelu(jnp.asarray(z), t, EPS))

    ref = (-(threshold / EPS) * _rect(u) * g).sum(0)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(threshold))), ref, rtol=1e-5, atol=1e-5)


def test_jumprelu_negative_threshold_is_relu_and_z_grad_is_the_true_one():
    """θ < 0: the forward is ReLU(z)·1[z > θ], so z in (θ, 0] gives 0 with zero gradient."""
    z = jnp.array([[-0.5, -0.1, 0.2, 0.7]])
    theta = jnp.array([-0.3, -0.3, -0.3, 0.5])
    np.testing.assert_array_equal(np.asarray(A.jumprelu(z, theta, EPS)), np.float32([[0.0, 0.0, 0.2, 0.7]]))
    d_z = np.asarray(jax.grad(lambda v: A.jumprelu(v, theta, EPS).sum())(z))
    np.testing.assert_array_equal(d_z, [[0.0, 0.0, 1.0, 1.0]])


@pytest.mark.parametrize("threshold", [np.array([0.5, 1.0, 0.3, 0.8], np.float32), np.float32(0.6)],
                         ids=["vector", "scalar"])
def test_step_forward_and_ste_vjp(threshold):
    z, g, u = _jump_inputs(threshold)
    theta = jnp.asarray(threshold)
    out, vjp = jax.vjp(lambda p, t: A.step(p, t, EPS), jnp.asarray(z), theta)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), (z > threshold).astype(np.float32))
    d_z, d_theta = vjp(jnp.asarray(g))
    assert d_theta.shape == theta.shape
    assert not np.asarray(d_z).any()
    ref = (-(1.0 / EPS) * _rect(u) * g).sum(0)
    ref = ref.sum() if np.ndim(threshold) == 0 else ref
    np.testing.assert_allclose(np.asarray(d_theta), ref, rtol=1e-5, atol=1e-5)


def test_step_sum_is_l0_and_its_theta_grad_counts_window_hits():
    threshold = np.array([0.5, 1.0, 0.3, 0.8], np.float32)
    z, _, u = _jump_inputs(threshold)

    def l0(t):
        return A.step(jnp.asarray(z), t, EPS).sum(-1).mean()

    assert float(l0(jnp.asarray(threshold))) == pytest.approx((z > threshold).sum(-1).mean())
    grad = np.asarray(jax.jit(jax.grad(l0))(jnp.asarray(threshold)))
    np.testing.assert_allclose(grad, -_rect(u).sum(0) / EPS / z.shape[0], rtol=1e-5)


def test_jumprelu_and_step_are_strict_at_the_threshold():
    theta = jnp.array([0.5, 1.0, 0.25])
    z = jnp.stack([theta, theta + 0.5])
    np.testing.assert_array_equal(np.asarray(A.step(z, theta, EPS)), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(A.jumprelu(z, theta, EPS)), np.asarray([[0, 0, 0], theta + 0.5]))
