"""The order in which a store's rows are read: a pure function of (seed, shard sizes, sizes below).

Rows are numbered globally (shards in manifest order, rows in file order: N in all). The
training stream is the concatenation of epochs of N positions each; position q lands on a row as
follows:

1. *Chunks.* Every shard is cut into chunks of ``chunk_rows`` consecutive rows (a shard's last
   chunk may be shorter). Chunks are the unit of disk reads: contiguous, so reading is sequential.
2. *Global chunk permutation.* Epoch e visits all K chunks in the order of a permutation drawn from
   (seed, e), so consecutive data mixes across the whole store and every epoch differs.
3. *Shuffle windows.* The permuted chunks are grouped ``window_chunks = shuffle_rows // chunk_rows``
   at a time; a window's rows (all its chunks' rows, concatenated) are permuted by a second
   permutation drawn from (seed, e, window). This is the in-memory shuffle buffer: rows of one
   batch come from `window_chunks` chunks scattered over the store.

Held-out chunks (`heldout_chunks`) are left out of every epoch: the stream is made of the other
("training") chunks alone, and evaluation reads the held-out ones.

Epoch e therefore covers every training row exactly once, and batch i of size B (positions i·B … i·B+B−1)
is a function of (seed, i, B) and the shard sizes only: a resumed run sees exactly the batches an
uninterrupted run would have, and changing the number of processes reading does not change them.
"""

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from saejax.data import STREAM_EPOCH, STREAM_HELDOUT_CHUNKS, STREAM_WINDOW, rng
from saejax.errors import ConfigError

_CACHED_EPOCHS = 2


def heldout_chunks(chunk_rows: np.ndarray, fraction: float, max_rows: int) -> np.ndarray:
    """Ids of the chunks kept out of training, ascending int64 [H]: the first floor(fraction·K) of
    a fixed random order of the K chunks (seed 0, so every run on a store holds out the same rows),
    cut after the chunk that brings them to `max_rows` rows. Empty when fraction·K < 1.

    chunk_rows: int64 [K], rows in each chunk.
    """
    order = rng(0, STREAM_HELDOUT_CHUNKS).permutation(chunk_rows.size)[:int(fraction * chunk_rows.size)]
    enough = int(np.searchsorted(np.cumsum(chunk_rows[order]), max_rows, side="left")) + 1
    return np.sort(order[:enough])


class StreamOrder:
    """Chunk and window layout of a store, and the rows at any stream positions.

    Attributes:
        n_rows: N, rows per epoch (the training chunks' rows).
        chunk_start: int64 [K], global first row of each chunk (all chunks, held out or not).
        chunk_rows: int64 [K], rows in each chunk.
        train_chunks: int64 [K - H], ascending ids of the chunks the stream visits.
        heldout: int64 [H], ascending ids of the held-out chunks.
        window_chunks: chunks per shuffle window.
    """

    def __init__(self, shard_rows: Sequence[int], seed: int, chunk_rows: int, shuffle_rows: int,
                 heldout_fraction: float = 0.0, heldout_max_rows: int = 0) -> None:
        if chunk_rows < 1:
            raise ConfigError(f"data.chunk_rows must be >= 1, got {chunk_rows}")
        if shuffle_rows < chunk_rows:
            raise ConfigError(f"data.shuffle_rows={shuffle_rows} must be >= data.chunk_rows={chunk_rows}")
        self.seed = seed
        sizes = np.asarray(shard_rows, np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        starts, lengths = [], []
        for first, size in zip(offsets[:-1], sizes):
            local = np.arange(0, size, chunk_rows, dtype=np.int64)
            starts.append(first + local)
            lengths.append(np.minimum(chunk_rows, size - local))
        self.chunk_start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.chunk_rows = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.heldout = heldout_chunks(self.chunk_rows, heldout_fraction, heldout_max_rows)
        self.train_chunks = np.setdiff1d(np.arange(self.chunk_rows.size), self.heldout)
        self.n_rows = int(self.chunk_rows[self.train_chunks].sum())
        self.window_chunks = max(1, shuffle_rows // chunk_rows)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk order int64 [K], window starts int64 [n_windows + 1] as positions within the epoch)."""
        layout = self._epochs.get(epoch)
        if layout is None:
            order = self.train_chunks[rng(self.seed, STREAM_EPOCH, epoch).permutation(self.train_chunks.size)]
            sizes = self.chunk_rows[order]
            bounds = np.arange(0, order.size, self.window_chunks)
            window_sizes = np.add.reduceat(sizes, bounds) if order.size else np.zeros(0, np.int64)
            layout = (order, np.concatenate([[0], np.cumsum(window_sizes)]).astype(np.int64))
            self._epochs[epoch] = layout
            if len(self._epochs) > _CACHED_EPOCHS:
                self._epochs.popitem(last=False)
        return layout

    def chunk_row_ids(self, chunks: np.ndarray) -> np.ndarray:
        """Global row ids of `chunks` [n], each chunk's rows in file order, int64."""
        return np.concatenate([np.arange(s, s + n) for s, n in zip(self.chunk_start[chunks], self.chunk_rows[chunks])]
                              or [np.zeros(0, np.int64)])

    def window_chunk_ids(self, epoch: int, window: int) -> np.ndarray:
        """The chunks of one window, int64 [<= window_chunks], in their permuted order."""
        order, _ = self.epoch_layout(epoch)
        return order[window * self.window_chunks:(window + 1) * self.window_chunks]

    def window_rows(self, epoch: int, window: int) -> np.ndarray:
        """Global row ids of the window's positions, in stream order, int64 [window length]."""
        rows = self.chunk_row_ids(self.window_chunk_ids(epoch, window))
        return rows[rng(self.seed, STREAM_WINDOW, epoch, window).permutation(rows.size)]

    def window_span(self, epoch: int, window: int) -> tuple[int, int]:
        """[first, last + 1) stream positions of a window."""
        _, starts = self.epoch_layout(epoch)
        base = epoch * self.n_rows
        return base + int(starts[window]), base + int(starts[window + 1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, window) of each stream position, two int64 arrays shaped like `positions`."""
        epochs, within = np.divmod(np.asarray(positions, np.int64), self.n_rows)
        windows = np.empty_like(epochs)
        for e in np.unique(epochs):
            at = epochs == e
            _, starts = self.epoch_layout(int(e))
            windows[at] = np.searchsorted(starts, within[at], side="right") - 1
        return epochs, windows

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Global row ids at stream positions (a reference implementation; the reader caches windows)."""
        positions = np.asarray(positions, np.int64)
        epochs, windows = self.locate(positions)
        out = np.empty_like(positions)
        for e, w in sorted(set(zip(epochs.tolist(), windows.tolist()))):
            at = (epochs == e) & (windows == w)
            first, _ = self.window_span(e, w)
            out[at] = self.window_rows(e, w)[positions[at] - first]
        return out
