"""The ``npy`` source: a shard store (or any folder of ``.npy`` files) streamed in a fixed order.

``c.data.path`` is one of

- a store folder holding ``manifest.json`` (written by `saejax.data.store.ShardWriter`),
- a glob of ``.npy`` files (``**`` allowed); when the files sit in one folder with a
  ``manifest.json`` it is used for validation and statistics, otherwise the files are indexed
  on open (float32 or float16, one width),
- the path of a ``manifest.json``.

On open every file's header is checked (shape, dtype, row count against the manifest): one
DataError naming the file. Rows are read in the order of `saejax.data.order.StreamOrder`
(global chunk permutation + shuffle windows), so batch i is a pure function of (seed, i) and the
store. A process (``process_index`` of ``process_count``) returns only its slice of each global
batch, rows [p·B/P, (p+1)·B/P), and reads only those rows from disk; the slices of all
processes together are the global batch, each row once.

Bad rows. Each window is checked for NaN/Inf as it is read. ``on_bad_rows='error'`` (default)
stops with a DataError naming the file and row when a batch that contains such a row is asked
for (not earlier). ``'skip'`` drops each bad row and puts in its place the next good row of the
same chunk, cyclically (a choice that depends on the data only, so batch shapes, every other
row's position and the batches of any number of processes stay as they were: the order stays a
pure function of (seed, i)); `skipped_rows` counts them (per process) and each window that had any
is logged once with the first file and row. `sample` drops bad rows under 'skip' (logged).
"""

import glob
import os
import threading
from collections import OrderedDict

import numpy as np
from absl import logging

from saejax.data import STREAM_SAMPLE, check_batch_args, check_sample_size, process_rows, rng
from saejax.data import store as store_lib
from saejax.data.order import StreamOrder
from saejax.errors import ConfigError, DataError

BAD_ROW_MODES = ("error", "skip")
_CACHED_WINDOWS = 2


def find_files(pattern: str) -> list[str]:
    """Sorted ``.npy`` files matching the glob `pattern` (a manifest.json it matches is ignored);
    DataError if none, or one is a folder."""
    if not pattern:
        raise ConfigError("data.path is empty; set it to a store folder or a glob of .npy files, e.g. 'acts/*.npy'")
    paths = [p for p in sorted(glob.glob(pattern, recursive=True)) if os.path.basename(p) != store_lib.MANIFEST]
    if not paths:
        raise DataError(f"data.path={pattern!r}: no files match this glob")
    for path in paths:
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; data.path must match .npy files ('dir/*.npy') or be a store folder")
    return paths


def resolve(path: str) -> tuple[store_lib.Manifest, list[store_lib.ShardFile], str]:
    """(manifest, checked shard files, description) for any accepted form of ``data.path``."""
    if path and os.path.isdir(path):
        manifest_path = os.path.join(path, store_lib.MANIFEST)
        if not os.path.exists(manifest_path):
            raise DataError(f"data.path={path!r} is a folder without {store_lib.MANIFEST}; pass a glob of its "
                            f".npy files instead ('{os.path.join(path, '*.npy')}')")
        return _from_manifest(manifest_path)
    if path and os.path.basename(path) == store_lib.MANIFEST and not glob.has_magic(path):
        if not os.path.exists(path):
            raise DataError(f"data.path={path!r}: file is missing")
        return _from_manifest(path)
    paths = find_files(path)
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    manifest_path = os.path.join(folders.pop(), store_lib.MANIFEST) if len(folders) == 1 else None
    if manifest_path and os.path.exists(manifest_path):
        return _subset_of_manifest(manifest_path, paths)
    manifest, files = store_lib.index_files(paths)
    return manifest, files, f"{len(files)} .npy files matching {path!r} (no manifest)"


def _from_manifest(manifest_path: str):
    manifest = store_lib.read_manifest(manifest_path)
    files = store_lib.open_shards(os.path.dirname(manifest_path), manifest)
    return manifest, files, f"store {os.path.dirname(manifest_path)!r} ({len(files)} shards)"


def _subset_of_manifest(manifest_path: str, paths: list[str]):
    """The matched files of a store, in manifest order, each checked against its manifest entry."""
    manifest = store_lib.read_manifest(manifest_path)
    folder = os.path.dirname(manifest_path)
    listed = {os.path.abspath(os.path.join(folder, name)): (name, rows) for name, rows in manifest.shards}
    for p in paths:
        if os.path.abspath(p) not in listed:
            raise DataError(f"{p}: not listed in {manifest_path}; rewrite the store or remove the file")
    wanted = {os.path.abspath(p) for p in paths}
    entries = tuple(entry for entry in manifest.shards if os.path.abspath(os.path.join(folder, entry[0])) in wanted)
    subset = store_lib.Manifest(manifest.d_in, manifest.dtype, manifest.rows_per_shard, entries, manifest.stats)
    files = store_lib.open_shards(folder, subset)
    return subset, files, f"{len(files)} of the {len(manifest.shards)} shards of store {folder!r}"


class _Window:
    """One shuffle window's rows owned by this process: stored rows [n, d_in] in stream-position
    order, their positions int64 [n] ascending, their global row ids int64 [n], and which of them
    hold NaN/Inf, bool [n] (always all False under 'skip': those rows were already replaced)."""

    def __init__(self, rows: np.ndarray, positions: np.ndarray, row_ids: np.ndarray, bad: np.ndarray) -> None:
        self.rows, self.positions, self.row_ids, self.bad = rows, positions, row_ids, bad


class NpySource:
    """Rows of a shard store in the order of `StreamOrder`; see the module docstring.

    Attributes:
        name: ``'npy'``.
        d_in: the store's width.
        dtype: storage dtype name (float32, float16, bfloat16).
        files: the checked shard files (`saejax.data.store.ShardFile`).
        n_rows: rows in the training stream (per epoch): all of the store's but the held-out ones.
        heldout_rows: rows of the held-out chunks (`saejax.data.order.heldout_chunks`), which no
            training batch reads; `heldout_batch` reads them.
        stats: the manifest's normalisation statistics ({"rows", "mean", "mean_sq_norm"}) or None.
        description: what `data.path` resolved to, for logs.
        skipped_rows: rows dropped so far under ``on_bad_rows='skip'``.
    """

    name = "npy"

    def __init__(self, path: str, seed: int, *, chunk_rows: int = 512, shuffle_rows: int = 32768,
                 on_bad_rows: str = "error", process_index: int = 0, process_count: int = 1,
                 heldout_fraction: float = 0.0, heldout_max_rows: int = 0) -> None:
        if on_bad_rows not in BAD_ROW_MODES:
            raise ConfigError(f"data.on_bad_rows: unknown {on_bad_rows!r}; valid: {', '.join(BAD_ROW_MODES)}")
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process_index={process_index} must be in [0, process_count={process_count})")
        self.seed, self.on_bad_rows = seed, on_bad_rows
        self.process_index, self.process_count = process_index, process_count
        manifest, self.files, self.description = resolve(path)
        self.d_in, self.dtype, self.stats = manifest.d_in, manifest.dtype, manifest.stats
        if manifest.total_rows == 0:
            raise DataError(f"data.path={path!r}: the files hold no rows")
        self._offsets = np.concatenate([[0], np.cumsum([f.rows for f in self.files])]).astype(np.int64)
        self.order = StreamOrder([f.rows for f in self.files], seed, chunk_rows, shuffle_rows,
                                 heldout_fraction, heldout_max_rows)
        self.n_rows = self.order.n_rows
        self._heldout_ids = self.order.chunk_row_ids(self.order.heldout)
        self.heldout_rows = int(self._heldout_ids.size)
        self.skipped_rows = 0
        self._windows: OrderedDict[tuple, _Window] = OrderedDict()
        self._lock = threading.Lock()

    # -- positions ----------------------------------------------------------------------------

    def slice_size(self, batch_size: int) -> int:
        """Rows this process gets of a global batch of `batch_size`."""
        lo, hi = process_rows(batch_size, self.process_index, self.process_count)
        return hi - lo

    def positions(self, step: int, batch_size: int) -> np.ndarray:
        """Stream positions of this process's slice of global batch `step`, int64 [B / P]."""
        check_batch_args(step, batch_size)
        lo, hi = process_rows(batch_size, self.process_index, self.process_count)
        return step * batch_size + np.arange(lo, hi, dtype=np.int64)

    def rows(self, step: int, batch_size: int) -> np.ndarray:
        """Global row ids of this process's slice of batch `step`, int64 [B / P]."""
        return self.order.rows_at(self.positions(step, batch_size))

    # -- reading ------------------------------------------------------------------------------

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [B / P, d_in]: this process's slice of global batch `step`."""
        positions = self.positions(step, batch_size)
        epochs, windows = self.order.locate(positions)
        out = np.empty((positions.size, self.d_in), np.float32)
        with self._lock:
            for e, w in sorted(set(zip(epochs.tolist(), windows.tolist()))):
                at = np.flatnonzero((epochs == e) & (windows == w))
                window = self._window(e, w, batch_size)
                index = np.searchsorted(window.positions, positions[at])
                if window.bad[index].any():
                    path, row = self.where(int(window.row_ids[index[np.argmax(window.bad[index])]]))
                    raise DataError(f"{path}: row {row} holds non-finite values (NaN/inf); fix the data, or set "
                                    "data.on_bad_rows=skip to drop such rows")
                out[at] = store_lib.decode(window.rows[index], self.dtype)
        return out

    def _window(self, epoch: int, window: int, batch_size: int) -> _Window:
        key = (epoch, window, batch_size)
        cached = self._windows.get(key)
        if cached is None:
            cached = self._load_window(epoch, window, batch_size)
            self._windows[key] = cached
            if len(self._windows) > _CACHED_WINDOWS:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return cached

    def _load_window(self, epoch: int, window: int, batch_size: int) -> _Window:
        """Read the rows of one window that this process's slices use, chunk by chunk."""
        first, stop = self.order.window_span(epoch, window)
        positions = np.arange(first, stop, dtype=np.int64)
        size = self.slice_size(batch_size)
        positions = positions[(positions % batch_size) // size == self.process_index]
        row_ids = self.order.window_rows(epoch, window)[positions - first]
        rows, bad = self._gather(row_ids)
        if bad.any() and self.on_bad_rows == "skip":
            rows[bad] = self._replacements(row_ids[bad])
            self.skipped_rows += int(bad.sum())
            path, row = min(self.where(int(r)) for r in row_ids[bad])
            logging.warning("data.on_bad_rows=skip: replaced %d rows holding NaN/inf in a shuffle window "
                            "(first: %s: row %d); %d so far", bad.sum(), path, row, self.skipped_rows)
            bad[:] = False
        return _Window(rows, positions, row_ids, bad)

    def _gather(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global rows in their file dtype [n, d_in] and which hold NaN/Inf [n], read chunk by chunk
        (in ascending order within a chunk; one contiguous read when a chunk is wanted whole)."""
        rows = np.empty((row_ids.size, self.d_in), store_lib.file_dtype(self.dtype))
        bad = np.zeros(row_ids.size, bool)
        chunk_of = np.searchsorted(self.order.chunk_start, row_ids, side="right") - 1
        for chunk in np.unique(chunk_of):
            at = np.flatnonzero(chunk_of == chunk)
            at = at[np.argsort(row_ids[at], kind="stable")]
            shard = int(np.searchsorted(self._offsets, row_ids[at[0]], side="right")) - 1
            local = row_ids[at] - self._offsets[shard]
            contiguous = bool(np.all(np.diff(local) == 1))  # one process: whole chunks (no repeats)
            block = store_lib.read_rows(self.files[shard], int(local[0]), int(local[-1]) + 1,
                                        None if contiguous else local - local[0])
            rows[at] = block
            bad[at] = ~np.isfinite(store_lib.decode(block, self.dtype)).all(axis=1)
        return rows, bad

    def where(self, row_id: int) -> tuple[str, int]:
        """(file path, row within the file) of a global row id."""
        shard = int(np.searchsorted(self._offsets, row_id, side="right")) - 1
        return self.files[shard].path, int(row_id - self._offsets[shard])

    def _replacements(self, bad_ids: np.ndarray) -> np.ndarray:
        """For each bad global row, the next good row of the same chunk (cyclically), in the file
        dtype [n, d_in]. Depends on the data only, so every process makes the same choice."""
        out = np.empty((bad_ids.size, self.d_in), store_lib.file_dtype(self.dtype))
        chunk_of = np.searchsorted(self.order.chunk_start, bad_ids, side="right") - 1
        for chunk in np.unique(chunk_of):
            start, size = int(self.order.chunk_start[chunk]), int(self.order.chunk_rows[chunk])
            shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
            local = start - int(self._offsets[shard])
            block = store_lib.read_rows(self.files[shard], local, local + size)
            good = np.isfinite(store_lib.decode(block, self.dtype)).all(axis=1)
            if not good.any():
                raise DataError(f"{self.files[shard].path}: rows {local}..{local + size - 1} (one chunk) all hold "
                                "NaN/inf; nothing to put in their place under data.on_bad_rows=skip")
            for i in np.flatnonzero(chunk_of == chunk):
                after = (bad_ids[i] - start + 1 + np.arange(size)) % size
                out[i] = block[after[np.argmax(good[after])]]
        return out

    def read(self, row_ids: np.ndarray) -> np.ndarray:
        """Any global rows as float32 [n, d_in], bad rows raising (or dropped under 'skip')."""
        row_ids = np.asarray(row_ids, np.int64)
        stored, bad = self._gather(row_ids)
        out = store_lib.decode(stored, self.dtype)
        if bad.any():
            path, row = min(self.where(int(r)) for r in row_ids[bad])
            if self.on_bad_rows == "error":
                raise DataError(f"{path}: row {row} holds non-finite values (NaN/inf); fix the data, or set "
                                "data.on_bad_rows=skip to drop such rows")
            logging.warning("data.on_bad_rows=skip: dropped %d rows holding NaN/inf from a sample (first: %s: row %d)",
                            bad.sum(), path, row)
            out = out[~bad]
        return out

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [<= n, d_in] sample of the training rows (without replacement
        when n <= N), for initialisation; under 'skip' its bad rows are dropped."""
        check_sample_size(n)
        gen = rng(self.seed, STREAM_SAMPLE)
        picked = gen.choice(self.n_rows, size=n, replace=n > self.n_rows)
        if self.heldout_rows:  # position i of the training chunks' rows, in chunk order
            picked = self.order.chunk_row_ids(self.order.train_chunks)[picked]
        return self.read(picked)

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """Rows [index·B, (index+1)·B) of the held-out chunks (in chunk order), float32 [<= B, d_in];
        bad rows raise, or are dropped under 'skip'."""
        check_batch_args(index, batch_size)
        return self.read(self._heldout_ids[index * batch_size:(index + 1) * batch_size])

