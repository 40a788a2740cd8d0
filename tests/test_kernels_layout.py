"""saejax.kernels.layout.transpose: x.T, materialised row-major on CPU through an identity product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax.kernels import layout


@pytest.mark.parametrize("shape", [(48, 32), (5, 16), (7, 24)])
def test_transpose_is_x_transposed(shape):
    """(7, 24): 24 is no multiple of BLOCK, so the plain x.T."""
    x = jax.random.normal(jax.random.key(0), shape) * 1e30
    x = x.at[0, 0].set(1e-37).at[1, 1].set(0.0).at[2, 2].set(1e-45)  # tiny normal, zero, subnormal
    got = np.array(jax.jit(layout.transpose)(x))
    assert got.shape == shape[::-1] and got.dtype == x.dtype
    assert got[2, 2] in (0.0, 1e-45)  # the matmul may flush subnormals to zero
    got[2, 2] = 1e-45
    np.testing.assert_array_equal(got, np.asarray(x).T)


def test_transpose_through_the_identity_product_keeps_bfloat16_and_gradients():
    x = jax.random.normal(jax.random.key(1), (6, 32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(layout.transpose(x), x.T)
    weights = jax.random.normal(jax.random.key(2), (32, 6))
    got = jax.grad(lambda x: jnp.sum(layout.transpose(x) * weights))(x.astype(jnp.float32))
    np.testing.assert_array_equal(got, weights.T)


def test_the_compiled_transpose_is_a_dot_with_a_row_major_result():
    """What the module exists for: XLA may not turn it into a bitcast read strided by its consumers."""
    hlo = jax.jit(lambda g, m: 0.9 * m + layout.transpose(g)).lower(
        jnp.zeros((64, 32)), jnp.zeros((32, 64))).compile().as_text()
    assert " dot(" in hlo or "__ynn_fusion" in hlo
