"""Process-level settings that make XLA's CPU steps faster; called by the training entry point.

Each jitted CPU step allocates and frees scratch buffers of hundreds of MiB ([B, d_sae] activations
and their gradients). glibc serves blocks that large with mmap and returns them with munmap, so every
step page-faults its scratch memory in again: 6-11 % of a dense step on the 2-core benchmark machine.
`tune_malloc` keeps freed memory in the process instead (one arena, no mmap for large blocks, no
trimming), which is what ``GLIBC_TUNABLES=glibc.malloc.arena_max=1:
glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`` does, but from inside Python. The price: the
process keeps its peak heap size until it exits, which a training run does anyway.

The trim threshold is mallopt's -1, which glibc reads as SIZE_MAX (never trim). The largest positive
int, 2**31 - 1, let glibc return any free block past 2 GiB at the top of the heap: a step whose
scratch passes 2 GiB (a sparse TopK step at d_sae 32768, batch 4096, with AuxK: 3.3 GiB) faulted
470-640k pages in again on every step, 1.8-2.5 GiB (BUILD_NOTES, "Performance suite").

Transparent huge pages: where the kernel gives 2 MiB pages only to memory that asks for them
(``/sys/kernel/mm/transparent_hugepage/enabled`` reads ``[madvise]``, as on the benchmark machine),
numpy already asks for its large arrays (4 MiB and up), XLA does not. `tune_malloc` therefore grows the heap
once by a large, untouched block advised ``MADV_HUGEPAGE`` and frees it (it stays in the heap, see
above): the scratch XLA allocates later comes from that range and is faulted in as 2 MiB pages, which
made the dense relu step ~6 % faster there (BUILD_NOTES, "Performance suite"). The block is address
space only; pages count towards the process's memory once written, as before. It is skipped where the kernel
does not take the advice, under strict overcommit (``vm.overcommit_memory`` 2, where the block would
be charged), and when the environment sets SAEJAX_NO_HUGE_PAGES=1.

Which library runs the dots: XLA-CPU hands f32 dots to YNNPACK by default (its fusion types
"individual dot" and "reduce"). For the dense steps' [B, d] x [d, F], [B, F] x [F, d] and
[B, d] x [F, d]^T products, XLA's Eigen dots were faster on the benchmark machine (0.17-0.18 s
against 0.20-0.21 s at 4096 x 512 x 8192; the dense relu step 4 % faster, side by side in one
process), while the sparse TopK step's row-chunked encoder matmul runs faster in YNNPACK, and so do
bfloat16 dots, which YNNPACK runs with the CPU's bf16 instructions and Eigen does not (the bf16 relu
step at 4096 x 512 x 8192: 0.78 s in YNNPACK, 0.94 s in Eigen; BUILD_NOTES, "Performance suite").
`step_compiler_options` therefore compiles dense float32 steps with YNNPACK's reductions only (XLA's
default minus the individual dots) and leaves sparse TopK and bf16 steps at XLA's default; SAEJAX_CPU_DOTS=ynnpack
keeps XLA's default everywhere, =eigen takes Eigen everywhere.
"""

import ctypes
import ctypes.util
import functools
import glob
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameter numbers
_MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20
HUGE_PAGE_RESERVE_CAP = 64 << 30
DISABLE_ENV = "SAEJAX_NO_MALLOC_TUNING"
# Device files of NVIDIA GPUs and of TPUs (v4 and later: /dev/accel*, v2/v3: /dev/vfio).
ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
NO_HUGE_PAGES_ENV = "SAEJAX_NO_HUGE_PAGES"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
OVERCOMMIT = "/proc/sys/vm/overcommit_memory"
CPU_DOTS_ENV = "SAEJAX_CPU_DOTS"
CPU_DOTS_CHOICES = ("auto", "ynnpack", "eigen")
EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}  # XLA's default minus its dots
_done = False
huge_page_bytes = 0  # the heap range `tune_malloc` advised for huge pages (0: none)


def accelerator_host(environ=os.environ, device_globs=ACCELERATOR_DEVICES) -> bool:
    """Whether JAX will run on a GPU or TPU here, decided before JAX is imported: JAX_PLATFORMS names
    a platform other than cpu, or (JAX_PLATFORMS unset) a GPU or TPU device file exists. The CPU
    settings of this module were measured on a CPU-only host and stay off on the others."""
    platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
    if platforms:
        return platforms[0] != "cpu"
    return any(glob.glob(pattern) for pattern in device_globs)


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse and back the heap's future large blocks with huge pages
    (glibc on Linux only; a no-op elsewhere, on GPU and TPU hosts (`accelerator_host`), or when the
    environment sets SAEJAX_NO_MALLOC_TUNING=1).
    Returns whether the allocator settings were applied; `huge_page_bytes` says how much of the heap
    was advised for huge pages (module docstring)."""
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
    if _done and wants_huge_page_advice():
        global huge_page_bytes
        huge_page_bytes = reserve_huge_page_heap(libc, huge_page_reserve_bytes())
    return _done


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _env_set(name: str) -> bool:
    """Whether the environment switch `name` is on (set to anything but "" or "0")."""
    return os.environ.get(name, "") not in ("", "0")


def kernel_takes_huge_page_advice() -> bool:
    """True where advising huge pages changes anything and costs nothing: the kernel hands them out
    on request only ("[madvise]"; under "[always]" the heap gets them anyway, under "[never]" not at
    all) and overcommit is not strict."""
    return "[madvise]" in _read(THP_ENABLED) and _read(OVERCOMMIT).strip() in ("0", "1")


def wants_huge_page_advice() -> bool:
    """`kernel_takes_huge_page_advice`, unless SAEJAX_NO_HUGE_PAGES is on."""
    return not _env_set(NO_HUGE_PAGES_ENV) and kernel_takes_huge_page_advice()


def huge_page_reserve_bytes() -> int:
    """Half the physical memory, at most HUGE_PAGE_RESERVE_CAP (address space, not memory in use)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
    return min(total // 2, HUGE_PAGE_RESERVE_CAP)


def reserve_huge_page_heap(libc: ctypes.CDLL, nbytes: int) -> int:
    """Grow the heap by an untouched block of ~`nbytes`, advise its whole 2 MiB pages MADV_HUGEPAGE and
    free it into the heap's top (which `tune_malloc`'s settings never trim), so that later large
    allocations are served from huge pages. Returns the bytes advised (0 if none were)."""
    if nbytes < 2 * HUGE_PAGE:
        return 0
    try:
        malloc, free, madvise = libc.malloc, libc.free, libc.madvise
    except AttributeError:
        return 0
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    madvise.restype, madvise.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    block = malloc(nbytes)  # never written: no page is faulted in
    if not block:
        return 0
    start = -(-block // HUGE_PAGE) * HUGE_PAGE
    length = (block + nbytes - start) // HUGE_PAGE * HUGE_PAGE
    advised = length if madvise(ctypes.c_void_p(start), length, _MADV_HUGEPAGE) == 0 else 0
    free(ctypes.c_void_p(block))
    return advised


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
    import jax  # noqa: PLC0415 (this module is imported before jax, for tune_malloc)
    import jax.numpy as jnp  # noqa: PLC0415

    if jax.default_backend() != "cpu":
        return False
    try:
        jax.jit(jnp.matmul).lower(jnp.zeros((8, 8)), jnp.zeros((8, 8))).compile(compiler_options=EIGEN_DOTS)
    except Exception:  # noqa: BLE001 (an XLA that renamed or dropped the option: keep its default)
        return False
    return True


COMPILATION_CACHE_ENV = "SAEJAX_COMPILATION_CACHE"


def compilation_cache_dir() -> str | None:
    """Where `enable_compilation_cache` keeps compiled programs: $SAEJAX_COMPILATION_CACHE if set
    ("off" or "" turns the cache off: None), else $XDG_CACHE_HOME/saejax/xla (~/.cache/saejax/xla)."""
    chosen = os.environ.get(COMPILATION_CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "false") else chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "saejax", "xla")


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for every program, however quick to compile, so
    that a second run of the same command (a resumed run, a sweep's next point, a test) loads its
    train step, init and evaluation instead of compiling them. Returns the folder, or None when
    switched off. Call before the first compile."""
    import jax  # noqa: PLC0415

    folder = compilation_cache_dir()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def run_then_exit(run, *args, **kwargs) -> None:
    """Call `run(*args, **kwargs)` (a command's whole life, e.g. absl's ``app.run(main)``) and end
    the process the way ``sys.exit`` would — other threads joined, atexit handlers run, stdout and
    stderr flushed, the same exit status and message — but without the interpreter's teardown of
    every module and of XLA's client, which takes 0.3-0.45 s after a CPU training run. Exceptions
    other than SystemExit propagate as usual (a traceback, then a normal exit)."""
    import atexit  # noqa: PLC0415
    import threading  # noqa: PLC0415

    try:
        run(*args, **kwargs)
        code = None
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 (private: what the interpreter itself runs at exit)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
