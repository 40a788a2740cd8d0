"""Kernels of our own for XLA's CPU backend, compiled from C++ (native.cc) on first use and called
through the XLA FFI (``jax.ffi``), each over XLA's intra-op threads: where XLA-CPU is slow and a few
lines of C++ are not.

    top_k_indices     the k largest entries of each row, lax.top_k's indices exactly (XLA's TopK
                      runs one thread over every entry)
    gather_combine    Σ_j a[b, j] · table[index[b, j]]: the sparse TopK decode        [B, d]
    gather_dot        table[index[b, j]] · u[b]: its gradient in the coefficients     [B, k]
    scatter_outer     Σ a[b, j] · u[b] into row index[b, j]: its gradient in the table [F, d]
                      (XLA materialises the B·k rows of d these three move: 192 MiB at batch
                      4096, k 32, d 384, per use)

The shared library is built once per machine with the C++ compiler found ($CXX, c++, g++, clang++)
against the FFI headers jaxlib ships, into $SAEJAX_NATIVE_CACHE (default
$XDG_CACHE_HOME/saejax/native, ~/.cache/saejax/native), named by a hash of the source, jaxlib's
version, the compiler, its flags and the CPU's features, so another machine or version builds its
own. SAEJAX_NATIVE=off turns the kernels off. Without a compiler, or when the build fails, the
callers take their XLA paths (`available` says why, logged once): the results are the same.

The kernels are used only where a single device runs the program (``jax.device_count() == 1``): the
partitioner of a multi-device program does not know them and would gather their operands whole.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("native.cc")
# FFI target name -> the handler's symbol in the library
TARGETS = {"saejax_top_k": "SaejaxTopK", "saejax_gather_combine": "SaejaxGatherCombine",
           "saejax_gather_dot": "SaejaxGatherDot", "saejax_scatter_outer": "SaejaxScatterOuter"}
TOP_K_TARGET = "saejax_top_k"
DISABLE_ENV = "SAEJAX_NATIVE"
CACHE_ENV = "SAEJAX_NATIVE_CACHE"
BUILD_TIMEOUT_S = 300


def cache_dir() -> Path:
    """Where built libraries are kept: $SAEJAX_NATIVE_CACHE, else $XDG_CACHE_HOME/saejax/native."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "saejax" / "native"


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else the first of c++, g++, clang++ on PATH; None if none."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def compile_flags() -> list[str]:
    """-O3, and on x86-64 the build machine's own instruction set (the CPU's features key the cache)."""
    native_isa = ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else []
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-w", *native_isa]


def cpu_features() -> str:
    """The CPU's feature flags (Linux's /proc/cpuinfo), or the machine's name elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.machine())
    except OSError:
        return platform.machine()


def library_path(cxx: str) -> Path:
    """The cache file of the library built by `cxx` from SOURCE for this jaxlib and CPU."""
    import jaxlib  # noqa: PLC0415

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), cxx.encode(), " ".join(compile_flags()).encode(),
                 cpu_features().encode()):
        key.update(part)
    return cache_dir() / f"native-{key.hexdigest()[:16]}.so"


def build(cxx: str, target: Path) -> None:
    """Compile SOURCE into `target`, written whole or not at all (a concurrent build of the same file
    by another process is harmless). Raises RuntimeError with the compiler's first error line."""
    import jax  # noqa: PLC0415

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        command = [cxx, *compile_flags(), f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", partial]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
            raise RuntimeError(f"{cxx} failed on {SOURCE.name}: {(errors or ['no output'])[0].strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@functools.cache
def load() -> str | None:
    """Build (once per machine) and register the kernels; None when they are ready, else why not."""
    if os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "false", "no"):
        return f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found ($CXX, c++, g++, clang++)"
    import ctypes  # noqa: PLC0415

    import jax  # noqa: PLC0415

    try:
        path = library_path(cxx)
        if not path.exists():
            build(cxx, path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


@functools.cache
def available() -> bool:
    """Whether the native kernels are built and registered (builds them on the first call). When
    not, says why once through absl logging; callers then take their XLA paths."""
    reason = load()
    if reason is not None:
        from absl import logging  # noqa: PLC0415

        logging.warning("saejax: native CPU kernels off (%s); using XLA's paths", reason)
    return reason is None


def usable() -> bool:
    """Whether a program traced now may call the native kernels: XLA's CPU backend, one device in
    all, and the kernels built."""
    import jax  # noqa: PLC0415

    return jax.default_backend() == "cpu" and jax.device_count() == 1 and available()


def require() -> None:
    """Build and register the kernels if not yet done; RuntimeError saying why when they cannot be."""
    if not available():
        raise RuntimeError(f"saejax's native CPU kernels are unavailable: {load()}")


def top_k_indices(x, k: int, offset=None):
    """The indices ``lax.top_k(x + offset, k)`` returns (descending, ties to the lower index), from
    the native kernel. x [..., F] float32, offset [F] float32 or None -> [..., k] int32. No
    gradient (indices); callers gather the values. Callers check `usable()` first."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    require()
    width = x.shape[-1]
    if not 1 <= k <= width:
        raise ValueError(f"top_k: k must be in [1, {width}] for rows of {width} entries, got {k}")
    call = jax.ffi.ffi_call(TOP_K_TARGET, jax.ShapeDtypeStruct((*x.shape[:-1], k), jnp.int32),
                            vmap_method="sequential")
    has_offset = offset is not None
    operand = jax.lax.stop_gradient(x.astype(jnp.float32))
    shift = jax.lax.stop_gradient(offset.astype(jnp.float32)) if has_offset else jnp.zeros((width,), jnp.float32)
    return call(operand, shift, k=np.int64(k), has_offset=has_offset)


def _pairs_call(target: str, result_shape: tuple, *operands):
    """The FFI call `target` on float32 operands (int32 indices last), returning float32 `result_shape`."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    require()
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, jnp.float32), vmap_method="sequential")
    *floats, index = operands
    return call(*(jnp.asarray(f, jnp.float32) for f in floats), jnp.asarray(index, jnp.int32))


def gather_combine(table, a, index):
    """Σ_j a[b, j] · table[index[b, j]]: table [F, d], a [B, k], index [B, k] int -> [B, d] float32.
    No autodiff of its own (`saejax.sae.linear` gives the sparse decode its gradient)."""
    return _pairs_call("saejax_gather_combine", (*index.shape[:-1], table.shape[1]), table, a, index)


def gather_dot(table, u, index):
    """table[index[b, j]] · u[b]: table [F, d], u [B, d], index [B, k] int -> [B, k] float32."""
    return _pairs_call("saejax_gather_dot", index.shape, table, u, index)


def scatter_outer(a, u, index, rows: int):
    """Σ_{(b, j): index[b, j] = i} a[b, j] · u[b] for each i in [0, rows): a [B, k], u [B, d],
    index [B, k] int -> [rows, d] float32, each row summed in (b, j) order."""
    return _pairs_call("saejax_scatter_outer", (rows, u.shape[-1]), a, u, index)
