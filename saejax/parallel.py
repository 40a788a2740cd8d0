"""Many devices: a ("data", "model") mesh for the one pure train step.

``parallel.strategy='mesh'`` with ``parallel.mesh_shape="D,M"`` runs `train.make_train_step`'s pure
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
explicit-axis meshes reject ``lax.top_k`` over a sharded axis (FIELD_NOTES).
"""

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
    if model > 1 and sae.arch == "mlp":
        raise ConfigError("sae.arch='mlp' cannot shard its latents; use parallel.mesh_shape='D,1'")


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
    """`train_step` jitted over the mesh, state donated, metrics replicated."""
    return jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)


def with_shardings(abstract_state, shardings):
    """An abstract state (ShapeDtypeStructs) carrying `shardings`: a restore target that puts a
    checkpoint straight onto the current mesh, whatever mesh it was saved from."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, shardings)
