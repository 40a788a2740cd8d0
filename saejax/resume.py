"""Starting a run: in a workdir it holds alone, from a fresh state or from the latest good checkpoint
of the same run.

`hold_workdir` makes the run the workdir's one owner (`saejax.workdir_lock`). `check_resumable`
refuses a workdir holding a run that this config cannot continue (its shapes or data stream differ)
and prints the harmless differences; `start_state` builds the state the first step sees, on the
run's shardings, after checking the config saved inside the checkpoint it restores the same way
(workdir/config.json may be missing or edited; the checkpoint's own copy decides).
"""

import json
import sys
from pathlib import Path

import jax

from saejax import checkpoint, from_config, parallel, step, workdir_lock, writers
from saejax.errors import ConfigError, DataError, SaejaxError

INIT_SAMPLE_ROWS = 8192

# data.* fields a resumed run may change: where the store lives, and what to do with bad rows (the
# usual fix after a NaN error). Everything else in data.* changes the stream, so it is refused.
RESUMABLE_DATA_FIELDS = ("path", "on_bad_rows")
# model.* fields that make the stream of data.source=model: changing one of them changes every batch
# (model.hookpoints: also which SAEs the checkpoint holds)
STREAM_MODEL_FIELDS = ("name", "layer", "site", "context_length", "text_glob", "hookpoints")
# what a config saved before one of those fields existed meant by its absence
ADDED_MODEL_FIELDS = {"hookpoints": ""}
ADDED_DATA_FIELDS = {"stream_shards": 1, "stream_dtype": "float32", "forward_on_all_devices": False}


def _flatten(config_dict: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config_dict.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _resume_fields(config_dict: dict) -> dict:
    """The config fields a checkpoint's shapes and stream depend on (flattened 'section.field')."""
    fields = {"seed": config_dict.get("seed"), "optim.name": config_dict.get("optim", {}).get("name"),
              # an SAE or a transcoder (its state holds two norm scales), for every data.source
              "model.target_site": config_dict.get("model", {}).get("target_site") or ""}
    for section in ("data", "sae"):
        fields.update({f"{section}.{k}": v for k, v in config_dict.get(section, {}).items()
                       if not (section == "data" and k in RESUMABLE_DATA_FIELDS)})
    fields.update({f"data.{k}": value for k, value in ADDED_DATA_FIELDS.items() if f"data.{k}" not in fields})
    if config_dict.get("data", {}).get("source") == "model":  # the stream is made of the model's activations
        fields.update({f"model.{k}": config_dict.get("model", {}).get(k, ADDED_MODEL_FIELDS.get(k))
                       for k in STREAM_MODEL_FIELDS})
    fields.update({f"loss.{k} is on": bool(v) for k, v in config_dict.get("loss", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return fields


def _differences(saved: dict, current: dict) -> list[str]:
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(saved.keys() | current.keys())
            if saved.get(k) != current.get(k)]


def hold_workdir(workdir: Path):
    """A context in which this run alone uses `workdir` (see `saejax.workdir_lock.held`): WorkdirError
    naming the PID and host of another live run there; a filesystem error inside becomes one
    WorkdirError line naming the path."""
    return workdir_lock.held(workdir)


def _incompatible(saved_dict: dict, current_dict: dict) -> list[str]:
    """The differences between two config dicts that a checkpoint of one cannot be resumed with the other."""
    return _differences(_resume_fields(saved_dict), _resume_fields(current_dict))


def check_resumable(workdir: Path, config) -> None:
    """ConfigError listing the differing fields if `workdir` holds a run this config cannot resume;
    prints the harmless differences (steps, logging, coefficients ...) when it can."""
    saved_path = workdir / "config.json"
    if not (saved_path.exists() and any((workdir / "checkpoints").glob("[0-9]*"))):
        return
    saved_dict, current_dict = json.loads(saved_path.read_text()), json.loads(config.to_json_best_effort())
    differing = _incompatible(saved_dict, current_dict)
    if differing:
        raise ConfigError(f"--workdir={workdir} holds a run with a different config, which cannot be resumed "
                          f"({'; '.join(differing)}); use a new --workdir")
    harmless = _differences(_flatten(saved_dict), _flatten(current_dict))
    if harmless:
        print(f"resuming with changed settings: {'; '.join(harmless)}", flush=True)
    old_steps, optim = saved_dict.get("train", {}).get("steps"), current_dict["optim"]
    if old_steps != config.train.steps and (optim["decay"] != "constant" or min(old_steps or 0, config.train.steps)
                                           < optim["warmup_steps"]):
        print(f"note: the learning-rate schedule depends on train.steps (optim.decay={optim['decay']!r}, "
              f"optim.warmup_steps={optim['warmup_steps']}), so from the resumed step on it differs from the "
              "original run's", flush=True)


def initial_state(config, source, sae, loss, optimizer, key) -> step.TrainState:
    """A fresh TrainState: b_dec and the normalisation scale from a data sample (the scale from the
    store's statistics when it has them)."""
    try:
        sample = source.sample(INIT_SAMPLE_ROWS)
    except DataError as e:
        raise DataError(f"initialisation sample from data.source={source.name!r}: {e}") from None
    return step.init_train_state(
        sae, loss, optimizer, key, sample,
        normalize=config.sae.normalize_activations, init_b_dec=config.sae.init_b_dec,
        mean_sq_norm=(getattr(source, "stats", None) or {}).get("mean_sq_norm"),
        threshold_rate=from_config.jumprelu_threshold_rate(config),
    )


def _same_run(ckpt: checkpoint.Checkpointer, config):
    """check_config for `Checkpointer.restore_latest_good`: ConfigError naming the step's folder and
    the differing fields when the config saved inside a checkpoint is not one this `config` resumes."""
    current = json.loads(config.to_json_best_effort())

    def check(saved: dict | None, at: int) -> None:
        differing = _incompatible(saved, current) if saved else []  # {}: saved without a config
        if differing:
            raise ConfigError(f"{ckpt.directory / str(at)} was saved by a run with a different config, which "
                              f"cannot be resumed ({'; '.join(differing)}); use a new --workdir")
    return check


def restore_latest(workdir: Path, source, sae, ckpt: checkpoint.Checkpointer, state: step.TrainState, config):
    """The latest good checkpoint in `ckpt` (which holds at least one) restored into `state`'s
    structure, its saved config checked against `config`. Damaged newer steps are set aside with a
    warning naming them; unfinished saves of older steps are deleted."""
    saved, expected = ckpt.saved_shape("params", "b_dec"), tuple(state.params["b_dec"].shape)  # [d] or [P, d]
    width = sae.d_out or sae.d_in  # b_dec is in the output space: d_out for a transcoder
    if saved is not None and saved[-1:] != (width,):
        what = "targets" if sae.transcoder else "rows"
        raise ConfigError(
            f"--workdir={workdir} holds a checkpoint of an SAE with d_{'out' if sae.transcoder else 'in'}="
            f"{saved[-1]}, but data.source={source.name!r} now gives {what} of width {width}; use a "
            "new --workdir or the original data"
        )
    if saved is not None and saved != expected:
        raise ConfigError(f"--workdir={workdir} holds a checkpoint of {saved[0] if len(saved) > 1 else 1} SAE(s), "
                          f"one per hook point, but this run trains {expected[0] if len(expected) > 1 else 1} "
                          "(model.hookpoints); use a new --workdir or the original model.hookpoints")
    try:
        restored, at, damaged = ckpt.restore_latest_good(state, is_good=lambda s: step.all_finite(s.params),
                                                         check_config=_same_run(ckpt, config))
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"--workdir={workdir}: {e}; if sae.*, loss.* or optim.* changed, use a new --workdir") from None
    for bad_step, reason in damaged:
        print(f"warning: the checkpoint at step {bad_step} is damaged ({reason}); set it aside as "
              f"{ckpt.directory / f'{bad_step}.damaged'} and fell back to step {at}", file=sys.stderr, flush=True)
    removed = ckpt.remove_unfinished(before=at)
    if removed:
        writers.say(f"note: deleted {len(removed)} unfinished checkpoint folder(s) older than step {at} "
                    f"(saves cut off by a crash): {', '.join(p.name for p in removed)}")
    if jax.process_index() == 0:
        writers.drop_records_after(workdir, at)
    writers.say(f"resumed from {ckpt.directory} at step {at}")
    return restored


def open_checkpoints(workdir: Path, config) -> checkpoint.Checkpointer:
    """The run's checkpoint directory, workdir/checkpoints, keeping train.keep_checkpoints steps."""
    return checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints)


def _initial(run, key: jax.Array) -> step.TrainState:
    """`initial_state` of the run's SAE, or of each hook point's (from its own rows, with the same key:
    as it would start alone), stacked."""
    if not run.points:
        return initial_state(run.config, run.source, run.sae, run.loss, run.optimizer, key)
    return step.stack_states([initial_state(run.config, run.source.at(i), run.sae, run.loss, run.optimizer, key)
                             for i in range(len(run.points))])


def _fresh_or_restored(run, ckpt: checkpoint.Checkpointer, key: jax.Array) -> step.TrainState:
    shardings = run.where.state_shardings
    if ckpt.latest_step() is None:
        if jax.process_index() == 0:
            writers.drop_records_after(run.workdir, 0)  # records of a run killed before its first checkpoint
        state = _initial(run, key)
        return state if shardings is None else parallel.put_state(state, shardings)
    abstract = step.abstract_train_state(run.sae, run.loss, run.optimizer)
    if run.points:
        abstract = step.stacked_abstract(abstract, len(run.points))
    like = abstract if shardings is None else parallel.with_shardings(abstract, shardings)
    return restore_latest(run.workdir, run.source, run.sae, ckpt, like, run.config)


def start_state(run, ckpt: checkpoint.Checkpointer, key: jax.Array) -> step.TrainState:
    """The state `run` (a `saejax.assemble.Run`) starts from, on its shardings: fresh when `ckpt`
    holds no step (initialised from a data sample), else its latest good checkpoint (restored onto
    shapes and shardings alone, no data read). Then, the run accepted, workdir/config.json is
    (re)written: a run refused here leaves it as it was. Closes `ckpt` if it fails."""
    try:
        state = _fresh_or_restored(run, ckpt, key)
        writers.write_config(run.workdir, run.config)
        return state
    except SaejaxError:
        ckpt.close()
        raise
