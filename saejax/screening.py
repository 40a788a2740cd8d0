"""A bfloat16 pre-screen for the sparse TopK encoder, certified to select what float32 selects.

The sparse TopK step spends two thirds of its time in one dense product, the encoder's
[B, d_in] x [d_in, d_sae] pre-activations, of which it keeps k per row. CPUs with bf16 dot
instructions (AVX512-BF16, AMX) run that product about twice as fast in bfloat16 with float32
accumulation. `screened_top_k` uses the bf16 product only to pick candidates, and keeps float32's
answer:

1. screen: p = bf16(x) @ bf16(W) + b_enc; each row's 2k largest p (`selection.top_k`) are the
   candidates, and the smallest of them is the bar: every other latent has p <= bar.
2. recompute the candidates' pre-activations in float32 (gathering their m columns of W) and take the
   k largest, ties to the lower latent as in ``lax.top_k``.
3. certify: rounding x and W to bfloat16 moves each product x_j·W_ji by at most 2^-8 of itself, and the
   float32 sums add at most d·2^-24 of Σ|x_j·W_ji| each; by Cauchy-Schwarz, any latent's p lies within
   `bound` = (2^-8 + 2·d·2^-24)·(1.01)·‖x‖·max_i‖W_i‖ of its float32 value (and of its exact value).
   When bar + bound lies below the k-th recomputed value, every latent outside the candidates is below
   all k selected ones, in exact and in float32 arithmetic: the selection is float32's.
4. a chunk of rows with any row not certified (a near tie at the k-th value, wide-spread column norms,
   NaN/Inf) is selected again from its float32 product (``lax.cond``): slower, never different.

The selected values come from the recomputation, so they equal the dense path's up to float32
rounding (summation order), like the rest of the sparse path. The screen is taken only where bf16
dots are fast (`bf16_dots_are_fast`) and where it pays (`worth_screening`); measurements in
BUILD_NOTES, issue 8 session 10.
"""

import functools

import jax
import jax.numpy as jnp

from saejax import layout, selection

# The screen takes this many times k as its top list (candidates + the bar).
SCREEN_FACTOR = 2
# Below this width (d_sae / k) the recomputation of 2k candidates costs more than the bf16 product saves.
MIN_WIDTH_PER_K = 1024
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


def rounding_bound_scale(d_in: int) -> float:
    """c such that |bf16 screen - float32| <= c·‖x‖·‖W_i‖ for a product over d_in terms (module docstring)."""
    return (2.0**-8 + 2 * d_in * 2.0**-24) * 1.01


def screened_top_k(x: jax.Array, w: jax.Array, w_rows: jax.Array | None, offset: jax.Array, k: int,
                   ) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(x @ w + offset, k)`` in float32, screened in bfloat16 and certified (module docstring),
    chunk by chunk of rows as `selection.chunked_top_k`; a chunk with any row not certified is selected
    from its float32 product instead. No gradient.

    x [B, d] float32 (already centered), w [d, F], w_rows: w's transpose [F, d] if the caller holds it
    (a tied SAE's W_dec), else None (it is made once here), offset [F] -> values [B, k], indices [B, k]
    int32."""
    x, w, offset = jax.lax.stop_gradient((x, w, offset))
    w_rows = layout.transpose(w) if w_rows is None else jax.lax.stop_gradient(w_rows)  # [F, d] for gathers
    w_low = w.astype(jnp.bfloat16)
    scale = rounding_bound_scale(x.shape[1]) * jnp.sqrt(jnp.max(jnp.sum(w * w, axis=0)))

    def select(rows):  # [R, d] -> values [R, k], indices [R, k]
        values, indices, certified = screen_rows(rows, w_low, w_rows, offset, k, scale)
        return jax.lax.cond(jnp.all(certified), lambda: (values, indices),
                            lambda: tuple(selection.top_k(jnp.matmul(rows, w, preferred_element_type=jnp.float32), k, offset)))

    return selection.map_row_chunks(select, x, 4 * w.shape[1], k)


def screen_rows(rows: jax.Array, w_low: jax.Array, w_rows: jax.Array, offset: jax.Array, k: int,
                scale: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Steps 1-3 of the module docstring for a chunk of rows [R, d], with w_low = bf16(W) [d, F],
    w_rows = W's transpose [F, d] float32, offset [F] and scale = rounding_bound_scale(d)·max_i‖W_i‖
    -> values [R, k] (recomputed in float32, descending), indices [R, k] int32, certified bool [R]
    (whether the row's selection is provably float32's)."""
    screen = jnp.matmul(rows.astype(jnp.bfloat16), w_low, preferred_element_type=jnp.float32)
    listed_values, listed_at = selection.top_k(screen, SCREEN_FACTOR * k, offset)
    candidates = jnp.sort(listed_at, axis=-1)  # [R, SCREEN_FACTOR·k], in latent order for ties
    recomputed = jnp.einsum("rd,rmd->rm", rows, w_rows[candidates],
                            precision=jax.lax.Precision.HIGHEST) + offset[candidates]
    values, at = jax.lax.top_k(recomputed, k)
    indices = jnp.take_along_axis(candidates, at, axis=-1)
    # The lists are descending: their minima are the bar and the k-th value. (Slicing off the last
    # entry instead made XLA-CPU sort the whole rows, 0.3 s per chunk, rather than TopK them.)
    bar, kth = listed_values.min(axis=-1), values.min(axis=-1)
    # + the float32 rounding of adding the offset (at most 2^-24 of either sum's magnitude), + products
    # below float32's normal range, which bf16 dot instructions flush to zero (at most 2^-126 each)
    bound = (scale * jnp.linalg.norm(rows, axis=-1) + 2.0**-22 * (jnp.abs(bar) + jnp.abs(kth))
             + rows.shape[1] * 2.0**-125)
    return values, indices, bar + bound < kth
