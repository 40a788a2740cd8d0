"""Memory layout on XLA's CPU backend: a transpose that is materialised once instead of read strided.

XLA's layout assignment turns a plain ``x.T`` into a bitcast and lets every consumer read x across
its rows. When the consumers are elementwise passes over a parameter-sized array (Adam's moment and
parameter updates take three), each pass then touches one cache line per element: at [32768, 512]
float32 that made the optimizer update of a sparse TopK step's W_enc gradient 110-125 ms instead of
12-17 ms (BUILD_NOTES, "Performance suite"). No layout-preserving op survives that pass (an
optimization barrier is expanded away, a conditional's result takes the transposed layout too), but
a dot's output is laid out row-major: `transpose` moves the rows through a batched product with a
16 x 16 identity, 2·16 FLOPs per element, which XLA runs as a tiled matmul: the same update then took
24-35 ms. The product is exact for finite normal entries (x·1 plus zeros); subnormals (below
1.2e-38) may come out as zero, and a NaN or ±Inf spreads to the 15 other entries of its 16-wide
block, which the train step's finiteness check rejects either way. Meant for gradients.
"""

import jax
import jax.numpy as jnp

BLOCK = 16


def transpose(x: jax.Array) -> jax.Array:
    """x.T for a 2-D x [m, n] -> [n, m], materialised row-major on CPU (see module docstring); the
    plain ``x.T`` elsewhere, and where n is not a multiple of BLOCK."""
    m, n = x.shape
    if jax.default_backend() != "cpu" or n % BLOCK:
        return x.T
    eye = jnp.broadcast_to(jnp.eye(BLOCK, dtype=x.dtype), (n // BLOCK, BLOCK, BLOCK))
    blocks = x.reshape(m, n // BLOCK, BLOCK)
    # out[h, i, r] = Σ_j eye[h, i, j] · x[r, h·BLOCK + j] = x[r, h·BLOCK + i]
    out = jax.lax.dot_general(eye, blocks, (((2,), (2,)), ((0,), (1,))), precision=jax.lax.Precision.HIGHEST)
    return out.reshape(n, m)
