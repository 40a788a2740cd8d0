"""The activation shard store: many ``.npy`` files plus a small JSON manifest.

A store is a folder::

    manifest.json          {"format": "saejax.shards/1", "d_in", "dtype", "rows_per_shard",
                            "total_rows", "shards": [{"file", "rows"}, ...], "stats": {...}}
    shard_000000.npy       [rows_per_shard, d_in]
    shard_000001.npy       ...                    (the last shard may be shorter)

Storage dtypes (``dtype`` in the manifest):

- ``float32``, ``float16`` (and ``float64``, accepted because ``np.save`` of NumPy's default
  dtype is the commonest first store; it only doubles the bytes read): plain ``.npy`` arrays.
- ``bfloat16``: ``.npy`` arrays of **uint16** holding the upper 16 bits of the float32 bit
  pattern (NumPy has no bfloat16, and saving ``ml_dtypes.bfloat16`` arrays writes a void dtype
  that only pickle can read back). `encode` rounds to nearest even; `decode` is exact.

Everything reads back as float32. ``stats`` holds what the trainer's activation normalisation
needs, computed in float64 over every row written: ``rows``, ``mean`` [d_in] and
``mean_sq_norm`` (E||x||²).

Writing: `ShardWriter` (append arrays of any row count; shards are cut at ``rows_per_shard``;
each file is written under a temporary name and renamed, and the manifest is written last, so a
folder without ``manifest.json`` is an unfinished store) or `write_store` (an array or an
iterable of arrays, e.g. a generator). A folder of plain ``.npy`` files without a manifest
still trains (see `saejax.data.npy`); `index_files` builds an in-memory manifest for it.

Reading: `open_shards` checks every file's header against the manifest (one DataError naming the
file); a path that is not a regular file (a FIFO, a device, a socket) is refused before it is
opened, since reading one could block forever; `read_rows` memory-maps a file only for the
duration of one read, so nothing stays mapped and resident memory stays flat while a store much
larger than RAM streams past.
"""

import dataclasses
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from saejax.errors import DataError

FORMAT = "saejax.shards/1"
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16", "float64")
_FILE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2"),
                "float64": np.dtype("<f8")}
_NPY_MAGIC = b"\x93NUMPY"
_APPEND_BLOCK_ROWS = 16384  # rows converted at a time: bounds the writer's scratch memory


# ---------------------------------------------------------------------------------------------
# Storage dtypes.


def encode(rows: np.ndarray, dtype: str) -> np.ndarray:
    """float rows [n, d] -> the file representation of `dtype` [n, d] (see module docstring)."""
    if dtype == "bfloat16":
        if rows.dtype.name == "bfloat16":  # ml_dtypes / jax arrays: already the right bits
            return np.ascontiguousarray(rows).view(np.uint16)
        bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32)
        rounded = bits + (0x7FFF + ((bits >> 16) & 1))  # round to nearest even
        rounded = np.where(np.isnan(rows), bits | 0x00400000, rounded)  # NaN stays NaN
        return (rounded >> 16).astype(np.uint16)
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the writer reports by row
        return np.ascontiguousarray(rows, dtype=_FILE_DTYPES[dtype])  # C order: the reader refuses Fortran


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """The file representation of `dtype` [n, d] -> float32 [n, d]."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def file_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype the ``.npy`` files of a store with manifest dtype `dtype` hold."""
    return _FILE_DTYPES[dtype]


# ---------------------------------------------------------------------------------------------
# The manifest.


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says. ``shards`` is a tuple of (file name relative to the store, rows).
    ``stats`` is None or {"rows": int, "mean": list [d_in], "mean_sq_norm": float}."""

    d_in: int
    dtype: str
    rows_per_shard: int
    shards: tuple[tuple[str, int], ...]
    stats: dict | None = None

    @property
    def total_rows(self) -> int:
        return sum(rows for _, rows in self.shards)

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "d_in": self.d_in, "dtype": self.dtype, "rows_per_shard": self.rows_per_shard,
            "total_rows": self.total_rows, "shards": [{"file": f, "rows": r} for f, r in self.shards],
            "stats": self.stats,
        }


def _require(ok: bool, path, message: str) -> None:
    if not ok:
        raise DataError(f"{path}: {message}")


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def require_regular_file(path: str | os.PathLike) -> None:
    """DataError naming `path` unless it is a regular file (symlinks followed): reading a FIFO or a
    device could block forever or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise DataError(f"{path}: is {kind}, not a regular file; a store holds .npy files and its manifest only")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and check ``manifest.json``; DataError naming the file and the bad field."""
    path = Path(path)
    require_regular_file(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); a manifest is JSON") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a saejax shard manifest") from None
    _require(isinstance(raw, dict) and raw.get("format") == FORMAT, path,
             f"not a saejax shard manifest (expected \"format\": \"{FORMAT}\")")
    d_in, dtype, per_shard = raw.get("d_in"), raw.get("dtype"), raw.get("rows_per_shard")
    _require(isinstance(d_in, int) and d_in > 0, path, f"d_in must be a positive integer, got {d_in!r}")
    _require(dtype in DTYPES, path, f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    _require(isinstance(per_shard, int) and per_shard > 0, path,
             f"rows_per_shard must be a positive integer, got {per_shard!r}")
    shards = raw.get("shards")
    _require(isinstance(shards, list), path, "shards must be a list of {\"file\", \"rows\"}")
    parsed = []
    for i, entry in enumerate(shards):
        ok = isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("rows"), int)
        _require(ok and entry["rows"] >= 0, path, f"shards[{i}] must be {{\"file\": str, \"rows\": int >= 0}}")
        _require(not os.path.isabs(entry["file"]) and ".." not in Path(entry["file"]).parts, path,
                 f"shards[{i}].file={entry['file']!r} must be a path inside the store")
        parsed.append((entry["file"], entry["rows"]))
    manifest = Manifest(d_in, dtype, per_shard, tuple(parsed), raw.get("stats"))
    _require(raw.get("total_rows") == manifest.total_rows, path,
             f"total_rows={raw.get('total_rows')!r} disagrees with the sum of shards[].rows ({manifest.total_rows})")
    stats = manifest.stats
    if stats is not None:
        _check_stats(path, stats, d_in, manifest.total_rows)
    return manifest


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_stats(path, stats, d_in: int, total_rows: int) -> None:
    """The manifest's "stats" block: {"rows": int <= total_rows, "mean": d_in numbers,
    "mean_sq_norm": number > 0}."""
    _require(isinstance(stats, dict), path, "stats must be an object {\"rows\", \"mean\", \"mean_sq_norm\"}")
    rows, mean, msn = stats.get("rows"), stats.get("mean"), stats.get("mean_sq_norm")
    _require(isinstance(rows, int) and not isinstance(rows, bool) and 0 < rows <= total_rows, path,
             f"stats.rows must be an integer in [1, total_rows={total_rows}], got {rows!r}")
    _require(isinstance(mean, list) and all(_is_number(v) for v in mean), path, "stats.mean must be a list of numbers")
    _require(len(mean) == d_in, path, f"stats.mean has {len(mean)} numbers, d_in is {d_in}")
    _require(_is_number(msn) and msn > 0, path, f"stats.mean_sq_norm must be a number > 0, got {msn!r}")


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``directory/manifest.json`` atomically (temporary file, then rename)."""
    path = Path(directory) / MANIFEST
    atomic_write(path, lambda fh: fh.write(json.dumps(manifest.to_json(), indent=1).encode() + b"\n"))
    return path


def atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file of this process, renamed to `path` when whole (processes
    writing the same folder never see each other's half-written files); the temporary file is removed
    when writing fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Statistics.


class RunningStats:
    """Mean [d] and mean squared norm of every row added, accumulated in float64."""

    def __init__(self, d_in: int) -> None:
        self.rows = 0
        self.sum = np.zeros(d_in, np.float64)
        self.sq_norm_sum = 0.0

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.rows += rows.shape[0]
        self.sum += rows.sum(axis=0)
        self.sq_norm_sum += float(np.sum(np.square(rows)))

    def as_dict(self) -> dict | None:
        if self.rows == 0:
            return None
        return {"rows": self.rows, "mean": (self.sum / self.rows).tolist(),
                "mean_sq_norm": self.sq_norm_sum / self.rows}


# ---------------------------------------------------------------------------------------------
# Writing.


class ShardWriter:
    """Append activations [n, d_in] of any n; shards of ``rows_per_shard`` rows are written as they
    fill, the last (short) one and the manifest at `close` (or the end of a ``with`` block).

    Rows holding NaN/Inf are refused (DataError naming the append call and row): a store never
    holds garbage. Refuses a folder that already holds a manifest unless ``overwrite=True``.
    """

    def __init__(self, directory: str | os.PathLike, d_in: int, dtype: str = "float32",
                 rows_per_shard: int = 65536, overwrite: bool = False, resume: bool = False) -> None:
        if dtype not in DTYPES:
            raise DataError(f"shard dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if d_in < 1 or rows_per_shard < 1:
            raise DataError(f"d_in={d_in} and rows_per_shard={rows_per_shard} must be >= 1")
        self.directory = Path(directory)
        if (self.directory / MANIFEST).exists() and not overwrite:
            raise DataError(f"{self.directory}: already holds a store ({MANIFEST}); pass overwrite=True "
                            "or choose a new folder")
        self.directory.mkdir(parents=True, exist_ok=True)
        if overwrite:
            (self.directory / MANIFEST).unlink(missing_ok=True)
            for old in self.directory.glob("shard_*.npy"):
                old.unlink()
        self.d_in, self.dtype, self.rows_per_shard = d_in, dtype, rows_per_shard
        self.stats = RunningStats(d_in)
        self._shards: list[tuple[str, int]] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._appends = 0
        self._closed = False
        if resume:
            self._adopt_existing_shards()

    def _adopt_existing_shards(self) -> None:
        """Continue an unfinished store (no manifest yet): take over its complete shard files in
        order, their rows counted into the statistics again."""
        for path in sorted(self.directory.glob("shard_*.npy")):
            if path.name != f"shard_{len(self._shards):06d}.npy":
                raise DataError(f"{path}: unexpected shard name while resuming (expected "
                                f"shard_{len(self._shards):06d}.npy); remove the folder to start over")
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
            if rows.ndim != 2 or rows.shape[1] != self.d_in:
                raise DataError(f"{path}: shape {rows.shape} does not fit d_in={self.d_in}")
            for start in range(0, rows.shape[0], _APPEND_BLOCK_ROWS):
                self.stats.add(decode(np.asarray(rows[start:start + _APPEND_BLOCK_ROWS]), self.dtype))
            self._shards.append((path.name, int(rows.shape[0])))

    @property
    def pending_rows(self) -> int:
        """Rows appended but not yet in a shard file."""
        return self._pending_rows

    @property
    def rows_written(self) -> int:
        """Rows in complete shard files (not counting rows still pending)."""
        return sum(rows for _, rows in self._shards)

    def flush(self) -> None:
        """Write every pending row now, as one shard (shorter than rows_per_shard if fewer are
        pending): lets a caller cut shards where it can resume."""
        if self._pending_rows:
            self._flush(self._pending_rows)

    def append(self, rows: np.ndarray) -> None:
        """Add rows [n, d_in] (any float dtype, or ml_dtypes bfloat16; a memory map is fine: it is
        read in blocks)."""
        if self._closed:
            raise DataError(f"{self.directory}: the writer is closed")
        rows = np.asanyarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.d_in:
            raise DataError(f"append #{self._appends} to {self.directory}: expected rows [n, {self.d_in}], "
                            f"got shape {rows.shape}")
        block = max(1, min(self.rows_per_shard, _APPEND_BLOCK_ROWS))
        for start in range(0, rows.shape[0], block):
            self._append_block(rows[start:start + block], start)
        self._appends += 1

    def _append_block(self, rows: np.ndarray, first_row: int) -> None:
        stored = encode(rows, self.dtype)
        decoded = decode(stored, self.dtype)  # what training will read
        finite = np.isfinite(decoded).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            cause = ("holds NaN/Inf" if not np.isfinite(np.asarray(rows[row], np.float64)).all()
                     else f"overflows {self.dtype} (largest |value| {np.abs(np.asarray(rows[row], np.float64)).max():.4g})")
            raise DataError(f"append #{self._appends} to {self.directory}: row {first_row + row} {cause}; "
                            "filter or rescale the activations before writing them")
        self.stats.add(decoded)
        self._pending.append(stored)
        self._pending_rows += stored.shape[0]
        while self._pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        name = f"shard_{len(self._shards):06d}.npy"
        atomic_write(self.directory / name, lambda fh: np.save(fh, block[:n], allow_pickle=False))
        self._shards.append((name, n))
        rest = block[n:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_rows = rest.shape[0]

    def close(self) -> Manifest:
        """Write the last shard and the manifest; returns the manifest."""
        if not self._closed:
            if self._pending_rows:
                self._flush(self._pending_rows)
            self._closed = True
            if not self._shards:
                raise DataError(f"{self.directory}: no rows were written; a store needs at least one row")
            write_manifest(self.directory, self.manifest)
        return self.manifest

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.d_in, self.dtype, self.rows_per_shard, tuple(self._shards), self.stats.as_dict())

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()


def write_store(directory: str | os.PathLike, data: np.ndarray | Iterable[np.ndarray], *,
                dtype: str = "float32", rows_per_shard: int = 65536, overwrite: bool = False) -> Manifest:
    """Write an array [n, d_in], or an iterable of arrays [n_i, d_in] (a generator streaming
    activations), as a store in `directory`; returns its manifest."""
    blocks = iter([data]) if isinstance(data, np.ndarray) else iter(data)
    first = next(blocks, None)
    if first is None:
        raise DataError(f"{directory}: nothing to write (the iterable was empty)")
    first = np.asarray(first)
    if first.ndim != 2:
        raise DataError(f"{directory}: expected arrays [n, d_in], got shape {first.shape}")
    with ShardWriter(directory, first.shape[1], dtype, rows_per_shard, overwrite) as writer:
        writer.append(first)
        for block in blocks:
            writer.append(block)
    return writer.manifest


# ---------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One shard's path, rows, the dtype its bytes hold and where its data starts."""

    path: str
    rows: int
    d_in: int
    file_dtype: np.dtype
    offset: int


def read_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file, from its header (the data is mapped, not
    read); DataError naming `path` when it is missing, not a regular file, not a .npy file, or truncated."""
    require_regular_file(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if magic != _NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        message = str(e).splitlines()[0]
        if "mmap length" in message or "larger than" in message or "cannot reshape" in message:
            raise DataError(f"{path}: truncated (the file is shorter than its header promises)") from None
        raise DataError(f"{path}: not a readable .npy file ({message})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({str(e).splitlines()[0] or type(e).__name__})") from None
    if not isinstance(array, np.memmap):  # zero-size arrays load as plain arrays
        return tuple(array.shape), array.dtype, 0
    if array.dtype.hasobject:
        raise DataError(f"{path}: holds Python objects; only numeric arrays can be read (no pickle)")
    if not array.flags.c_contiguous and array.ndim > 1:
        raise DataError(f"{path}: is stored in Fortran order; save it C-contiguous (np.ascontiguousarray)")
    shape, dtype, offset = tuple(array.shape), array.dtype, int(array.offset)
    del array
    return shape, dtype, offset


def check_shard(path: str, d_in: int | None, dtype: str | None) -> ShardFile:
    """Header of one shard, checked: 2-D, width `d_in` and storage `dtype` when given."""
    shape, found, offset = read_header(path)
    if len(shape) != 2:
        raise DataError(f"{path}: expected a 2-D array [n, d_in], got shape {shape}")
    if shape[1] == 0:
        raise DataError(f"{path}: has shape {shape}, zero columns")
    if d_in is not None and shape[1] != d_in:
        raise DataError(f"{path}: width {shape[1]} disagrees with the store's d_in={d_in}")
    if dtype is not None and found != file_dtype(dtype):
        raise DataError(f"{path}: dtype {found} disagrees with the store's dtype {dtype!r} "
                        f"(files must hold {file_dtype(dtype)})")
    return ShardFile(path, shape[0], shape[1], found, offset)


def open_shards(directory: str | os.PathLike, manifest: Manifest) -> list[ShardFile]:
    """Every shard the manifest lists, its header checked against the manifest (rows, d_in, dtype)."""
    files = []
    for name, rows in manifest.shards:
        shard = check_shard(os.path.join(directory, name), manifest.d_in, manifest.dtype)
        if shard.rows != rows:
            raise DataError(f"{shard.path}: holds {shard.rows} rows, the manifest says {rows}")
        files.append(shard)
    return files


def infer_dtype(path: str, found: np.dtype) -> str:
    """The storage dtype name of a file without a manifest (bfloat16 stores need one)."""
    for name, candidate in _FILE_DTYPES.items():
        if found == candidate and name != "bfloat16":
            return name
    if found == np.dtype("<u2"):
        raise DataError(f"{path}: holds uint16; a bfloat16 store needs its {MANIFEST} (dtype \"bfloat16\")")
    raise DataError(f"{path}: dtype {found} is not a stored activation dtype (float32, float16 or float64)")


def index_files(paths: list[str]) -> tuple[Manifest, list[ShardFile]]:
    """A manifest (without stats) for plain ``.npy`` files of one width and dtype, and their headers.
    File names in the manifest are the paths as given."""
    files = [check_shard(p, None, None) for p in paths]
    first = files[0]
    dtype = infer_dtype(paths[0], first.file_dtype)
    for f in files[1:]:
        if f.d_in != first.d_in:
            raise DataError(f"{f.path}: width {f.d_in} disagrees with {first.path}: width {first.d_in}")
        if f.file_dtype != first.file_dtype:
            raise DataError(f"{f.path}: dtype {f.file_dtype} disagrees with {first.path}: dtype {first.file_dtype}; "
                            "write all files of a store in one dtype")
    per_shard = max(f.rows for f in files) or 1
    return Manifest(first.d_in, dtype, per_shard, tuple((f.path, f.rows) for f in files)), files


def read_rows(shard: ShardFile, start: int, stop: int, take: np.ndarray | None = None) -> np.ndarray:
    """Rows [start, stop) of a shard in its file dtype (or only rows start + take, `take` sorted
    ascending), through a memory map that is closed again before returning."""
    mm = np.memmap(shard.path, dtype=shard.file_dtype, mode="r", offset=shard.offset,
                   shape=(shard.rows, shard.d_in))
    block = mm[start:stop]
    out = np.array(block if take is None else block[take])
    del mm, block  # unmaps: the pages stop counting as this process's memory
    return out
