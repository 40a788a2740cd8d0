"""Exact top-k when the latents are split across a mesh's "model" axis: two stages in shard_map.

Under ``parallel.strategy='mesh'`` the pre-activations [B, d_sae] are sharded (rows over "data",
latents over "model"). Left to itself, XLA's partitioner all-gathers the whole [B, d_sae] array onto
every device before a top-k, which undoes the memory saving of sharding the latents. Inside
``split_over(mesh)`` (entered by `saejax.parallel.jit_mesh_step` while tracing) `topk` and
`kth_largest` instead work in two stages under ``jax.shard_map``:

1. each device takes the top k of its own latents (k values per row, or per shard for BatchTopK);
2. these candidates (k per device, not d_sae / M) are all-gathered over "model" ("data" too for
   BatchTopK) and the top k of the candidates is taken.

The result is exact (the global top k hold at most k of any shard's entries), ties go to the lower
latent index as on one device, and each device then writes only its own latents' entries.
Outside `split_over`, or with a model axis of 1, these are `selection.top_k` (``lax.top_k``, blockwise).
"""

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from saejax.kernels import selection

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("saejax_latent_mesh", default=None)
DATA, MODEL = "data", "model"


@contextlib.contextmanager
def split_over(mesh: Mesh | None) -> Iterator[None]:
    """While tracing a step jitted over `mesh`: latents are split over its "model" axis."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def sharded_mesh() -> Mesh | None:
    """The mesh whose "model" axis (of size > 1) splits the latents, or None."""
    mesh = _MESH.get()
    return mesh if mesh is not None and mesh.shape[MODEL] > 1 else None


def topk(pre_acts: jax.Array, k: int, fill) -> jax.Array:
    """Each row's k largest entries of `pre_acts` [B, F] passed through `fill(values)` (elementwise),
    zeros elsewhere: [B, F]. Two-stage under a model-sharded mesh (see module docstring)."""
    mesh = sharded_mesh()
    if mesh is None:
        if selection.radix_is_faster(pre_acts.shape[1], k):
            return jnp.where(selection.top_k_mask(pre_acts, k), fill(pre_acts), 0.0).astype(pre_acts.dtype)
        values, indices = selection.top_k(pre_acts, k)
        rows = jnp.arange(pre_acts.shape[0])[:, None]
        return jnp.zeros_like(pre_acts).at[rows, indices].set(fill(values))

    def shard(x):  # x: [B / D, F / M], this device's rows and latents
        width = x.shape[1]
        values, indices = jax.lax.top_k(x, min(k, width))
        offset = jax.lax.axis_index(MODEL) * width
        values = jax.lax.all_gather(values, MODEL, axis=1, tiled=True)  # [B / D, M·k], lower latents first
        indices = jax.lax.all_gather(indices + offset, MODEL, axis=1, tiled=True)
        values, picked = jax.lax.top_k(values, k)
        local = jnp.take_along_axis(indices, picked, axis=1) - offset  # in [0, width) when it is ours
        mine = (local >= 0) & (local < width)
        rows = jnp.arange(x.shape[0])[:, None]
        # entries of other shards go to a dropped out-of-range column
        return jnp.zeros_like(x).at[rows, jnp.where(mine, local, width)].set(fill(values), mode="drop")

    return jax.shard_map(shard, mesh=mesh, in_specs=P(DATA, MODEL), out_specs=P(DATA, MODEL))(pre_acts)


def kth_largest(values: jax.Array, n: int) -> jax.Array:
    """The n-th largest entry of the whole [B, F] array (n ≤ B·F), without gradient. Two-stage under a
    model-sharded mesh: each shard's n largest, all-gathered over both axes, then the n-th."""
    mesh = sharded_mesh()
    if mesh is None:
        return selection.largest(values.reshape(-1), n)[-1]

    def shard(x):
        local = selection.largest(x.reshape(-1), min(n, x.size))
        gathered = jax.lax.all_gather(local, (DATA, MODEL), tiled=True)
        nth = selection.largest(gathered, n)[-1]
        return jax.lax.pmax(nth, (DATA, MODEL))  # equal on every device already; now provably so

    return jax.shard_map(shard, mesh=mesh, in_specs=P(DATA, MODEL), out_specs=P())(jax.lax.stop_gradient(values))
