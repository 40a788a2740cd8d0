"""Fast paths for one backend, each beside the plain reference path that every other backend takes.

Each fast path computes what its reference computes (the same selection, the same values up to float32
summation order) and is taken only on the backend where it was measured to win (BUILD_NOTES.md,
"Performance"); GPUs and TPUs run the references until a measurement there says otherwise.

    module        fast path (XLA-CPU)                               reference (elsewhere)
    selection     native or blockwise top-k, row-chunked            ``lax.top_k`` over the whole array
                  selection, radix top-k mask, index-based `largest`
    native        a C++ top-k over XLA's threads (XLA FFI), built   (none: callers take XLA's paths)
                  on first use; single-device programs only
    screening     bfloat16 pre-screen of the sparse TopK encoder,   the float32 selection
                  certified exact (CPUs with bf16 dot instructions)
    layout        transpose materialised through an identity dot    ``x.T``
    cpu           allocator settings, Eigen/YNNPACK dot choice      the allocator's and XLA's defaults

The sparse TopK path itself (`saejax.sae.linear`: gather decode, scatter-add backward, through the
native kernels where they are usable) is chosen by ``sae.sparse="auto"`` on CPU only
(`sparse_topk_pays`); elsewhere "auto" means the dense step.
"""

# sae.sparse="auto" takes the sparse TopK path from d_sae >= SPARSE_MIN_RATIO · k on (measured on XLA-CPU).
SPARSE_MIN_RATIO = 64


def on_cpu() -> bool:
    """Whether the default backend is XLA's CPU, where the fast paths of this package were measured."""
    import jax  # noqa: PLC0415 (the `cpu` module is imported before jax)

    return jax.default_backend() == "cpu"


def sparse_topk_pays(d_sae: int, k: int) -> bool:
    """Whether ``sae.sparse="auto"`` takes the sparse TopK path: on CPU, from d_sae >= SPARSE_MIN_RATIO · k."""
    return on_cpu() and d_sae >= SPARSE_MIN_RATIO * k
