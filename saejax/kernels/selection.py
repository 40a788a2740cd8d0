"""The k largest entries of wide rows, exactly as ``lax.top_k`` and faster on XLA's CPU; other
backends take ``lax.top_k`` itself.

Three things about XLA's CPU TopK shape this module:

- When only the *values* of a ``lax.top_k`` are used (a threshold such as BatchTopK's k·B-th largest
  activation), XLA-CPU rewrites the TopK into a full sort of the operand (BatchTopK's 131,072 largest
  of 33.5M activations: 12 s instead of 0.49 s). `largest` uses the indices and gathers the values
  with them, which keeps the TopK. (An optimization barrier over values and indices also kept it on
  one device, but crashed XLA's TopkDecomposer under pmap.)
- The TopK runs one thread over every entry. Where the native kernel is built (`native`: float32, k
  up to NATIVE_MAX_K, one device), `top_k` asks it for the indices, found over XLA's intra-op
  threads, and gathers the values; otherwise it first takes each block of BLOCK entries'
  maximum and keeps the k blocks with the largest maxima: every one of the k largest entries lies in
  one of them (an entry among the k largest makes its block's maximum at least the k-th largest
  value, and at most k blocks reach that), so the TopK then runs over k·BLOCK candidates instead of
  the whole row. Ties go to the lower index, as in ``lax.top_k``: the kept blocks are put in index
  order before the second TopK, and the first prefers lower blocks among equal maxima.
- When k is a large share of the row (AuxK's k_aux over a small dead sub-dictionary) neither helps,
  and `top_k_mask` selects by radix instead: 32 vectorised counting passes find each row's k-th
  largest value bit by bit.

The thresholds below (when each path pays) were measured at batch 4096 on a 2-core AVX-512 CPU;
the numbers are in BUILD_NOTES.md, "Performance".
"""

import jax
import jax.numpy as jnp

from saejax.kernels import on_cpu

BLOCK = 32
# The blockwise path is taken when the candidates are at most this fraction of the row (below it, or
# for k 256 over 8192, the two TopKs cost more than the one).
MAX_CANDIDATE_SHARE = 1 / 8
# `top_k_mask` selects by radix from k >= this share of the row on (slower below).
MIN_RADIX_SHARE = 1 / 16
# `top_k` takes the native kernel up to this k (beyond it, a partial sort per row: not measured to pay).
NATIVE_MAX_K = 256
# `chunked_top_k` computes at most this many bytes of float32 rows at a time, so that each chunk is
# selected from while it is still in cache (1024-row chunks at d_sae 32768 beat the whole batch, 256 and
# 2048 rows).
CHUNK_BYTES = 128 * 2**20


def radix_is_faster(width: int, k: int) -> bool:
    """Whether `top_k_mask` selects k of `width` entries by radix (k >= MIN_RADIX_SHARE · width)
    rather than through `top_k`'s indices."""
    return k >= MIN_RADIX_SHARE * width


def top_k(x: jax.Array, k: int, offset: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(x + offset, k)``: the k largest entries along the last axis, descending, and their
    indices (ties to the lower index). x [..., F], offset [F] or None (zero) -> values [..., k],
    indices [..., k] int32. Differentiable in x like ``lax.top_k`` (the gradient reaches the
    selected entries).

    The offset (an encoder bias) is added block by block, after the reshape into blocks: XLA-CPU then
    fuses the addition into the block maxima instead of writing x + offset out first (14 ms of a
    [1024, 32768] chunk's ~37 ms selection; BUILD_NOTES, "Performance suite"). The gradient reaches
    the offset too, as it would through ``x + offset``."""
    width = x.shape[-1]
    if offset is not None and offset.shape != (width,):
        raise ValueError(f"top_k: offset must have shape ({width},) to match x {x.shape}, got {offset.shape}")
    if _native_pays(x, k, offset):
        from saejax.kernels import native  # noqa: PLC0415

        indices = native.top_k_indices(x, k, offset)
        values = jnp.take_along_axis(x, indices, axis=-1)
        return (values if offset is None else values + offset[indices]), indices
    if not on_cpu() or width % BLOCK or k * BLOCK > MAX_CANDIDATE_SHARE * width:
        return jax.lax.top_k(x if offset is None else x + offset, k)
    batch = x.shape[:-1]
    blocks = x.reshape(*batch, width // BLOCK, BLOCK)
    offset_blocks = None if offset is None else offset.reshape(width // BLOCK, BLOCK)
    shifted = blocks if offset is None else blocks + offset_blocks
    kept = jnp.sort(jax.lax.top_k(jax.lax.stop_gradient(shifted).max(-1), k)[1], axis=-1)  # [..., k] block ids
    candidates = jnp.take_along_axis(blocks, kept[..., None], axis=-2)  # [..., k, BLOCK]
    if offset is not None:  # gathered apart: `shifted` then feeds only the maxima and is never written out
        candidates = candidates + offset_blocks[kept]
    candidates = candidates.reshape(*batch, k * BLOCK)
    values, at = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(kept, at // BLOCK, axis=-1) * BLOCK + at % BLOCK


def _native_pays(x: jax.Array, k: int, offset: jax.Array | None) -> bool:
    """Whether `top_k` takes the native kernel (`saejax.kernels.native`): float32 rows on XLA's CPU
    with one device, k at most NATIVE_MAX_K, and the kernel built."""
    if not (on_cpu() and x.dtype == jnp.float32 and k <= NATIVE_MAX_K and x.size):
        return False
    if offset is not None and offset.dtype != jnp.float32:
        return False
    from saejax.kernels import native  # noqa: PLC0415

    return native.usable()


def chunked_top_k(row_fn, x: jax.Array, k: int, width: int,
                  offset: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """`top_k(row_fn(x), k, offset)` without ever holding row_fn(x) whole: x's rows go through row_fn and
    `top_k` in chunks of at most CHUNK_BYTES of float32 output (`map_row_chunks`), so each chunk's
    [rows, width] result is selected from while it is still in cache. No gradient.

    row_fn: [R, ...] -> [R, width] for any R (row-wise: each output row depends on its input row only).
    x [B, ...], offset [width] or None -> values [B, k], indices [B, k] int32, the same entries as the
    unchunked `top_k`."""
    offset = None if offset is None else jax.lax.stop_gradient(offset)
    select = lambda part: top_k(jax.lax.stop_gradient(row_fn(part)), k, offset)  # noqa: E731
    return map_row_chunks(select, x, 4 * width, k)


def map_row_chunks(select, x: jax.Array, bytes_per_row: int, k: int) -> tuple[jax.Array, jax.Array]:
    """select(x) for a row-wise `select`: [R, ...] -> (values [R, k], indices [R, k]), run over balanced
    chunks of x's rows whose scratch (bytes_per_row each) stays within CHUNK_BYTES (``lax.map``; one
    call when it fits). The last chunk is padded with copies of x's last row, whose results are dropped.
    x [B, ...] -> values [B, k], indices [B, k]."""
    rows = x.shape[0]
    n_chunks = -(-rows // max(1, CHUNK_BYTES // bytes_per_row)) if on_cpu() else 1
    if n_chunks == 1:
        return select(x)
    per_chunk = -(-rows // n_chunks)
    padded = jnp.pad(x, [(0, n_chunks * per_chunk - rows)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    values, indices = jax.lax.map(select, padded.reshape(n_chunks, per_chunk, *x.shape[1:]))
    return values.reshape(-1, k)[:rows], indices.reshape(-1, k)[:rows]


def largest(x: jax.Array, n: int) -> jax.Array:
    """``lax.top_k(x, n)[0]``: the n largest entries along the last axis, descending. [..., F] -> [..., n]
    On CPU through the indices, which keeps XLA's TopK instead of a full sort (module docstring)."""
    if not on_cpu():
        return jax.lax.top_k(x, n)[0]
    return jnp.take_along_axis(x, top_k(x, n)[1], axis=-1)


def top_k_mask(x: jax.Array, k: int) -> jax.Array:
    """Whether each entry is among its row's k largest, the entries ``lax.top_k(x, k)`` selects
    (exactly k per row, ties to the lower index, -0.0 below 0.0 as in XLA's TopK; no NaNs expected).
    x [..., F] -> bool [..., F]; no gradient (use it to mask x)."""
    width = x.shape[-1]
    x = jax.lax.stop_gradient(x)
    if not (on_cpu() and radix_is_faster(width, k)):
        indices = top_k(x, k)[1]
        return jnp.put_along_axis(jnp.zeros(x.shape, bool), indices, True, axis=-1, inplace=False)
    keys = _ordered_keys(x.astype(jnp.float32))
    kth = _kth_largest_key(keys, k)
    above, ties = keys > kth, keys == kth
    missing = k - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)  # how many ties to take
    return above | (ties & (jnp.cumsum(ties, axis=-1, dtype=jnp.int32) <= missing))


def _ordered_keys(x: jax.Array) -> jax.Array:
    """float32 -> uint32 in the same order (negative floats' bits flipped, positive ones' sign set)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31, ~bits, bits | jnp.uint32(0x80000000))


def _kth_largest_key(keys: jax.Array, k: int) -> jax.Array:
    """Each row's k-th largest key, built from the top bit down: a bit is kept when at least k keys
    reach the prefix with it set. uint32 [..., F] -> [..., 1]"""

    def add_bit(i, prefix):
        candidate = prefix | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        enough = jnp.sum(keys >= candidate, axis=-1, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(enough, candidate, prefix)

    return jax.lax.fori_loop(0, 32, add_bit, jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32))
