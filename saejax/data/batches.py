"""Reading a run's batches from a source: checked, sliced per process, prepared ahead of the step.

    for step, batch in prefetch(lambda s: read_local_batch(source, s, 4096, d_in), range(first, last)):
        ...
"""

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from saejax import distributed
from saejax.errors import DataError


def check_batch(batch, step: int, source_name: str, d_in: int, d_out: int | None = None) -> None:
    """Raise DataError naming the step and source if a batch has the wrong shape or non-finite values.
    A transcoder's batch is a pair (inputs [B, d_in], targets [B, d_out]) of as many rows each."""
    if isinstance(batch, tuple):
        inputs, targets = batch
        check_batch(inputs, step, source_name, d_in)
        check_batch(targets, step, f"{source_name} (targets)", targets.shape[-1] if d_out is None else d_out)
        if targets.shape[0] != inputs.shape[0]:
            raise DataError(f"batch at step {step} from data.source={source_name!r} has {inputs.shape[0]} inputs "
                            f"but {targets.shape[0]} targets")
        return
    if batch.ndim != 2 or batch.shape[1] != d_in:
        raise DataError(
            f"batch at step {step} from data.source={source_name!r} has shape {batch.shape}; "
            f"the SAE expects [batch, {d_in}]"
        )
    finite = np.isfinite(batch)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(
            f"non-finite value {batch[row, col]} in the batch at step {step} from data.source={source_name!r} "
            f"(row {row}, column {col}); fix or filter the data"
        )


def read_batch(source, step: int, batch_size: int, d_in: int) -> np.ndarray:
    """Batch `step` of `source` [batch_size, d_in], checked; any DataError names the step and the
    source. A source that reads per process (`process_count` > 1) gives only this process's rows."""
    try:
        batch = source.batch(step, batch_size)
    except DataError as e:
        raise DataError(f"batch at step {step} from data.source={source.name!r}: {e}") from None
    check_batch(batch, step, source.name, d_in, getattr(source, "d_out", None))
    return batch


def read_local_batch(source, step: int, batch_size: int, d_in: int) -> np.ndarray:
    """This process's rows [p·B/P, (p+1)·B/P) of batch `step` (all of it with one process; of both
    halves of a transcoder's (inputs, targets))."""
    rows = read_batch(source, step, batch_size, d_in)
    if getattr(source, "process_count", 1) > 1 or jax.process_count() == 1:
        return rows  # a per-process reader already returned only this process's rows
    lo, hi = distributed.row_range(batch_size)
    return tuple(part[lo:hi] for part in rows) if isinstance(rows, tuple) else rows[lo:hi]


def read_heldout_batch(source, index: int, batch_size: int, d_in: int) -> np.ndarray:
    """Batch `index` [≤ batch_size, d_in] of the source's held-out split (a transcoder's: (inputs,
    targets)), checked."""
    batch = source.heldout_batch(index, batch_size)
    check_batch(batch, index, f"{source.name} (held out)", d_in, getattr(source, "d_out", None))
    return batch


def prefetch(fn, steps, depth: int = 2):
    """Yield (step, fn(step)) for each of `steps`, computed `depth` steps ahead on one background
    thread, so that host-side batch preparation overlaps the device's step. Errors re-raise here."""
    steps = iter(steps)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque((s, pool.submit(fn, s)) for s in itertools.islice(steps, depth))
        while pending:
            step, future = pending.popleft()
            for nxt in itertools.islice(steps, 1):
                pending.append((nxt, pool.submit(fn, nxt)))
            yield step, future.result()
