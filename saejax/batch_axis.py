"""Reductions over the batch's rows that stay global when pmap splits the batch across replicas.

Every statistic of a batch in the train step (a mean over rows, whether a latent fired anywhere,
BatchTopK's k·B-th largest activation, FVU's sums) goes through these functions. Outside
`split_over` they are the plain ``jnp`` reductions. Inside ``split_over("data")``, which
`saejax.parallel.pmap_step` enters while tracing, each replica holds an equal slice of the batch's
rows, and the functions combine the slices with ``lax.pmean`` / ``psum`` / ``pmax`` / ``all_gather``
so that every replica sees the statistic of the whole batch. The pure train step therefore computes
the same loss, gradients, counters and metrics under pmap as on one device with the whole batch;
`mean_gradients` is the data-parallel step's ``lax.pmean`` of the gradients (the identity outside pmap).

Under ``jax.jit`` over a mesh (``parallel.strategy='mesh'``) the arrays are global, no axis is set,
and XLA's partitioner inserts the same collectives itself.
"""

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from saejax.kernels import selection

_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("saejax_batch_axis", default=None)


@contextlib.contextmanager
def split_over(axis_name: str | None) -> Iterator[None]:
    """While tracing inside ``jax.pmap(..., axis_name)``: the rows are split over `axis_name`."""
    token = _AXIS.set(axis_name)
    try:
        yield
    finally:
        _AXIS.reset(token)


def axis_name() -> str | None:
    """The pmap axis the rows are split over, or None (the whole batch is here)."""
    return _AXIS.get()


def replicas() -> int:
    """How many replicas share the batch's rows (1 outside pmap); a static int."""
    name = axis_name()
    return 1 if name is None else jax.lax.axis_size(name)


def mean(x: jax.Array, axis=None) -> jax.Array:
    """jnp.mean over `axis` (which must include the rows, axis 0; None = all axes), over all replicas."""
    local = jnp.mean(x, axis=axis)
    name = axis_name()
    return local if name is None else jax.lax.pmean(local, name)


def total(x: jax.Array, axis=None) -> jax.Array:
    """jnp.sum over `axis` (including the rows), over all replicas."""
    local = jnp.sum(x, axis=axis)
    name = axis_name()
    return local if name is None else jax.lax.psum(local, name)


def any_row(x: jax.Array) -> jax.Array:
    """For x [B, F] bool: whether any row of the whole batch is True, per column. -> [F] bool."""
    local = jnp.any(x, axis=0)
    name = axis_name()
    return local if name is None else jax.lax.pmax(local.astype(jnp.int32), name).astype(bool)


def smallest(x: jax.Array) -> jax.Array:
    """The smallest element over all replicas, without gradient. -> []"""
    local = jnp.min(jax.lax.stop_gradient(x))
    name = axis_name()
    return local if name is None else jax.lax.pmin(local, name)


def kth_largest(values: jax.Array, k: int) -> jax.Array:
    """The k-th largest of the flat `values` [n] of the whole batch (k ≤ the global count).

    Under pmap: each replica's own k largest (at most all of its n), all-gathered, and the k-th
    largest of those, which is exact, since the global top k hold at most k of any replica's."""
    name = axis_name()
    local_top = selection.largest(values, k if name is None else min(k, values.shape[0]))
    if name is None:
        return local_top[-1]
    gathered = jax.lax.all_gather(local_top, name).reshape(-1)
    return selection.largest(gathered, k)[-1]


def mean_gradients(grads):
    """The card's data-parallel gradient average, ``lax.pmean`` over the replicas (identity
    outside pmap)."""
    name = axis_name()
    return grads if name is None else jax.lax.pmean(grads, name)
