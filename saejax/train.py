"""Train an SAE from a config: `train_and_evaluate(config, workdir)`, the loop read top to bottom.

It builds what the config describes (`saejax.assemble`), starts from a fresh state or from the latest
good checkpoint in `workdir` (`saejax.resume`), runs the jitted train step (`saejax.step`), logs,
checkpoints and stops, then runs the evaluators that `train.evaluators` names (`saejax.evaluate`).
It leaves in `workdir`:

    config.json, metrics.jsonl, tensorboard/, checkpoints/, summary.json,
    plots/{training,density}.png (+ atoms.png for image data),
    export/{cfg.json, sae_weights.safetensors} (SAELens layout, linear architectures) + saejax_config.json

With several ``model.hookpoints`` it trains one SAE per hook point from one forward of the model, a
stacked state in one jitted step (`saejax.hookpoints`): each point's metrics are logged under its name,
and each SAE is evaluated and exported alone, into plots/POINT/ and export/POINT/ (e.g.
export/3/resid_post/), its numbers under summary.json's "points".

One run at a time owns a workdir (a lock, `saejax.workdir_lock`): a second one is refused with a
line naming the first one's PID and host. SIGTERM/SIGINT stop it cleanly after a checkpoint
(`saejax.preemption`); a damaged latest checkpoint falls back to the previous one
(`saejax.checkpoint`); a diverged or collapsed SAE stops it before it saves or exports
(`saejax.guards`); a checkpoint or metrics write that fails (a full disk, a read-only folder) stops it
with one line naming the path, the last good checkpoint kept.
"""

import importlib
import json
import threading
import time
from pathlib import Path

import jax
import numpy as np

from saejax import assemble, evaluate, guards, hookpoints, resume, writers
from saejax.preemption import PreemptionGuard, StopVote
from saejax.step import TrainState, make_train_step


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train(run: assemble.Run, writer) -> tuple[TrainState, str | None]:
    """Initialise or resume `run` (onto its shardings), then train to `train.steps`, or until
    SIGTERM/SIGINT (then the step in flight finishes and is checkpointed; with several processes, all
    stop after the same step). Returns (final state, stacked over several hook points; the signal's
    name or None)."""
    t, config = run.config.train, run.config
    init_key, resample_key = jax.random.split(jax.random.key(config.seed))
    config_dict = json.loads(config.to_json_best_effort())
    ckpt = resume.open_checkpoints(run.workdir, config)
    state = resume.start_state(run, ckpt, init_key)
    pure_step = make_train_step(run.sae, run.loss, run.optimizer, unit_norm_decoder=t.unit_norm_decoder,
                                dead_steps=config.loss.dead_steps)
    train_step = run.where.compile(hookpoints.over_points(pure_step) if run.points else pure_step)
    resample = assemble.resample_step(run)
    first = hookpoints.step_of(state)
    last_saved, stopped = first or None, None
    try:
        with PreemptionGuard() as signals:
            vote = StopVote(run.where.mesh)
            for step, batch in assemble.batches(run, first):
                state, metrics = train_step(state, batch)
                done = step + 1
                ckpt.raise_if_save_failed()  # a background save that failed stops the run now
                if t.resample_every and done % t.resample_every == 0 and done < (t.resample_until or t.steps):
                    state, resampled = resample(state, batch, jax.random.fold_in(resample_key, done))
                    metrics = {**metrics, "resampled": resampled}
                if _due(done, t.log_every, t.steps):
                    logged = hookpoints.host_values(run, metrics)
                    if getattr(run.source, "skipped_rows", 0):
                        logged["data/skipped_rows"] = run.source.skipped_rows
                    writer.write(done, logged)
                    guards.check_finite_loss(logged["loss"], done, t.log_every)
                if vote.vote(signals.requested is not None):
                    stopped = signals.requested or "a signal to another process"
                if _due(done, t.checkpoint_every, t.steps) or stopped:
                    now = hookpoints.host_values(run, {k: metrics[k] for k in ("loss", "fvu", "l0")})
                    if done > guards.collapse_check_from(config):
                        for point, values in hookpoints.by_point(run, now):
                            guards.check_not_collapsed(values["fvu"], values["l0"], done, last_saved, point)
                    last_saved = guards.save_checkpoint(ckpt, done, state, now["loss"], config_dict, last_saved)
                if stopped:
                    break
    finally:
        ckpt.close()
    return state, stopped


def _numbers(found: dict) -> dict:
    return {k: v for k, v in found.items() if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}


def _results(found: dict) -> dict:
    """What summary.json says of one SAE's evaluation."""
    return {"eval": _numbers(found), "eval_split": found.get("eval_split"),
            "export": found.get("export", "skipped: not in train.evaluators")}


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Run the whole job a config describes (see module docstring); returns the summary dict.

    With several processes (`saejax.distributed`), every process trains; process 0 alone holds the
    workdir's lock, writes config.json, metrics, plots, the summary and the export, and evaluates."""
    start, workdir = time.perf_counter(), Path(workdir)
    with resume.hold_workdir(workdir):
        return _run(config, workdir, start)


def _run(config, workdir: Path, start: float) -> dict:
    run = assemble.prepare(config, workdir)
    evaluators = evaluate.selected(run)  # a named evaluator that cannot apply fails before training
    resume.check_resumable(workdir, run.config)  # config.json is rewritten once the checkpoint agrees too
    writers.say(assemble.describe(run))
    main = jax.process_index() == 0
    if main and {"curves", "plots"} & set(evaluators):  # matplotlib's import (~0.6 s) overlaps training
        threading.Thread(target=importlib.import_module, args=("saejax.plots",), daemon=True).start()
    writer = writers.for_run(workdir, run.config)
    prepared = evaluate.prepare(run, evaluators) if main else {}  # compiles while the run trains
    try:
        state, stopped = train(run, writer)
        steps = hookpoints.step_of(state)
        if stopped:
            writers.say(f"stopped by {stopped} at step {steps}; checkpoint saved in {workdir / 'checkpoints'}; "
                        "run the same command to resume")
            return {"preempted": stopped, "steps": steps}
        saes = hookpoints.each_sae(run, state)  # host copies: evaluation, plots and export work on them
        if not main:
            return {"steps": steps, "process": jax.process_index()}
        found = {}  # point name ("" for a run of one SAE) -> what its evaluators found
        for point, point_run, point_state in saes:
            found[point] = evaluate.evaluate_all(point_run, point_state, evaluators, prepared)
        writer.write(steps, hookpoints.prefixed({point: _numbers(f) for point, f in found.items()}), split="eval")
    finally:
        writer.close()
    results = {"points": {point: _results(f) for point, f in found.items()}} if run.points else _results(found[""])
    summary = {
        "arch": run.sae.arch, "d_in": run.sae.d_in, "d_sae": run.sae.d_sae, "steps": steps,
        **results, "wall_time_s": round(time.perf_counter() - start, 2),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
