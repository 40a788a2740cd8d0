"""Several hook points in one pass: one SAE on each of a text model's hook points, all fed by one
forward of the model.

    --config.data.source=model --config.model.hookpoints=3/resid_post,4/resid_post,5/mlp_out

The stream (`saejax.data.stream`) captures every point in each forward and hands out batch i of all
of them at once, [P, B, d_model]: the rows of the same tokens, in the same order. The P SAEs share
the config (architecture, sizes, loss, optimizer, seed), so their train states are one pytree stacked
on a leading axis of P (every hook point of a model has the width d_model; `saejax.step.stack_states`),
and one jitted step runs the train step on each of them in turn (`over_points`): each SAE takes the
steps it would take trained alone on its point's stream with the same seed (the same initial key, its
own data sample for b_dec and the normalisation), up to float rounding (XLA compiles the step inside
a larger program): 3 TopK SAEs on MiniLM (d_sae 3072, 40 steps of 1024) came out bitwise equal to
the runs alone, the tiny test model's ~1e-6 apart (relative) after 20 steps. That pass took 41.5 s,
the three runs alone 90.9 s (a shared 2-core CPU: the model's forward is computed once, not thrice).

What a run of several points leaves, beside what a run of one leaves:

- metrics.jsonl and TensorBoard: each point's metrics under its name ("3/resid_post/fvu"), and the
  plain names ("fvu") holding the mean over the points (`host_values`);
- checkpoints/STEP: the stacked state (point i at index i, in model.hookpoints order) and the config;
- each point's SAE evaluated and exported as a run of that point alone (`each_sae`, `point_run`):
  export/3/resid_post/ (with its own saejax_config.json: model.layer=3, model.site=resid_post),
  plots/3/resid_post/, dashboards/3/resid_post/, and summary.json's "points".

A run of one hook point (model.hookpoints empty or naming one) trains one SAE, unstacked, as ever.
"""

import jax
import numpy as np

from saejax import config as config_lib, parallel, step


def over_points(pure_step):
    """(stacked state, batches [P, B, d_in]) -> (stacked state, metrics [P] each): `pure_step` (the
    step `step.make_train_step` makes) on each SAE in turn, in one program (`jax.lax.map`: the step
    compiled once, one SAE's activations in memory at a time), with the step's XLA options. A
    `jax.vmap` computes the same, but its batched matmuls, gathers and scatters ran 3-6x slower than
    P separate steps on a 2-core CPU (TopK, d_in 384, d_sae 3072, batch 1024, 3 points: 0.8-1.1 s
    against 0.14-0.37 s), where this runs as fast as they do."""
    def each_point(state, batches):
        return jax.lax.map(lambda pair: pure_step(*pair), (state, batches))

    each_point.compiler_options = getattr(pure_step, "compiler_options", None)
    return each_point


def step_of(state: step.TrainState) -> int:
    """The step a (stacked) state is at: every SAE of several hook points is at the same one."""
    return int(np.ravel(parallel.replicated_value(state.step))[0])


def host_values(run, metrics: dict) -> dict[str, float]:
    """Host floats of a step's metrics. Several hook points (metrics [P]): the mean over the points
    under each plain name, then each point's value under "POINT/name" ("3/resid_post/fvu")."""
    values = {key: np.asarray(parallel.replicated_value(value), np.float64) for key, value in metrics.items()}
    if not run.points:
        return {key: float(value) for key, value in values.items()}
    means = {key: float(np.mean(value)) for key, value in values.items()}
    return {**means, **{f"{name}/{key}": float(value[i]) for i, name in enumerate(run.points)
                        for key, value in values.items()}}


def by_point(run, values: dict[str, float]) -> list[tuple[str, dict[str, float]]]:
    """[(point name, its values under their plain names)] of `host_values`' result; [("", values)] for
    a run of one SAE."""
    if not run.points:
        return [("", values)]
    return [(name, {key[len(name) + 1:]: value for key, value in values.items() if key.startswith(f"{name}/")})
            for name in run.points]


def prefixed(by_name: dict[str, dict]) -> dict:
    """{point name: {key: value}} -> {"POINT/key": value} (the "" point's keys as they are)."""
    return {f"{name}/{key}" if name else key: value for name, values in by_name.items() for key, value in values.items()}


def point_run(run, index: int):
    """The run of SAE number `index` of `run`'s hook points alone: its config
    (`saejax.config.point_config`), its point's rows (`saejax.data.stream.ModelSource.at`), and its
    name as `point` (its outputs go to subfolders of that name)."""
    return run._replace(config=config_lib.point_config(run.config, index), source=run.source.at(index), points=(),
                        point=run.points[index])


def each_sae(run, state) -> list[tuple[str, object, step.TrainState]]:
    """[(point name, its run, its host state holding the params to evaluate: `step.eval_params`)] for
    each SAE of `run` ([("", run, state)] for a run of one SAE), from the trained (device) `state`.
    Every process must call it (host copies of arrays spanning processes are a collective)."""
    state = parallel.to_host(state)

    def evaluated(one):  # schedule-free: the averaged params
        return one._replace(params=step.eval_params(run.sae, one))

    if not run.points:
        return [("", run, evaluated(state))]
    return [(name, point_run(run, i), evaluated(step.state_at(state, i))) for i, name in enumerate(run.points)]
