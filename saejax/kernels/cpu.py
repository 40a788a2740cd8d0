"""Settings for XLA's CPU backend: the process's allocator and which library runs a step's dots.

`tune_malloc`: each jitted CPU step allocates and frees scratch buffers of hundreds of MiB ([B, d_sae]
activations and their gradients). glibc serves blocks that large with mmap and returns them with
munmap, so every step would page-fault its scratch memory in again. `tune_malloc` keeps freed memory
in the process instead (one arena, no mmap for large blocks, never trim: what ``GLIBC_TUNABLES=
glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`` does, from inside
Python). The price: the process keeps its peak heap size until it exits, which a training run does
anyway. The trim threshold is mallopt's -1, which glibc reads as SIZE_MAX; a positive threshold lets
glibc return any free block past it at the top of the heap, which a step with more scratch than that
faults in again on every step. Off on GPU and TPU hosts (`accelerator_host`), where it was never measured.

`step_compiler_options`: XLA-CPU hands float32 dots to YNNPACK by default. A dense step's [B, d] x
[d, F], [B, F] x [F, d] and [B, d] x [F, d]^T products run faster in XLA's Eigen dots, while the
sparse TopK step's row-chunked encoder product and bfloat16 dots (the CPU's bf16 instructions) run
faster in YNNPACK; so dense float32 steps compile with YNNPACK's reductions only (XLA's default minus
its individual dots) and the rest keep XLA's default. SAEJAX_CPU_DOTS=ynnpack keeps XLA's default
everywhere, =eigen takes Eigen everywhere.

This module imports nothing heavy (the entry point calls `tune_malloc` first); the measurements behind
each choice are in BUILD_NOTES.md, "Performance".
"""

import ctypes
import ctypes.util
import functools
import glob
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameter numbers
DISABLE_ENV = "SAEJAX_NO_MALLOC_TUNING"
# Device files of NVIDIA GPUs and of TPUs (v4 and later: /dev/accel*, v2/v3: /dev/vfio).
ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
CPU_DOTS_ENV = "SAEJAX_CPU_DOTS"
CPU_DOTS_CHOICES = ("auto", "ynnpack", "eigen")
EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}  # XLA's default minus its dots
_done = False


def accelerator_host(environ=os.environ, device_globs=ACCELERATOR_DEVICES) -> bool:
    """Whether JAX will run on a GPU or TPU here, decided before JAX is imported: JAX_PLATFORMS names
    a platform other than cpu, or (JAX_PLATFORMS unset) a GPU or TPU device file exists. The CPU
    settings of this module were measured on a CPU-only host and stay off on the others."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
    if platforms:
        return platforms[0] != "cpu"
    return any(glob.glob(pattern) for pattern in device_globs)


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc on Linux only; a no-op elsewhere, on GPU and TPU hosts
    (`accelerator_host`), or when the environment sets SAEJAX_NO_MALLOC_TUNING=1). Returns whether
    the allocator settings were applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or _env_set(DISABLE_ENV) or accelerator_host():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)]  # -1: SIZE_MAX
    _done = all(mallopt(param, value) == 1 for param, value in settings)
    return _done


def _env_set(name: str) -> bool:
    """Whether the environment switch `name` is on (set to anything but "" or "0")."""
    return os.environ.get(name, "") not in ("", "0")


def step_compiler_options(sparse: bool, dtype: str = "float32") -> dict[str, str]:
    """XLA compile options for a train step on the default backend (module docstring): on CPU, a
    dense (`sparse` False) float32 step sends its dots to Eigen; a sparse TopK step, or one whose
    matmuls run in another `dtype` (bfloat16), keeps XLA's default. SAEJAX_CPU_DOTS (auto | ynnpack |
    eigen) overrides the choice. {} off CPU, and where this jaxlib does not take the option. Raises
    ValueError naming SAEJAX_CPU_DOTS on another value."""
    choice = os.environ.get(CPU_DOTS_ENV, "") or "auto"
    if choice not in CPU_DOTS_CHOICES:
        raise ValueError(f"{CPU_DOTS_ENV}={choice!r}: expected one of {', '.join(CPU_DOTS_CHOICES)}")
    eigen = choice == "eigen" or (choice == "auto" and not sparse and str(dtype) == "float32")
    return dict(EIGEN_DOTS) if eigen and _eigen_dots_available() else {}


@functools.cache
def _eigen_dots_available() -> bool:
    """Whether the default backend is a CPU whose XLA compiles with EIGEN_DOTS (one tiny compile)."""
    import jax  # noqa: PLC0415 (kept out of the module's import, see its docstring)
    import jax.numpy as jnp  # noqa: PLC0415

    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(jnp.matmul).lower(jnp.zeros((8, 8)), jnp.zeros((8, 8))).compile(compiler_options=EIGEN_DOTS)
    except Exception:  # noqa: BLE001 (an XLA that renamed or dropped the option: keep its default)
        return False
    return True
