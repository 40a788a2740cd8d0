"""Process-level settings that make XLA's CPU steps faster; called by the training entry point.

Each jitted CPU step allocates and frees scratch buffers of hundreds of MiB ([B, d_sae] activations
and their gradients). glibc serves blocks that large with mmap and returns them with munmap, so every
step page-faults its scratch memory in again: 6-11 % of a dense step on the 2-core benchmark machine
(FIELD_NOTES.md). `tune_malloc` keeps freed memory in the process instead (one arena, no mmap for
large blocks, no trimming), which is what ``GLIBC_TUNABLES=glibc.malloc.arena_max=1:
glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`` does, but from inside Python. The price: the
process keeps its peak heap size until it exits, which a training run does anyway.

The trim threshold is mallopt's -1, which glibc reads as SIZE_MAX (never trim). The largest positive
int, 2**31 - 1, let glibc return any free block past 2 GiB at the top of the heap: a step whose
scratch passes 2 GiB (a sparse TopK step at d_sae 32768, batch 4096, with AuxK: 3.3 GiB) faulted
470-640k pages in again on every step, 1.8-2.5 GiB (BUILD_NOTES, "Performance suite").
"""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameter numbers
DISABLE_ENV = "SAEJAX_NO_MALLOC_TUNING"
_done = False


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc on Linux only; a no-op elsewhere, or when the
    environment sets SAEJAX_NO_MALLOC_TUNING=1). Returns whether the settings were applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
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
