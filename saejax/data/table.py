"""A small table of rows held in memory, streamed in epochs (the `digits` and `tabular` sources).

Order: the stream is the concatenation of epochs; epoch e visits all N rows in the order of a
permutation drawn from (seed, e), so batch i (positions i·B … i·B+B−1; it may straddle two epochs)
is a pure function of (seed, i) and every row is seen once per epoch.
"""

import numpy as np

from saejax.data import STREAM_EPOCH, STREAM_SAMPLE, STREAM_SPLIT, check_batch_args, check_sample_size, rng
from saejax.errors import ConfigError, DataError


def split_rows(n: int, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of a table of n rows, int64, each sorted; round(n·test_fraction)
    test rows drawn from (seed) alone."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"data.test_fraction={test_fraction} must be in [0, 1)")
    order = rng(seed, STREAM_SPLIT).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


class TableSource:
    """Rows [N, d_in] in memory, with optional labels [N] and image shape (for atom plots), and
    optionally a held-out split the training stream never visits.

    Attributes:
        name: the registry name.
        d_in: row width.
        table: float32 [N, d_in], the training rows.
        labels: int64 [N] or None.
        image_shape: (height, width) when a row is a flattened image, else None.
        test_table, test_labels: float32 [M, d_in] and int64 [M] held-out rows, or None.
        heldout_rows: M (0 without a test split).
        task: what the labels mean for `saejax.downstream`: "classification", "anomaly" (1 =
            anomaly) or None.
    """

    def __init__(self, name: str, table: np.ndarray, seed: int, labels: np.ndarray | None = None,
                 image_shape: tuple[int, int] | None = None, *, test_table: np.ndarray | None = None,
                 test_labels: np.ndarray | None = None, task: str | None = None) -> None:
        table = np.asarray(table, np.float32)
        if table.ndim != 2 or table.shape[0] == 0:
            raise DataError(f"data.source={name!r}: expected a non-empty table [n, d_in], got shape {table.shape}")
        self.name, self.seed, self.table, self.labels, self.image_shape = name, seed, table, labels, image_shape
        self.test_table = None if test_table is None else np.asarray(test_table, np.float32)
        self.test_labels, self.task = test_labels, task
        self.d_in = table.shape[1]
        self.heldout_rows = 0 if self.test_table is None else int(self.test_table.shape[0])
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """Row order of `epoch`, int64 [N] (the last two epochs are cached)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = rng(self.seed, STREAM_EPOCH, epoch).permutation(self.table.shape[0])
        return self._perms[epoch]

    def rows(self, step: int, batch_size: int) -> np.ndarray:
        """Row indices of batch `step`, int64 [batch_size]."""
        check_batch_args(step, batch_size)
        epochs, within = np.divmod(step * batch_size + np.arange(batch_size, dtype=np.int64), self.table.shape[0])
        out = np.empty(batch_size, np.int64)
        for e in np.unique(epochs):
            at = epochs == e
            out[at] = self.permutation(int(e))[within[at]]
        return out

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in]."""
        return self.table[self.rows(step, batch_size)]

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d_in] sample (without replacement when n <= N)."""
        check_sample_size(n)
        size = self.table.shape[0]
        return self.table[rng(self.seed, STREAM_SAMPLE).choice(size, size=n, replace=n > size)]

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """Rows [index·B, (index+1)·B) of the test split, float32 [<= B, d_in]."""
        check_batch_args(index, batch_size)
        if self.test_table is None:
            raise DataError(f"data.source={self.name!r} has no held-out split (data.test_fraction is 0)")
        return self.test_table[index * batch_size:(index + 1) * batch_size]
