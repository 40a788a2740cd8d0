"""Rows of ``.npy`` files, shuffled per epoch.

``c.data.path`` is a glob (``**`` allowed) of ``.npy`` files, each a 2-D float array
[n_i, d_in] (float16 / float32 / float64; returned as float32). Files are memory-mapped
(``np.load(mmap_mode='r', allow_pickle=False)``) and never read whole: a batch reads only
its own rows. The files, in sorted path order, form one table of ``N = sum n_i`` rows.

Order: the training stream is the concatenation of epochs; epoch e visits all N rows in
the order of a permutation drawn from (seed, e). Batch ``step`` of size B holds stream
positions ``step * B .. step * B + B - 1``, so every row is seen exactly once per epoch
and a batch may straddle two epochs. Permutations are cached (two epochs, a pure cache:
results never depend on it); each costs 8 bytes per row.

A later issue replaces this with a sharded store with manifests; this reader stays small.
"""

import glob
import os

import numpy as np

from saejax.data import (
    STREAM_EPOCH,
    STREAM_SAMPLE,
    check_batch_args,
    check_sample_size,
    rng,
)
from saejax.errors import ConfigError, DataError

_CACHED_EPOCHS = 2
_NPY_MAGIC = b"\x93NUMPY"


def find_files(pattern: str) -> list[str]:
    """Sorted files matching the glob `pattern`; DataError if none, or one is a folder."""
    if not pattern:
        raise ConfigError("data.path is empty; set it to a glob of .npy files, e.g. 'a/*.npy'")
    paths = sorted(glob.glob(pattern, recursive=True))
    if not paths:
        raise DataError(f"data.path={pattern!r}: no files match this glob")
    for path in paths:
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; data.path must match .npy files ('dir/*.npy')")
    return paths


def _first_line(err: Exception) -> str:
    """The first line of an exception's message (its type name when empty)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def open_array(path: str) -> np.ndarray:
    """Memory-map one file and check it is a 2-D float array; DataError naming `path`."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({_first_line(err)})") from None
    if magic != _NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy file ({_first_line(err)})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [n, d_in], got shape {array.shape}")
    if array.shape[1] == 0:
        raise DataError(f"{path}: has shape {array.shape}, zero columns")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: dtype {array.dtype} is not a float type (float16/float32)")
    return array


def check_widths(paths: list[str], arrays: list[np.ndarray]) -> int:
    """The common width d_in; DataError naming both files when two disagree."""
    d_in = arrays[0].shape[1]
    for path, array in zip(paths[1:], arrays[1:]):
        if array.shape[1] != d_in:
            raise DataError(
                f"{path}: width {array.shape[1]} disagrees with {paths[0]}: width {d_in}"
            )
    return d_in


def gather(arrays: list[np.ndarray], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Global rows `rows` [n] of the concatenated files as float32 [n, d_in].

    `offsets` [n_files + 1] holds each file's first global row, then N.
    """
    out = np.empty((rows.size, arrays[0].shape[1]), dtype=np.float32)
    which = np.searchsorted(offsets, rows, side="right") - 1
    for f in np.unique(which):
        at = np.flatnonzero(which == f)
        local = rows[at] - offsets[f]
        order = np.argsort(local, kind="stable")  # ascending reads from the memory map
        out[at[order]] = arrays[f][local[order]]
    return out


class NpySource:
    """Shuffled rows of a set of ``.npy`` files; see the module docstring.

    Attributes:
        name: ``'npy'``.
        d_in: the common width of the files.
        paths: the matched files, sorted.
        n_rows: total number of rows N.
    """

    name = "npy"

    def __init__(self, path: str, seed: int) -> None:
        self.seed = seed
        self.paths = find_files(path)
        self._arrays = [open_array(p) for p in self.paths]
        self.d_in = check_widths(self.paths, self._arrays)
        sizes = [a.shape[0] for a in self._arrays]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self._offsets[-1])
        if self.n_rows == 0:
            raise DataError(f"data.path={path!r}: the matched files hold no rows")
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of `epoch`, int64 [N], a function of (seed, epoch) only."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = rng(self.seed, STREAM_EPOCH, epoch).permutation(self.n_rows)
            if len(self._perms) >= _CACHED_EPOCHS:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = perm
        return perm

    def rows(self, step: int, batch_size: int) -> np.ndarray:
        """Global row indices of batch `step`, int64 [batch_size]."""
        check_batch_args(step, batch_size)
        position = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epoch, within = np.divmod(position, self.n_rows)
        rows = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epoch):
            at = epoch == e
            rows[at] = self.permutation(int(e))[within[at]]
        return rows

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in]: stream positions step*B .. step*B + B - 1."""
        return self._read(self.rows(step, batch_size))

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d_in] sample (without replacement when n <= N)."""
        check_sample_size(n)
        gen = rng(self.seed, STREAM_SAMPLE)
        return self._read(gen.choice(self.n_rows, size=n, replace=n > self.n_rows))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Global rows [n] as float32 [n, d_in]; DataError naming the file and row of the
        first NaN/inf (or value beyond float32 range)."""
        batch = gather(self._arrays, self._offsets, rows)
        finite = np.isfinite(batch).all(axis=1)
        if finite.all():
            return batch
        row = int(rows[np.argmin(finite)])
        f = int(np.searchsorted(self._offsets, row, side="right")) - 1
        raise DataError(
            f"{self.paths[f]}: row {row - int(self._offsets[f])} holds non-finite values "
            "(NaN/inf, or beyond float32 range)"
        )
