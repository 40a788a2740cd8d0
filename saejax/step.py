"""The train state and the one train step, with the decoder constraint it applies.

    sae = make_sae("relu", d_in, d_sae)
    loss = losses.chain(losses.mse(), losses.l1(5.0))
    optimizer = optimizers.make_optimizer(optax.adam(1e-3), sae)
    state = init_train_state(sae, loss, optimizer, jax.random.key(0), sample)
    step = jit_train_step(make_train_step(sae, loss, optimizer))
    state, step_metrics = step(state, batch)        # batch: [B, d_in] raw activations

The step is one pure function (state, batch) -> (state, metrics), jitted once with the state's
buffers donated; `saejax.parallel` wraps the same function for pmap and meshes, and
`saejax.train` drives it from a config.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saejax import batch_axis, initializers, losses, metrics, normalization
from saejax.kernels import cpu
from saejax.sae import SAE, Params


class TrainState(NamedTuple):
    """Everything a run needs to continue; a pytree (checkpointed whole).

    step: [] int32.  params: the SAE's params dict.  opt_state: the optimizer's state.
    loss_state: the loss terms' state.  steps_since_fired: [d_sae] int32, the one dead-latent counter
      (metrics, resampling, and the loss terms through ``out.aux["steps_since_fired"]``).
    norm_scale: [] float32, inputs are multiplied by it (`saejax.normalization`); a transcoder's is
      [2] float32, (input scale, target scale).
    """

    step: jax.Array
    params: Params
    opt_state: Any
    loss_state: Any
    steps_since_fired: jax.Array
    norm_scale: jax.Array


# ---------------------------------------------------------------------------------------------
# Decoder constraint.


def unit_rows(w: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Each row of w [n, d] scaled to unit norm."""
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), eps)


def normalize_decoder_rows(params: Params) -> Params:
    """W_dec rows back to unit norm (applied after every update when constrained)."""
    return {**params, "W_dec": unit_rows(params["W_dec"])}


# ---------------------------------------------------------------------------------------------
# State and step.


def init_train_state(
    sae: SAE,
    loss: losses.LossTerm,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    sample: np.ndarray,
    *,
    normalize: bool = True,
    init_b_dec: str = "geometric_median",
    mean_sq_norm: float | None = None,
    threshold_rate: float | None = None,
) -> TrainState:
    """Fresh state: params from `sae.init`, b_dec from `sample` [n, d_in], and the normalisation
    scale from `mean_sq_norm` (the data's E||x||², e.g. a store's statistics) or else the sample.
    A transcoder's sample is (inputs [n, d_in], targets [n, d_out]): each half gets its own scale
    (`normalization.scales_of`) and b_dec [d_out] comes from the targets.
    threshold_rate: JumpReLU only: each latent's threshold where it fires on this share of the
    sample (`initializers.jumprelu_thresholds`) instead of `sae.init`'s constant."""
    scale = normalization.scales_of(sample, mean_sq_norm) if normalize else normalization.unit_scale(sae)
    inputs, targets = sample if isinstance(sample, tuple) else (sample, sample)
    params = jax.jit(sae.init)(key)
    normalized = np.asarray(inputs, np.float32) * normalization.input_scale(scale)
    targets = normalized if targets is inputs else np.asarray(targets, np.float32) * normalization.target_scale(scale)
    params["b_dec"] = initializers.initial_b_dec(targets, init_b_dec)
    if threshold_rate is not None and sae.spec.learned_thresholds:
        pre_acts = jax.jit(sae.pre_acts_of)(params, normalized, None)
        params["threshold"] = initializers.jumprelu_thresholds(pre_acts, threshold_rate)
    # one jitted program (from the compilation cache when warm), not one per eager optimizer-init op
    at_zero = jax.jit(lambda p, s: state_at_step_zero(sae, loss, optimizer, p, s))
    return at_zero(params, jnp.asarray(scale, jnp.float32))


def state_at_step_zero(sae: SAE, loss: losses.LossTerm, optimizer: optax.GradientTransformation, params: Params,
                       norm_scale) -> TrainState:
    """The TrainState around `params` before any step: fresh optimizer, loss-term state and counters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        loss_state=loss.init(sae),
        steps_since_fired=jnp.zeros((sae.d_sae,), jnp.int32),
        norm_scale=jnp.asarray(norm_scale, jnp.float32),
    )


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def schedule_free_state(opt_state) -> optax.contrib.ScheduleFreeState | None:
    """The schedule-free optimizer's state inside `opt_state` (a chain's nested tuples), or None."""
    if isinstance(opt_state, optax.contrib.ScheduleFreeState):
        return opt_state
    if isinstance(opt_state, tuple):
        for part in opt_state:
            found = schedule_free_state(part)
            if found is not None:
                return found
    return None


def eval_params(sae: SAE, state: TrainState) -> Params:
    """The params to evaluate and export: `state.params`, or with schedule-free training the averaged
    sequence x that schedule-free methods evaluate (the state holds the point y where gradients are
    taken). Buffers (BatchTopK's threshold), which the optimizer never moves, keep their value."""
    schedule_free = schedule_free_state(state.opt_state)
    if schedule_free is None:
        return state.params
    averaged = optax.contrib.schedule_free_eval_params(schedule_free, state.params)
    return {**averaged, **{name: state.params[name] for name in sae.buffers}}


def all_finite(tree) -> bool:
    """True when every float array in `tree` (e.g. the params) is free of NaN/Inf (one device sync).
    Arrays wholly in this process's CPU memory are read by numpy in place (no program to compile: a
    third of a second on a cold cache); others (accelerators, several processes) by one jitted
    reduction."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if all(_in_host_memory(x) for x in leaves):
        return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
    return bool(_all_finite(tree).addressable_data(0))  # replicated: also when `tree` spans processes


def _in_host_memory(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    return x.is_fully_addressable and all(device.platform == "cpu" for device in x.devices())


def abstract_train_state(sae: SAE, loss: losses.LossTerm, optimizer: optax.GradientTransformation) -> TrainState:
    """The TrainState's structure, shapes, dtypes and (default-device) shardings, without computing
    anything: a restore target for a checkpoint."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(lambda key: state_at_step_zero(sae, loss, optimizer, sae.init(key),
                                                           normalization.unit_scale(sae)), jax.random.key(0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# ---------------------------------------------------------------------------------------------
# The SAEs of several hook points (`saejax.hookpoints`): one state, every leaf stacked [P, ...].


def stack_states(states: list[TrainState]) -> TrainState:
    """One state whose every leaf is the P states' leaves stacked: [P, ...]."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def state_at(state: TrainState, index: int) -> TrainState:
    """SAE number `index`'s state in a stacked state (each leaf's slice [index])."""
    return jax.tree.map(lambda leaf: leaf[index], state)


def stacked_abstract(abstract: TrainState, count: int) -> TrainState:
    """An abstract state (`abstract_train_state`) with a leading axis of `count`: the restore target
    of the stacked state of `count` SAEs."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((count, *s.shape), s.dtype, sharding=s.sharding), abstract)


def step_metrics(x: jax.Array, out, steps_since_fired: jax.Array, dead_steps: int) -> dict[str, jax.Array]:
    """Sparsity and fidelity of one batch: L0, FVU, cosine similarity, dead fraction."""
    return {
        "l0": metrics.output_l0(out),
        "fvu": metrics.fvu(x, out.x_hat),
        "cos_sim": metrics.cosine_similarity(x, out.x_hat),
        "dead_fraction": metrics.dead_fraction(steps_since_fired, dead_steps),
    }


def make_train_step(
    sae: SAE,
    loss: losses.LossTerm,
    optimizer: optax.GradientTransformation,
    *,
    unit_norm_decoder: bool = True,
    dead_steps: int = 1000,
):
    """The pure train step (state, batch [B, d_in]) -> (state, metrics); jit it with `jit_train_step`,
    which compiles it with the step's `compiler_options` (attribute: XLA options for this SAE's
    matmuls on CPU, see `cpu.step_compiler_options`; {} elsewhere).
    A batch may also be a pair (inputs [B, d_in], targets [B, d_out]) for an architecture whose
    reconstruction's target is not its input (a transcoder, `SAE.d_out`); each is scaled by its own
    entry of the state's norm scale (`normalization.input_scale`, `target_scale`; the same one when
    the norm scale is a scalar)."""
    constrain = unit_norm_decoder and sae.spec.has_linear_decoder

    def loss_fn(params, x, loss_state, step, target, steps_since_fired):
        out = sae.forward(params, x, train=True)
        out = out._replace(aux={**out.aux, "steps_since_fired": steps_since_fired})  # the terms' dead latents
        given = {} if target is None else {"target": target}
        terms, loss_state = loss.apply(params, x, out, loss_state, step, **given)
        return losses.total(terms), (terms, out, loss_state)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        inputs, targets = batch if isinstance(batch, tuple) else (batch, None)
        x = normalization.normalize(inputs, normalization.input_scale(state.norm_scale))
        target = None if targets is None else normalization.normalize(targets,
                                                                      normalization.target_scale(state.norm_scale))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (value, (terms, out, loss_state)), grads = grad_fn(state.params, x, state.loss_state, state.step, target,
                                                           state.steps_since_fired)
        grads = batch_axis.mean_gradients(grads)  # lax.pmean over pmap replicas; identity otherwise
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = sae.update_buffers(params, out, state.step)
        if constrain:
            params = normalize_decoder_rows(params)
        fired = metrics.reset_fired(state.steps_since_fired, metrics.fired_latents(out))
        new_state = TrainState(state.step + 1, params, opt_state, loss_state, fired, state.norm_scale)
        logged = {"loss": value, **{f"loss/{name}": v for name, v in terms.items()}}
        return new_state, {**logged, **step_metrics(x if target is None else target, out, fired, dead_steps)}

    train_step.compiler_options = cpu.step_compiler_options(sparse=bool(sae.hparams.get("sparse")),
                                                                dtype=jnp.dtype(sae.hparams.get("dtype", "float32")).name)
    return train_step


def jit_train_step(train_step, compiler_options: dict[str, str] | None = None):
    """jax.jit with the state (argument 0) donated: params and optimizer state update in place.
    compiler_options: XLA's; by default the step's own (`make_train_step` sets them from
    `cpu.step_compiler_options`: on CPU, which library runs the dots)."""
    if compiler_options is None:
        compiler_options = getattr(train_step, "compiler_options", None)
    return jax.jit(train_step, donate_argnums=0, compiler_options=compiler_options or None)
