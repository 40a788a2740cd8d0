"""A streamed source's rows written through to a folder and read back: the model computes each fill
once, and every later run of the same stream (another SAE, learning rate or seed of the SAE) reads
the fills instead of running the model.

    store = FillStore("/data/minilm_l3", identity)       # data.path, with data.source=model
    rows = store.rows("fill_0000012_003", compute)       # the file's rows, or compute() written through

The folder holds::

    stream.json                 the stream's identity: what makes its rows (model, hook points, context
                                length, seed, fill sizes, shards, forward batch, texts)
    fill_0000012_003.npy        shard 3 of fill 12, float32 [R, d_in] ([R, P, d_in] for several hook
                                points; bfloat16 streams: uint16 bit patterns, as in a store), rows
                                as a harvest of the shard's texts writes them
    heldout_000004.npy          chunk 4 of the held-out split

Every file is written under a temporary name of its own process and renamed, so a run killed at any
moment leaves whole files only, and processes sharing the folder never see each other's half-written
files. A file that cannot be read back (damaged) is computed and written again, with a warning.

The ``fill_*.npy`` files are plain ``.npy`` arrays, so one hook point's fills also train as a store:
``data.source=npy`` with ``data.path='DIR/fill_*.npy'`` (`saejax.data.npy`; its own order and held-out
chunks).
"""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import logging

from saejax.data.store import atomic_write
from saejax.errors import ConfigError, DataError

IDENTITY = "stream.json"
ADDED_FIELDS = {"dtype": "float32"}  # identity fields newer than some folders: what their absence meant


def texts_digest(texts: list[str]) -> str:
    """sha256 of `texts` (each text's UTF-8 bytes, NUL-separated): identifies a corpus by its first fill."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def fill_file(fill: int, shard: int) -> str:
    """The file name of shard `shard` of fill `fill`."""
    return f"fill_{fill:07d}_{shard:03d}"


def heldout_file(chunk: int) -> str:
    """The file name of held-out chunk `chunk`."""
    return f"heldout_{chunk:06d}"


class FillStore:
    """The folder `directory` of one stream's rows (see the module docstring).

    Attributes:
        directory: the folder.
        identity: what makes the stream's rows (JSON-able dict); the folder's stream.json must equal it.
        read, written: files read back and files written by this process.
    """

    def __init__(self, directory: str | os.PathLike, identity: dict, dtype: np.dtype = np.dtype(np.float32)) -> None:
        """dtype: the files' NumPy dtype (float32, or uint16 for bfloat16 bit patterns)."""
        self.directory, self.identity, self.dtype = Path(directory), identity, np.dtype(dtype)
        self.read = self.written = 0
        self._checked = False

    def check(self) -> None:
        """Write stream.json into a new folder, or ConfigError naming data.path and the differing fields when
        the folder holds another stream's rows."""
        if self._checked:
            return
        path = self.directory / IDENTITY
        if path.exists():
            try:
                held = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: cannot be read as a stream's identity ({e})") from None
            held = {**ADDED_FIELDS, **held}
            differing = [f"{k}: {held.get(k)!r} here, {v!r} wanted" for k, v in self.identity.items()
                         if held.get(k) != v]
            if differing:
                raise ConfigError(f"data.path={str(self.directory)!r} holds the rows of another stream "
                                  f"({'; '.join(differing)}); use another data.path")
        else:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DataError(f"data.path={str(self.directory)!r}: cannot create the folder "
                                f"({e.strerror or e})") from None
            self._write(path, lambda fh: fh.write(json.dumps(self.identity, indent=1).encode() + b"\n"))
        self._checked = True

    def rows(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The rows of file `name` (without .npy) read back, or compute() written there and returned."""
        self.check()
        path = self.directory / f"{name}.npy"
        if path.exists():
            try:
                rows = np.load(path, allow_pickle=False)
                if rows.dtype == self.dtype and rows.ndim >= 2:
                    self.read += 1
                    return rows
                problem = f"holds {rows.dtype} {rows.shape}, not {self.dtype} rows"
            except (OSError, ValueError, EOFError) as e:
                problem = f"cannot be read ({e})"
            logging.warning("%s %s; computing its rows again", path, problem)
        rows = np.ascontiguousarray(compute(), self.dtype)
        self._write(path, lambda fh: np.save(fh, rows, allow_pickle=False))
        self.written += 1
        return rows

    @staticmethod
    def _write(path: Path, write) -> None:
        """`saejax.data.store.atomic_write`; DataError naming the file when it fails."""
        try:
            atomic_write(path, write)
        except OSError as e:
            raise DataError(f"{path}: cannot be written ({e.strerror or e})") from None
