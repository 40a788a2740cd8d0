"""saejax.selection.largest: lax.top_k's values, compiled as XLA's TopK and not as a full sort."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from saejax import activations, selection


def test_largest_is_top_k_values():
    x = jax.random.normal(jax.random.key(0), (6, 50))
    np.testing.assert_array_equal(selection.largest(x, 7), jax.lax.top_k(x, 7)[0])
    np.testing.assert_array_equal(selection.largest(x.reshape(-1), 300)[-1], np.sort(np.asarray(x).ravel())[-300])


def _ops(fn, x):
    hlo = jax.jit(fn).lower(x).compile().as_text()
    return set(re.findall(r'custom_call_target="TopK"|\bsort\(', hlo))


def test_a_threshold_from_top_k_values_stays_a_top_k():
    """Using only a top_k's values lets XLA (CPU) turn it into a sort of the whole operand; BatchTopK's
    threshold must not (12 s instead of 0.5 s per step at batch 4096, d_sae 8192)."""
    x = jnp.zeros((64, 512))
    if jax.default_backend() == "cpu":
        assert _ops(lambda x: jax.lax.top_k(x.reshape(-1), 100)[0][-1], x) == {"sort("}  # the pitfall
    assert "sort(" not in _ops(lambda x: selection.largest(x.reshape(-1), 100)[-1], x)
    assert "sort(" not in _ops(lambda x: activations.batchtopk(x, 4)[0], x)
