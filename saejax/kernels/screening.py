"""A bfloat16 pre-screen for the sparse TopK encoder, certified to select what float32 selects.

The sparse TopK step spends two thirds of its time in one dense product, the encoder's
[B, d_in] x [d_in, d_sae] pre-activations, of which it keeps k per row. CPUs with bf16 dot
instructions (AVX512-BF16, AMX) run that product about twice as fast in bfloat16 with float32
accumulation. `screened_top_k` uses the bf16 product only to pick candidates, and keeps float32's
answer:

1. screen: p = bf16(x) @ bf16(W) + b_enc. Rounding x and W to bfloat16 moves each product x_j·W_ji
   by at most 2^-8 of itself, and a float32 sum of d terms adds at most d·2^-24 of Σ|x_j·W_ji| (both
   in the screen and in any float32 product); by Cauchy-Schwarz, u_i = p_i + c·‖x‖·‖W_i‖ with
   c = (2^-8 + 2·d·2^-24)·1.01 is an upper bound of latent i's exact and float32 pre-activations.
   Each row's 2k largest u (`selection.top_k`) are the candidates; the smallest of them is the bar,
   above every other latent's exact and float32 values.
2. recompute the candidates' pre-activations in float32 (gathering their 2k columns of W) and take
   the k largest, ties to the lower latent as in ``lax.top_k``.
3. certify: when the bar lies below the k-th recomputed value by more than the float32 rounding of
   the recomputation (2·d·2^-24·1.01·‖x‖·max_i‖W_i‖, and of the bias additions), every latent
   outside the candidates is below all k selected ones, in exact and in float32 arithmetic: the
   selection is float32's.
4. rows not certified (a near tie between the k-th value and the bar, wide-spread column norms,
   NaN/Inf) are selected again from their own float32 product, up to REPAIR_ROWS per chunk of rows (a
   [REPAIR_ROWS, d] x [d, F] product); a chunk with more is selected wholly in float32. Slower, never
   different. (On real activations a few rows in a thousand go uncertified once training has spread
   the encoder's column norms: re-selecting whole chunks for them cost more than the screen saved;
   BUILD_NOTES, "Performance suite".)

The selected values come from the recomputation, so they equal the dense path's up to float32
rounding (summation order), like the rest of the sparse path. The screen is taken only where bf16
dots are fast (`bf16_dots_are_fast`) and where it pays (`worth_screening`); measurements in
BUILD_NOTES, "Performance suite".
"""

import functools

import jax
import jax.numpy as jnp

from saejax.kernels import layout, selection

# The screen takes this many times k as its candidates (the last of them sets the bar).
SCREEN_FACTOR = 2
# The screen's bf16 weight gets its column norms as an extra row, padded to a multiple of this many rows.
SCREEN_ALIGN = 16
# Uncertified rows per chunk of rows that are re-selected on their own; a chunk with more is re-selected whole.
REPAIR_ROWS = 32
# Below this width (d_sae / k) the recomputation of 2k candidates costs more than the bf16 product saves.
MIN_WIDTH_PER_K = 1024
# `auto` screens batches of at least this many rows: below, the per-step cost of W_encᵀ, the bf16 weight
# and the norms (~55 ms at d_in 512, d_sae 32768) outweighs the saving (0.98x at 1024 rows, 1.03x at
# 2048, 1.11x at 4096; BUILD_NOTES, "Performance suite").
MIN_ROWS = 2048
_CPU_FLAGS = "/proc/cpuinfo"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def bf16_dots_are_fast() -> bool:
    """Whether the default backend is a CPU with bf16 dot instructions (avx512_bf16 or amx_bf16 among
    /proc/cpuinfo's flags), where XLA's bf16 products run about twice as fast as float32's."""
    if jax.default_backend() != "cpu":
        return False
    try:
        with open(_CPU_FLAGS) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_FLAGS)


def worth_screening(d_sae: int, k: int) -> bool:
    """Whether the screen pays at this width: d_sae >= MIN_WIDTH_PER_K · k, on a CPU with fast bf16 dots."""
    return d_sae >= MIN_WIDTH_PER_K * k and bf16_dots_are_fast()


def screens(setting: bool | str, rows: int) -> bool:
    """Whether a batch of `rows` is screened under an SAE's resolved `screen` setting: True always,
    "auto" from MIN_ROWS rows on, False never."""
    return setting is True or (setting == "auto" and rows >= MIN_ROWS)


def screen_bound_scale(d_in: int) -> float:
    """c such that the bf16 screen is within c·‖x‖·‖W_i‖ of latent i's exact and float32 pre-activations,
    for products over d_in terms (module docstring, step 1)."""
    return (2.0**-8 + 2 * d_in * 2.0**-24) * 1.01


def float32_bound_scale(d_in: int) -> float:
    """c such that two float32 products over d_in terms differ by at most c·‖x‖·‖W_i‖ (step 3)."""
    return 2 * d_in * 2.0**-24 * 1.01


def screened_top_k(x: jax.Array, w: jax.Array, w_rows: jax.Array | None, offset: jax.Array, k: int,
                   ) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(x @ w + offset, k)`` in float32, screened in bfloat16 and certified (module docstring),
    chunk by chunk of rows as `selection.chunked_top_k`; rows not certified are selected from their
    float32 product instead (step 4). No gradient.

    x [B, d] float32 (already centered), w [d, F], w_rows: w's transpose [F, d] if the caller holds it
    (a tied SAE's W_dec), else None (it is made once here), offset [F] -> values [B, k], indices [B, k]
    int32."""
    x, w, offset = jax.lax.stop_gradient((x, w, offset))
    # [F, d] for the row gathers, written out once (`layout.transpose`): a plain w.T was fused into the
    # gather when the batch makes one chunk (no loop in between), which then read W across its rows:
    # 200 ms instead of ~20 at batch 1024, d_sae 32768 (BUILD_NOTES, "Performance suite")
    w_rows = layout.transpose(w) if w_rows is None else jax.lax.stop_gradient(w_rows)
    norms = jnp.sqrt(jnp.sum(w_rows * w_rows, axis=1))  # [F] (rows of w_rows: contiguous)
    w_low = screen_weight(w, norms)

    def float32_top_k(rows):  # [n, d] -> values [n, k], indices [n, k]
        return tuple(selection.top_k(jnp.matmul(rows, w, preferred_element_type=jnp.float32), k, offset))

    max_norm = jnp.max(norms)  # once, not in every chunk

    def select(rows):  # [R, d] -> values [R, k], indices [R, k]
        values, indices, certified = screen_rows(rows, w_low, w_rows, offset, max_norm, k)
        repairable = min(REPAIR_ROWS, rows.shape[0])

        def repair():  # the uncertified rows (and certified ones to fill REPAIR_ROWS), in float32
            redo = jnp.argsort(certified, stable=True)[:repairable]  # uncertified (False) first
            redone_values, redone_indices = float32_top_k(rows[redo])
            return values.at[redo].set(redone_values), indices.at[redo].set(redone_indices)

        uncertified = jnp.sum(~certified)
        branch = jnp.where(uncertified == 0, 0, jnp.where(uncertified <= repairable, 1, 2))
        return jax.lax.switch(branch, [lambda: (values, indices), repair, lambda: float32_top_k(rows)])

    return selection.map_row_chunks(select, x, 4 * w.shape[1], k)


def screen_weight(w: jax.Array, norms: jax.Array) -> jax.Array:
    """The screen's bf16 weight: W [d, F] with its column norms [F] as row d, zero-padded to a multiple
    of SCREEN_ALIGN rows -> [d', F] bfloat16. With `screen_input`'s extra column the bf16 product then
    carries each latent's rounding bound c·‖x‖·‖W_i‖ itself (a bound added as a [R, F] offset outside
    the product was written out, 25 ms per chunk of 1024 rows, instead of being fused)."""
    d = w.shape[0]
    extra = -(-(d + 1) // SCREEN_ALIGN) * SCREEN_ALIGN - d
    rows = jnp.concatenate([norms[None], jnp.zeros((extra - 1, w.shape[1]), w.dtype)])
    return jnp.concatenate([w, rows]).astype(jnp.bfloat16)


def screen_input(rows: jax.Array, row_norms: jax.Array, width: int) -> jax.Array:
    """rows [R, d], their norms [R] -> [R, width] bfloat16: rows, then c·‖row‖ (c = `screen_bound_scale`,
    raised by 2^-7 for the bf16 rounding of this entry and of the norms row), then zeros. Against
    `screen_weight` this gives each latent's upper bound u_i = p_i + c·‖x‖·‖W_i‖ (module docstring, step 1)."""
    d = rows.shape[1]
    margin = (screen_bound_scale(d) * (1 + 2.0**-7) * row_norms)[:, None]
    padding = jnp.zeros((rows.shape[0], width - d - 1), rows.dtype)
    return jnp.concatenate([rows, margin, padding], axis=1).astype(jnp.bfloat16)


def screen_rows(rows: jax.Array, w_low: jax.Array, w_rows: jax.Array, offset: jax.Array, max_norm: jax.Array,
                k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 1-3 of the module docstring for a chunk of rows [R, d], with w_low = `screen_weight`
    [d', F], w_rows = W's transpose [F, d] float32, offset [F] and max_norm = max_i‖W_i‖ -> values
    [R, k] (recomputed in float32, descending), indices [R, k] int32, certified bool [R] (whether the
    row's selection is provably float32's)."""
    d = rows.shape[1]
    row_norms = jnp.linalg.norm(rows, axis=-1)  # [R]
    upper = jnp.matmul(screen_input(rows, row_norms, w_low.shape[0]), w_low, preferred_element_type=jnp.float32)
    listed_values, listed_at = selection.top_k(upper, SCREEN_FACTOR * k, offset)
    candidates = jnp.sort(listed_at, axis=-1)  # [R, SCREEN_FACTOR·k], in latent order for ties
    recomputed = jnp.einsum("rd,rmd->rm", rows, w_rows[candidates],
                            precision=jax.lax.Precision.HIGHEST) + offset[candidates]
    values, at = jax.lax.top_k(recomputed, k)
    indices = jnp.take_along_axis(candidates, at, axis=-1)
    # The lists are descending: their minima are the bar and the k-th value. (Slicing off the last
    # entry instead made XLA-CPU sort the whole rows, 0.3 s per chunk, rather than TopK them.)
    bar, kth = listed_values.min(axis=-1), values.min(axis=-1)
    # + the float32 rounding of the bias additions (at most 2^-24 of either sum's magnitude), + products
    # below float32's normal range, which bf16 dot instructions flush to zero (at most 2^-126 each)
    margin = (float32_bound_scale(d) * row_norms * max_norm
              + 2.0**-22 * (jnp.abs(bar) + jnp.abs(kth)) + d * 2.0**-125)
    return values, indices, bar + margin < kth
