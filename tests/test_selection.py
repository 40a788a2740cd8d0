"""saejax.kernels.selection: lax.top_k exactly (values, indices, ties, gradients), blockwise on wide rows, by
radix select where k is a large share of the row, and compiled as XLA's TopK, never as a full sort
of the operand."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax import activations
from saejax.kernels import native, selection


def test_largest_is_top_k_values():
    x = jax.random.normal(jax.random.key(0), (6, 50))
    np.testing.assert_array_equal(selection.largest(x, 7), jax.lax.top_k(x, 7)[0])
    np.testing.assert_array_equal(selection.largest(x.reshape(-1), 300)[-1], np.sort(np.asarray(x).ravel())[-300])


def _wide_rows(kind):
    x = jax.random.normal(jax.random.key(1), (5, 4096))
    if kind == "ties":  # few distinct values: ties at the k-th largest, inside blocks and across them
        return jnp.round(x * 2)
    if kind == "masked":  # AuxK's -inf for live latents, most blocks all -inf
        return jnp.where(jax.random.uniform(jax.random.key(2), x.shape) < 0.05, x, -jnp.inf)
    return x


@pytest.mark.parametrize("kind", ["normal", "ties", "masked"])
@pytest.mark.parametrize("k", [1, 16])
def test_top_k_is_lax_top_k(kind, k):
    x = _wide_rows(kind)
    assert k * selection.BLOCK <= selection.MAX_CANDIDATE_SHARE * x.shape[-1]  # the blockwise path
    for rows in (x, x.reshape(-1)):
        values, indices = jax.jit(selection.top_k, static_argnums=1)(rows, k)
        want_values, want_indices = jax.lax.top_k(rows, k)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(indices, want_indices)


@pytest.mark.parametrize("kind", ["normal", "ties", "masked"])
@pytest.mark.parametrize("k", [1, 16, 300])  # 300: candidates over MAX_CANDIDATE_SHARE, lax.top_k's path
def test_top_k_with_an_offset_is_lax_top_k_of_the_sum(kind, k):
    x = _wide_rows(kind)
    offset = jnp.round(jax.random.normal(jax.random.key(4), x.shape[-1:]) * 4) / 4  # ties across rows too
    values, indices = jax.jit(selection.top_k, static_argnums=1)(x, k, offset)
    want_values, want_indices = jax.lax.top_k(x + offset, k)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)


def test_top_k_rejects_an_offset_of_another_shape():
    x = jnp.zeros((4, 4096))
    for offset in (jnp.zeros((4, 4096)), jnp.zeros((1, 4096)), jnp.zeros((2048,))):
        with pytest.raises(ValueError, match="offset must have shape"):
            selection.top_k(x, 8, offset)


def test_top_k_offset_is_fused_into_the_block_maxima():
    """x + offset feeds the block maxima alone (the candidates add their own gathered offsets), so XLA
    never writes the [rows, width] sum out: no fusion outputs an array of x's size but the input."""
    x, offset = jnp.zeros((64, 4096)), jnp.zeros((4096,))
    hlo = jax.jit(selection.top_k, static_argnums=1).lower(x, 8, offset).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    assert not re.search(r"= f32\[64,(4096|128,32)\]\S* fusion\(", entry), entry


@pytest.mark.parametrize("kind", ["normal", "ties", "masked"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5])
def test_chunked_top_k_selects_what_top_k_of_the_whole_output_does(monkeypatch, kind, chunk_rows):
    """Chunks of 1..5 of the 5 rows (3 rows: two chunks, the second padded); row_fn sees chunks only."""
    x = _wide_rows(kind)
    width = x.shape[1] // 2
    monkeypatch.setattr(selection, "CHUNK_BYTES", chunk_rows * 4 * width)
    seen = []

    def row_fn(rows):  # row-wise, and narrower than its input: every other entry
        seen.append(rows.shape[0])
        return rows[:, ::2]

    values, indices = jax.jit(lambda x: selection.chunked_top_k(row_fn, x, 16, width))(x)
    want_values, want_indices = selection.top_k(row_fn(x), 16)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    assert seen[0] == -(-5 // -(-5 // chunk_rows))  # balanced chunks of at most chunk_rows rows
    offset = jnp.round(jax.random.normal(jax.random.key(5), (width,)) * 4) / 4
    values, indices = jax.jit(lambda x: selection.chunked_top_k(row_fn, x, 16, width, offset))(x)
    want_values, want_indices = jax.lax.top_k(row_fn(x) + offset, 16)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)


def test_top_k_gradient_is_lax_top_k_gradient():
    x = jax.random.normal(jax.random.key(3), (3, 2048))
    weights = jnp.arange(8.0)
    got = jax.grad(lambda x: jnp.sum(selection.top_k(x, 8)[0] * weights))(x)
    want = jax.grad(lambda x: jnp.sum(jax.lax.top_k(x, 8)[0] * weights))(x)
    np.testing.assert_array_equal(got, want)


def _lax_top_k_mask(x, k):
    indices = jax.lax.top_k(x, k)[1]
    return np.asarray(jnp.zeros(x.shape, bool).at[jnp.arange(x.shape[0])[:, None], indices].set(True))


@pytest.mark.parametrize("kind", ["normal", "ties", "masked", "signed zeros"])
@pytest.mark.parametrize("width,k", [(4096, 16), (4096, 256), (512, 200), (512, 512)])
def test_top_k_mask_selects_what_lax_top_k_selects(kind, width, k):
    """Radix select (k >= width/16) and the indices path pick the same entries as lax.top_k, ties to
    the lower index; -0.0 ranks below 0.0, as in XLA's TopK."""
    x = _wide_rows("normal" if kind == "signed zeros" else kind)[:, :width]
    if kind == "signed zeros":  # a row of zeros of both signs, and zeros right at the k-th place
        x = jnp.where(jnp.arange(width) % 3 == 0, 0.0, jnp.where(jnp.arange(width) % 3 == 1, -0.0, x))
        x = x.at[0].set(jnp.where(jnp.arange(width) % 2 == 0, 0.0, -0.0))
    masked = kind == "masked" and k > 0.05 * width
    if masked:  # fewer finite entries than k: the -inf entries fill up the k, lower indices first
        assert int(jnp.isfinite(x).sum(-1).min()) < k
    got = np.asarray(jax.jit(selection.top_k_mask, static_argnums=1)(x, k))
    np.testing.assert_array_equal(got, _lax_top_k_mask(x, k))
    assert (got.sum(-1) == k).all()


def test_topk_activation_by_radix_select_matches_the_scatter_formula():
    """activations.topk with k a large share of the row (AuxK's k_aux over a small sub-dictionary)
    takes the radix path; its values and gradient are lax.top_k's."""
    x = jax.random.normal(jax.random.key(4), (8, 1024)) + jnp.round(jax.random.normal(jax.random.key(5), (8, 1024)))
    k = 256
    assert selection.radix_is_faster(x.shape[1], k)

    def reference(x):
        values, indices = jax.lax.top_k(x, k)
        return jnp.zeros_like(x).at[jnp.arange(x.shape[0])[:, None], indices].set(jax.nn.relu(values))

    weights = jax.random.normal(jax.random.key(6), x.shape)
    np.testing.assert_array_equal(activations.topk(x, k), reference(x))
    got = jax.grad(lambda x: jnp.sum(activations.topk(x, k) * weights))(x)
    np.testing.assert_array_equal(got, jax.grad(lambda x: jnp.sum(reference(x) * weights))(x))


def _sorts_and_topks(fn, x):
    """The element counts of every sort's operands, and whether a TopK (XLA's, or the native
    kernel's) is in the compiled HLO."""
    hlo = jax.jit(fn).lower(x).compile().as_text()
    sorts = [int(np.prod([int(d) for d in m.split(",")])) for m in re.findall(r"= \w+\[([\d,]*)\]\{[^}]*\} sort\(", hlo)]
    return sorts, any(f'custom_call_target="{name}"' in hlo for name in ("TopK", native.TOP_K_TARGET))


def test_a_threshold_from_top_k_values_stays_a_top_k():
    """Using only a top_k's values lets XLA (CPU) turn it into a sort of the whole operand; BatchTopK's
    threshold must not (12 s instead of 0.5 s per step at batch 4096, d_sae 8192). The blockwise path
    sorts its k kept block ids, nothing larger."""
    x = jnp.zeros((64, 512))
    if jax.default_backend() == "cpu":
        sorts, _ = _sorts_and_topks(lambda x: jax.lax.top_k(x.reshape(-1), 100)[0][-1], x)
        assert sorts and max(sorts) >= x.size  # the pitfall
    for fn in (lambda x: selection.largest(x.reshape(-1), 100)[-1], lambda x: activations.batchtopk(x, 4)[0]):
        sorts, has_top_k = _sorts_and_topks(fn, x)
        assert has_top_k and all(size <= 100 for size in sorts), sorts
