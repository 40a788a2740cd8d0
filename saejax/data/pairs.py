"""A transcoder's training data: (input, target) pairs, kept side by side in one row.

A transcoder reads one activation (e.g. the MLP's input, ``mlp_in``) and reconstructs another (the
MLP's output, ``mlp_out``) of the same token. Both are stored in one row, input columns first:

    row = [input (d_in columns) | target (d_out columns)]         # [d_in + d_out]

so every source of rows serves pairs unchanged: a shard store harvested with a target site
(`saejax.harvest.harvest`'s ``target_site``), or the streamed model source capturing both points in
one forward pass. Whatever a source does with rows (its order, shuffle windows, held-out split, bad
rows, the rows of each process) it does with both halves of a pair at once, so row i of the targets
is the target of row i of the inputs by construction. `PairSource` wraps such a source and hands out
``(inputs [B, d_in], targets [B, d_out])``, which the train step and the loss terms take as
``target`` (`saejax.step.make_train_step`).

    source = PairSource(make_source(...), input_columns=384)
    inputs, targets = source.batch(step, 1024)              # [1024, 384], [1024, 384]
"""

import numpy as np

from saejax.errors import DataError


def split_rows(rows: np.ndarray, input_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, d_in + d_out] -> (inputs [n, d_in], targets [n, d_out]), both C-contiguous float32."""
    if rows.ndim != 2 or not 0 < input_columns < rows.shape[1]:
        raise DataError(f"rows of shape {rows.shape} do not hold an input of {input_columns} columns and a target")
    rows = np.asarray(rows, np.float32)
    return np.ascontiguousarray(rows[:, :input_columns]), np.ascontiguousarray(rows[:, input_columns:])


def join_rows(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(inputs [n, d_in], targets [n, d_out]) -> the stored rows [n, d_in + d_out]."""
    if inputs.shape[0] != targets.shape[0]:
        raise DataError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets: pairs must align row by row")
    return np.concatenate([inputs, targets], axis=1)


class PairSource:
    """The rows of `rows` (a `saejax.data.Source` whose rows hold pairs) as (inputs, targets).

    Attributes: name (the wrapped source's), d_in (input columns), d_out (target columns), rows (the
    wrapped source). `stats` is None: a pair's halves need their own normalisation scales, which
    `saejax.step.init_train_state` takes from the sample. Anything else (heldout_rows, n_rows,
    description, skipped_rows, process_count, ...) is the wrapped source's.
    """

    stats = None

    def __init__(self, rows, input_columns: int) -> None:
        if not 0 < input_columns < rows.d_in:
            raise DataError(f"rows of data.source={rows.name!r} have {rows.d_in} columns: no input of "
                            f"{input_columns} columns and a target")
        self.rows, self.d_in, self.d_out = rows, input_columns, rows.d_in - input_columns

    @property
    def name(self) -> str:
        return self.rows.name

    def __getattr__(self, attribute: str):
        if attribute == "rows":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(attribute)
        return getattr(self.rows, attribute)

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `step` of the wrapped source as (inputs [B, d_in], targets [B, d_out])."""
        return split_rows(self.rows.batch(step, batch_size), self.d_in)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The wrapped source's sample of n rows as (inputs [n, d_in], targets [n, d_out])."""
        return split_rows(self.rows.sample(n), self.d_in)

    def heldout_batch(self, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out batch `index` of the wrapped source as (inputs [<= B, d_in], targets [<= B, d_out])."""
        rows = self.rows.heldout_batch(index, batch_size)
        if rows.shape[0] == 0:
            return np.zeros((0, self.d_in), np.float32), np.zeros((0, self.d_out), np.float32)
        return split_rows(rows, self.d_in)
