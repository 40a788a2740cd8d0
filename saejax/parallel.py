"""Many devices: a ("data", "model") mesh for the one pure train step.

``parallel.strategy='mesh'`` with ``parallel.mesh_shape="D,M"`` runs `step.make_train_step`'s pure
function under `jax.jit` over ``jax.sharding.Mesh(devices[D, M], ("data", "model"))``:

- the batch [B, d_in] is split over "data" (B must divide by D);
- every latent-indexed param (W_enc [d_in, d_sae] by columns, b_enc, W_dec [d_sae, d_in] by rows,
  thresholds, gated biases; `SAE.latent_axes` says which axis) is split over "model" (d_sae must
  divide by M); b_dec and scalars are replicated;
- the optimizer state is sharded like its params (`optax.tree_utils.tree_map_params`), and the
  [d_sae] counters (dead latents, AuxK) like the latents.

The step is written for the global batch, so XLA's partitioner inserts the collectives: gradients
are reduced over "data", and batch statistics (KL's mean activation, BatchTopK's threshold, the
dead-latent counters, AuxK) are global, not per shard. TopK over sharded latents stays exact (the
partitioner gathers what top-k needs). The mesh is built with ``jax.sharding.Mesh`` (Auto axes):
explicit-axis meshes reject ``lax.top_k`` over a sharded axis.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from saejax import batch_axis, latent_axis
from saejax import step as step_lib
from saejax.errors import ConfigError

AXES = ("data", "model")


def parse_mesh_shape(mesh_shape: str, n_devices: int) -> tuple[int, int]:
    """ "D,M" -> (D, M); empty means (all devices, 1). ConfigError unless D·M = n_devices."""
    if not mesh_shape:
        return n_devices, 1
    try:
        data, model = (int(v) for v in mesh_shape.split(","))
    except ValueError:
        raise ConfigError(f"parallel.mesh_shape={mesh_shape!r} must be two integers 'D,M' (data x model), "
                          "e.g. '4,2'") from None
    if data < 1 or model < 1 or data * model != n_devices:
        raise ConfigError(f"parallel.mesh_shape={mesh_shape!r} needs {data * model} devices; "
                          f"{n_devices} are visible (jax.device_count())")
    return data, model


def make_mesh(mesh_shape: str, devices=None) -> Mesh:
    """The ("data", "model") mesh over `devices` (default: all)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = parse_mesh_shape(mesh_shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def check_sizes(mesh: Mesh, sae, batch_size: int) -> None:
    """One clear ConfigError, before anything compiles, when the sizes do not divide the mesh."""
    data, model = mesh.shape["data"], mesh.shape["model"]
    if batch_size % data:
        raise ConfigError(f"train.batch_size={batch_size} must divide by the mesh's data axis ({data}); "
                          f"parallel.mesh_shape={data},{model}")
    if sae.d_sae % model:
        raise ConfigError(f"sae.d_sae={sae.d_sae} must divide by the mesh's model axis ({model}); "
                          f"parallel.mesh_shape={data},{model}")
    if model > 1 and not sae.spec.has_linear_decoder:
        raise ConfigError(f"sae.arch={sae.arch!r} cannot shard its latents; use parallel.mesh_shape='D,1'")


def param_specs(sae, params) -> dict:
    """PartitionSpec of each param: its latent axis over "model", everything else replicated."""
    specs = {}
    for key, value in params.items():
        axis = sae.latent_axes.get(key)
        if axis is None or not hasattr(value, "ndim") or value.ndim == 0:
            specs[key] = jax.tree.map(lambda _: P(), value)
        else:
            spec = [None] * value.ndim
            spec[axis] = "model"
            specs[key] = P(*spec)
    return specs


def _latent_vector_spec(d_sae: int):
    return lambda leaf: P("model") if getattr(leaf, "shape", None) == (d_sae,) else P()


def state_shardings(mesh: Mesh, sae, optimizer: optax.GradientTransformation, state):
    """NamedShardings for a TrainState (concrete or abstract) on `mesh`."""
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    params = jax.tree.map(named, param_specs(sae, state.params), is_leaf=lambda x: isinstance(x, P))
    opt_state = optax.tree_utils.tree_map_params(
        optimizer, lambda _, sharding: sharding, state.opt_state, params,
        transform_non_params=lambda _: named(P()),
    )
    latent = _latent_vector_spec(sae.d_sae)
    return state._replace(
        step=named(P()), params=params, opt_state=opt_state,
        loss_state=jax.tree.map(lambda leaf: named(latent(leaf)), state.loss_state),
        steps_since_fired=named(P("model")), norm_scale=named(P()),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over "data", features replicated."""
    return NamedSharding(mesh, P("data", None))


def jit_mesh_step(train_step, mesh: Mesh, shardings):
    """`train_step` jitted over the mesh, state donated, metrics replicated; top-k over the
    sharded latents in two stages (`saejax.latent_axis`)."""

    def step(state, batch):
        with latent_axis.split_over(mesh):
            return train_step(state, batch)

    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0,
                   compiler_options=compiler_options(train_step))


def compiler_options(train_step) -> dict[str, str] | None:
    """The XLA options `train_step` asks to be compiled with (`step.make_train_step` sets them; the
    same on every strategy), or None."""
    return getattr(train_step, "compiler_options", None) or None


def with_shardings(abstract_state, shardings):
    """An abstract state (ShapeDtypeStructs) carrying `shardings`: a restore target that puts a
    checkpoint straight onto the current mesh, whatever mesh it was saved from."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, shardings)


# ---------------------------------------------------------------------------------------------
# parallel.strategy='pmap': the data-parallel step over replicas of the whole SAE.


def replicated_shardings(mesh: Mesh, state):
    """Every leaf of `state` replicated on all of the mesh's devices (the pmap strategy's state)."""
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), state)


def pmap_batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch laid out as pmap takes it, [replicas, B / replicas, d_in], one slice per device."""
    return NamedSharding(mesh, P(AXES))


def pmap_step(train_step, mesh: Mesh):
    """`train_step` under ``jax.pmap`` over the mesh's devices (in mesh order), axis "data".

    Each replica gets its slice [B / N, d_in] of the batch ([N, B / N, d_in] in all) and the whole
    replicated state (``in_axes=None``). Inside, `saejax.batch_axis` makes every batch statistic
    global and averages the gradients with ``lax.pmean``, so every replica computes the same new
    state, returned once (``out_axes=None``) and donated back on the next call.
    """

    def replica_step(state, rows):
        with batch_axis.split_over(AXES[0]):
            return train_step(state, rows)

    pmapped = jax.pmap(replica_step, axis_name=AXES[0], in_axes=(None, 0), out_axes=None, donate_argnums=0,
                       devices=list(mesh.devices.flat))
    stepped = _compiled_on_first_call(pmapped, compiler_options(train_step))
    if jax.process_count() == 1:
        return stepped
    replicated = NamedSharding(mesh, P())

    def step(state, batch):  # pmap returns this process's copies; regard them as one global array
        return jax.tree.map(lambda x: _as_global(x, replicated), stepped(state, batch))

    return step


def _compiled_on_first_call(transformed, options: dict[str, str] | None):
    """`transformed` (a jax.pmap'ed function) compiled ahead of time with XLA `options` from its first
    call's arguments (pmap itself takes no compiler options); `transformed` as it is without options."""
    if not options:
        return transformed
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            compiled = transformed.lower(*args).compile(compiler_options=options)
        return compiled(*args)

    return call


def _as_global(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """A process-local replicated array (pmap's ``out_axes=None`` output in a multi-process run) as
    the global replicated array that Orbax and jit take; no copy."""
    return jax.make_array_from_single_device_arrays(x.shape, sharding, [s.data for s in x.addressable_shards])


# ---------------------------------------------------------------------------------------------
# One strategy's layout, batches from every process, host copies.

class Placement(NamedTuple):
    """Where one strategy keeps the train state and the batch, and how it compiles the step.

    state_shardings: pytree of NamedShardings like the TrainState (None: the default device).
    batch_sharding: of the array the step takes (None: the default device).
    batch_shape: that array's global shape: [B, d_in], or [replicas, B / replicas, d_in] for pmap.
    compile: pure train step -> the step to call, (state, batch) -> (state, metrics).
    """

    mesh: Mesh | None
    state_shardings: Any
    batch_sharding: NamedSharding | None
    batch_shape: tuple[int, ...]
    compile: Callable


def placement(strategy: str, mesh: Mesh | None, sae, optimizer, abstract_state, batch_size: int) -> Placement:
    """The Placement of ``parallel.strategy`` on `mesh` (None for 'none') for `abstract_state`."""
    d_in = sae.d_in
    if strategy == "none":
        return Placement(None, None, None, (batch_size, d_in), step_lib.jit_train_step)
    if strategy == "pmap":
        replicas = mesh.devices.size
        return Placement(mesh, replicated_shardings(mesh, abstract_state), pmap_batch_sharding(mesh),
                         (replicas, batch_size // replicas, d_in), lambda step: pmap_step(step, mesh))
    shardings = state_shardings(mesh, sae, optimizer, abstract_state)
    return Placement(mesh, shardings, batch_sharding(mesh), (batch_size, d_in),
                     lambda step: jit_mesh_step(step, mesh, shardings))


def placement_from_config(config, sae, loss, optimizer) -> Placement:
    """The Placement `config.parallel.strategy` asks for; sizes (and, with several processes, each
    process's rows) checked before anything compiles."""
    strategy, batch_size = config.parallel.strategy, config.train.batch_size
    mesh = None
    if strategy != "none":
        mesh = make_mesh(config.parallel.mesh_shape if strategy == "mesh" else "")
        check_sizes(mesh, sae, batch_size)
    where = placement(strategy, mesh, sae, optimizer, step_lib.abstract_train_state(sae, loss, optimizer), batch_size)
    check_process_rows(where)
    return where


def check_process_rows(where: Placement) -> None:
    """With several processes, each must hold exactly its own rows [p·B/P, (p+1)·B/P) of the batch
    (the rows it reads): ConfigError otherwise, e.g. a model axis spanning processes."""
    count = jax.process_count()
    if count == 1:
        return
    if where.batch_sharding is None:
        raise ConfigError(f"{count} processes need parallel.strategy='mesh' or 'pmap'; 'none' uses one device")
    size = where.batch_shape[0]
    spans = {(index[0].start or 0, size if index[0].stop is None else index[0].stop)
             for index in where.batch_sharding.addressable_devices_indices_map(where.batch_shape).values()}
    own = size // count * jax.process_index(), size // count * (jax.process_index() + 1)
    covered = sorted(spans)
    if (covered[0][0], max(stop for _, stop in covered)) != own or sum(b - a for a, b in covered) != own[1] - own[0]:
        mesh = where.mesh.shape
        raise ConfigError(
            f"with {count} processes each must hold its own rows of the batch, but the mesh "
            f"{dict(mesh)} gives process {jax.process_index()} rows {covered}; the model axis must lie within one "
            f"process's {jax.local_device_count()} devices (parallel.mesh_shape=D,M with M dividing "
            f"{jax.local_device_count()})")


def put_state(state, shardings):
    """A state computed identically by every process (e.g. the fresh one) placed on `shardings`;
    each process fills only its own devices' shards."""
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    host = jax.device_get(state)
    return jax.tree.map(lambda x, sh: jax.make_array_from_callback(np.shape(x), sh, lambda index: np.asarray(x)[index]),
                        host, shardings)


def put_batch(rows: np.ndarray, where: Placement) -> jax.Array:
    """This process's rows [B / P, d_in] of a batch -> the global array the step takes (a transcoder's
    (inputs, targets) -> a pair of them, each laid out alike with its own width)."""
    if isinstance(rows, tuple):
        return tuple(put_batch(part, where._replace(batch_shape=(*where.batch_shape[:-1], part.shape[-1])))
                     for part in rows)
    local_shape = (where.batch_shape[0] // jax.process_count(), *where.batch_shape[1:])
    rows = rows.reshape(local_shape)
    if jax.process_count() == 1:
        return jax.device_put(rows, where.batch_sharding)
    return jax.make_array_from_process_local_data(where.batch_sharding, rows, where.batch_shape)


def replicated_value(x) -> np.ndarray:
    """Host copy of an array every device holds whole (a metric, the loss): works in any process,
    also when the array spans other processes' devices."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))


def to_host(tree):
    """Host (numpy) copy of a pytree of arrays, however sharded: a collective when the arrays span
    several processes (every process must call it), a plain device_get otherwise."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
