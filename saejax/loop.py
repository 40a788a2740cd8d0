"""The one generic run loop: config + workdir in, trained and exported SAE out.

`train_and_evaluate(config, workdir)` builds the data source, SAE, loss and optimizer that the
config names, resumes from the latest checkpoint in `workdir` if there is one, runs the jitted
train step, and leaves in `workdir`:

    config.json, metrics.jsonl, tensorboard/, checkpoints/, summary.json,
    plots/{training,density}.png (+ atoms.png for image data),
    export/{cfg.json, sae_weights.safetensors} (SAELens layout, linear architectures) + saejax_config.json

SIGTERM/SIGINT stop it cleanly after a checkpoint (see `saejax.preemption`); a damaged latest
checkpoint falls back to the previous one (see `saejax.checkpoint`).
"""

import functools
import importlib
import itertools
import json
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from saejax import analysis, checkpoint, config as config_lib, dashboards, data, defaults, distributed, downstream
from saejax import export, harvest, metrics, parallel, splice, train, writers
from saejax.errors import ConfigError, DataError, SaejaxError
from saejax.preemption import PreemptionGuard, StopVote
from saejax.resampling import resample_dead_latents
from saejax.sae import SAE, registry

INIT_SAMPLE_ROWS = 8192
# Evaluation batches are drawn at these step indices, far from any training step.
EVAL_STEP_OFFSET = 10**12


def check_batch(batch: np.ndarray, step: int, source_name: str, d_in: int) -> None:
    """Raise DataError naming the step and source if a batch has the wrong shape or non-finite values."""
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
    """Batch `step` of `source`, checked; any DataError names the step and the source. A source
    that reads per process (`process_count` > 1) gives only this process's rows."""
    try:
        batch = source.batch(step, batch_size)
    except DataError as e:
        raise DataError(f"batch at step {step} from data.source={source.name!r}: {e}") from None
    check_batch(batch, step, source.name, d_in)
    return batch


def read_local_batch(source, step: int, batch_size: int, d_in: int) -> np.ndarray:
    """This process's rows [p·B/P, (p+1)·B/P) of batch `step` (all of it with one process)."""
    rows = read_batch(source, step, batch_size, d_in)
    if getattr(source, "process_count", 1) > 1 or jax.process_count() == 1:
        return rows  # a per-process reader already returned only this process's rows
    lo, hi = distributed.row_range(batch_size)
    return rows[lo:hi]


def say(message: str) -> None:
    """Print a progress message (from process 0 only in a multi-process run)."""
    if distributed.is_main_process():
        print(message, flush=True)


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


def _build(config):
    source = data.make_source(config.data, config.seed)
    return (source, *train.model_from_config(config, source.d_in))


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def initial_state(config, source, sae: SAE, loss, optimizer, key) -> train.TrainState:
    """A fresh TrainState: b_dec and the normalisation scale from a data sample (the scale from the
    store's statistics when it has them)."""
    try:
        sample = source.sample(INIT_SAMPLE_ROWS)
    except DataError as e:
        raise DataError(f"initialisation sample from data.source={source.name!r}: {e}") from None
    return train.init_train_state(
        sae, loss, optimizer, key, sample,
        normalize=config.sae.normalize_activations, init_b_dec=config.sae.init_b_dec,
        mean_sq_norm=(getattr(source, "stats", None) or {}).get("mean_sq_norm"),
        threshold_rate=jumprelu_threshold_rate(config),
    )


def jumprelu_threshold_rate(config) -> float | None:
    """The share of rows each JumpReLU latent starts firing on: the target L0 (loss.target_l0, else
    sae.k) over sae.d_sae; None when sae.jumprelu_init_threshold sets the thresholds (or not JumpReLU)."""
    sae_config = config.sae
    spec = registry.find(sae_config.arch)
    if spec is None or not spec.learned_thresholds or sae_config.get("jumprelu_init_threshold") is not None:
        return None
    return (config.loss.get("target_l0") or sae_config.k) / sae_config.d_sae


def restore_or_keep(workdir: Path, source, sae: SAE, ckpt: checkpoint.Checkpointer, state: train.TrainState):
    """The latest good checkpoint in `ckpt` restored into `state`'s structure (`state` itself when
    there is none). Damaged newer steps are set aside with a warning naming them."""
    if ckpt.latest_step() is None:
        return state
    saved = ckpt.saved_shape("params", "b_dec")
    if saved is not None and saved != (sae.d_in,):
        raise ConfigError(
            f"--workdir={workdir} holds a checkpoint of an SAE with d_in={saved[0]}, but "
            f"data.source={source.name!r} now gives rows of width {sae.d_in}; use a new --workdir or the original data"
        )
    try:
        restored, step, damaged = ckpt.restore_latest_good(state, is_good=lambda s: train.all_finite(s.params))
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"--workdir={workdir}: {e}; if sae.*, loss.* or optim.* changed, use a new --workdir") from None
    for bad_step, reason in damaged:
        print(f"warning: the checkpoint at step {bad_step} is damaged ({reason}); set it aside as "
              f"{ckpt.directory / f'{bad_step}.damaged'} and fell back to step {step}", file=sys.stderr, flush=True)
    if distributed.is_main_process():
        writers.drop_records_after(workdir, step)
    say(f"resumed from {ckpt.directory} at step {step}")
    return restored


def save_checkpoint(ckpt: checkpoint.Checkpointer, step: int, state: train.TrainState, loss, config_dict: dict,
                    last_saved: int | None) -> int:
    """Save `state` as `step` unless its loss or params are non-finite: then stop with an error
    naming the step and leave the last good checkpoint (`last_saved`) as it is. Returns `step`."""
    if not (np.isfinite(float(parallel.replicated_value(loss))) and train.all_finite(state.params)):
        kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was written"
        raise SaejaxError(f"the loss or the parameters became non-finite by step {step}; stopped before saving, "
                          f"{kept}; lower optim.lr or the loss coefficients, or check the data")
    ckpt.save(step, state, config_dict)
    return step


def make_placement(config, sae: SAE, loss, optimizer) -> parallel.Placement:
    """Where `parallel.strategy` puts the state and batches; sizes (and, with several processes,
    each process's rows) checked before anything compiles."""
    strategy, batch_size = config.parallel.strategy, config.train.batch_size
    mesh = None
    if strategy != "none":
        mesh = parallel.make_mesh(config.parallel.mesh_shape if strategy == "mesh" else "")
        parallel.check_sizes(mesh, sae, batch_size)
    abstract = train.abstract_train_state(sae, loss, optimizer)
    where = parallel.placement(strategy, mesh, sae, optimizer, abstract, batch_size)
    parallel.check_process_rows(where)
    return where


def run_training(config, workdir: Path, source, sae: SAE, loss, optimizer, writer,
                 where: parallel.Placement | None = None) -> tuple[train.TrainState, str | None]:
    """Initialise or resume (onto `where`'s shardings), then train to `config.train.steps`, or until
    SIGTERM/SIGINT (then the step in flight finishes and is checkpointed; with several processes,
    all stop after the same step). Returns (final state, the signal's name or None)."""
    t = config.train
    where = where or make_placement(config, sae, loss, optimizer)
    init_key, resample_key = jax.random.split(jax.random.key(config.seed))
    config_dict = json.loads(config.to_json_best_effort())
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=t.keep_checkpoints)
    shardings = where.state_shardings
    try:
        abstract = train.abstract_train_state(sae, loss, optimizer)
        if ckpt.latest_step() is None:
            state = initial_state(config, source, sae, loss, optimizer, init_key)
            if shardings is not None:
                state = parallel.put_state(state, shardings)
        else:  # resuming: the restore target needs shapes (and the current shardings) only, no data sample
            like = parallel.with_shardings(abstract, shardings) if shardings is not None else abstract
            state = restore_or_keep(workdir, source, sae, ckpt, like)
    except SaejaxError:
        ckpt.close()
        raise
    pure_step = train.make_train_step(sae, loss, optimizer, unit_norm_decoder=t.unit_norm_decoder,
                                      dead_steps=config.loss.dead_steps)
    def resample_fn(s, batch, k):  # over global arrays (pmap's [N, B/N, d_in] batch flattened)
        x = batch.reshape(-1, sae.d_in).astype(jnp.float32) * s.norm_scale
        return resample_dead_latents(sae, optimizer, s, x, k, config.loss.dead_steps)

    step_fn = where.compile(pure_step)
    # the resampled state stays on the run's shardings
    resample = jax.jit(resample_fn, out_shardings=None if shardings is None else (shardings, None))
    resample_until = t.resample_until or t.steps

    def next_batch(step):  # runs on the prefetch thread: read, check, and copy onto the device(s)
        return parallel.put_batch(read_local_batch(source, step, t.batch_size, sae.d_in), where)

    first = int(parallel.replicated_value(state.step))
    last_saved = first or None
    stopped = None
    try:
        with PreemptionGuard() as guard:
            vote = StopVote(where.mesh)
            for step, batch in prefetch(next_batch, range(first, t.steps)):
                state, step_metrics = step_fn(state, batch)
                done = step + 1
                if t.resample_every and done % t.resample_every == 0 and done < resample_until:
                    state, n = resample(state, batch, jax.random.fold_in(resample_key, done))
                    step_metrics = {**step_metrics, "resampled": n}
                if _due(done, t.log_every, t.steps):
                    logged = {k: parallel.replicated_value(v) for k, v in step_metrics.items()}
                    if getattr(source, "skipped_rows", 0):
                        logged["data/skipped_rows"] = source.skipped_rows
                    writer.write(done, logged)
                    check_finite_loss(logged["loss"], done, t.log_every)
                if vote.vote(guard.requested is not None):
                    stopped = guard.requested or "a signal to another process"
                if _due(done, t.checkpoint_every, t.steps) or stopped:
                    if done > collapse_check_from(config):
                        check_not_collapsed(step_metrics, done, last_saved)
                    last_saved = save_checkpoint(ckpt, done, state, step_metrics["loss"], config_dict, last_saved)
                if stopped:
                    break
    finally:
        ckpt.close()
    return state, stopped


# A run starts from a random dictionary, so its first steps may still reconstruct worse than the mean:
# the collapse guard looks only after the warm-up and after this many steps.
COLLAPSE_GRACE_STEPS = 100


def collapse_check_from(config) -> int:
    """The step after which a collapsed SAE stops the run: the end of warm-up, at least COLLAPSE_GRACE_STEPS."""
    return max(config.optim.warmup_steps, COLLAPSE_GRACE_STEPS)


def collapse(fvu: float, l0: float) -> str | None:
    """What is wrong with an SAE whose FVU and L0 on rows it was not trained on are these, or None:
    FVU >= 1 (no better than predicting the mean) or no latent firing on any row."""
    if not fvu < 1:  # NaN too
        return f"FVU {fvu:.4g} >= 1 (no better than predicting the mean)"
    if l0 == 0:
        return "no latent fires on any row"
    return None


def check_not_collapsed(step_metrics: dict, step: int, last_saved: int | None) -> None:
    """Stop a collapsed run before it saves: the step's FVU and L0 (measured on its batch before the
    update, rows these params were not trained on) must show a working SAE (`collapse`)."""
    problem = collapse(float(parallel.replicated_value(step_metrics["fvu"])),
                       float(parallel.replicated_value(step_metrics["l0"])))
    if problem:
        kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was written"
        raise SaejaxError(f"the SAE collapsed by step {step}: {problem} on its latest batch; stopped before saving, "
                          f"{kept}; lower optim.lr or the sparsity coefficients")


def check_finite_loss(loss: float, step: int, log_every: int) -> None:
    """Stop a diverged run (before its next checkpoint) with an error naming the step."""
    if not np.isfinite(loss):
        raise SaejaxError(
            f"the loss became {loss} by step {step} (checked every train.log_every={log_every} steps); "
            "lower optim.lr or the loss coefficients, or check the data"
        )


def evaluate(config, source, sae: SAE, state: train.TrainState) -> tuple[dict, np.ndarray, str]:
    """Inference-mode metrics on up to `train.eval_rows` rows of the source's held-out split (see
    `train.combine_evaluation`; "rows" says how many), the latents' firing density [d_sae] on them,
    and which split they come from: "held-out", or "train" for a source without a held-out split
    (then far-future batches of its training stream are measured, with a warning)."""
    wanted, batch_size = config.train.eval_rows, config.train.batch_size
    available = getattr(source, "heldout_rows", 0)
    split = "train" if available == 0 else "held-out"
    rows = wanted if available is None or split == "train" else min(wanted, available)
    if rows == 0:
        return {}, np.zeros(sae.d_sae), split
    if split == "train":
        say(f"warning: data.source={source.name!r} has no held-out split here; the final metrics are measured on "
            "batches of the training stream")

    def read(i):  # batch i of the split, whole (the rows past `rows` are not counted)
        if split == "train":
            return read_batch(source, EVAL_STEP_OFFSET + i, batch_size, sae.d_in)
        batch = source.heldout_batch(i, batch_size)
        check_batch(batch, i, f"{source.name} (held out)", sae.d_in)
        return batch

    def padded(batch):  # a short last batch filled up with zero rows: every batch has one shape
        return np.pad(batch, [(0, batch_size - batch.shape[0]), (0, 0)]) if batch.shape[0] < batch_size else batch

    sums_of = jax.jit(functools.partial(train.evaluation_sums, sae))  # compiled once: [batch_size, d_in]
    sums = [jax.device_get(sums_of(state.params, state.norm_scale, padded(read(i)[:batch_size]),
                                   np.int32(min(batch_size, rows - i * batch_size))))
            for i in range(-(-rows // batch_size))]
    scalars, density = train.combine_evaluation(sums)
    return scalars, density, split


def downstream_evaluation(workdir: Path, source, sae: SAE, state: train.TrainState) -> dict:
    """The held-out evaluation the source's task asks for (`saejax.downstream.evaluate_task`):
    anomaly ROC-AUC, or probe accuracy and the PCA baseline; {} for sources without a task."""
    scale = float(state.norm_scale)
    encode = jax.jit(lambda x: sae.encode(state.params, x * scale))
    decode = jax.jit(lambda z: sae.decode(state.params, z) / scale)
    return downstream.evaluate_task(source, encode, decode, workdir / "plots")


def splice_evaluation(config, workdir: Path, text_model, sae: SAE, state: train.TrainState) -> dict:
    """`saejax.splice.evaluate` on the run's held-out texts, as "splice/..." metrics; and the feature
    dashboards of `model.dashboard_latents` latents in workdir/dashboards."""
    params = export.fold_norm_scale(state.params, float(state.norm_scale))  # act on raw activations
    m = config.model
    texts = list(itertools.islice(harvest.run_texts(m, held_out=True), m.eval_texts))
    report = splice.evaluate(text_model, sae, params, texts, layer=m.layer, site=m.site,
                             context_length=m.context_length, max_texts=m.eval_texts)
    if m.dashboard_latents:
        dashboards.write(text_model, sae, params, texts, layer=m.layer, site=m.site, out_dir=workdir / "dashboards",
                         n_latents=m.dashboard_latents, max_texts=m.eval_texts, context_length=m.context_length)
    return {f"splice/{key}": value for key, value in report.items()}


def dictionary_recovery(source, params) -> dict:
    """For sources with a known ground-truth dictionary: MMCS and Hungarian-matched mean |cos|."""
    truth = getattr(source, "dictionary", None)
    if truth is None or "W_dec" not in params:
        return {}
    learned = np.asarray(params["W_dec"])
    return {
        "mmcs": float(metrics.mmcs(learned, truth)),
        "matched_mean_abs_cos": metrics.matched_mean_abs_cos(learned, truth),
    }


def save_training_plot(workdir: Path, records: list[dict]) -> None:
    """plots/training.png from the train records of metrics.jsonl (`writers.read_metrics`)."""
    from saejax import plots  # noqa: PLC0415 (matplotlib takes ~0.4 s to import)

    plots.plot_training_curves(records, workdir / "plots" / "training.png")


def save_dictionary_plots(workdir: Path, source, sae: SAE, params, density: np.ndarray) -> None:
    """plots/density.png from the latents' firing density [d_sae], and plots/atoms.png (the decoder
    rows as images, densest first) for image data."""
    from saejax import plots  # noqa: PLC0415 (matplotlib takes ~0.4 s to import)

    plots.plot_density_histogram(density, workdir / "plots" / "density.png")
    image_shape = getattr(source, "image_shape", None)
    if image_shape and "W_dec" in params:
        order = np.argsort(-density)
        plots.plot_atoms(np.asarray(params["W_dec"]), tuple(image_shape), workdir / "plots" / "atoms.png",
                         n=min(sae.d_sae, 256), order=order)


def replot(workdir: str | Path, rows: int = 16384) -> Path:
    """Draw `workdir`'s plots again from its metrics and latest good checkpoint (also mid-run, e.g.
    from another terminal), the densities measured on `rows` rows of its data. Returns plots/."""
    workdir = Path(workdir)
    params, config = analysis.load(workdir)
    source = data.make_source(config.data, config.seed, whole_batches=True)
    sae, _, _ = train.model_from_config(config, source.d_in)
    density = analysis.feature_density(analysis.encode(params, config, source.sample(rows)))
    save_training_plot(workdir, writers.read_metrics(workdir))
    save_dictionary_plots(workdir, source, sae, params, density)
    return workdir / "plots"


def save_export(workdir: Path, config, sae: SAE, state: train.TrainState) -> str:
    """SAELens-format export with the normalisation folded back in; returns what happened."""
    spec = registry.get(sae.arch)
    if spec.export is None:
        return f"skipped: sae.arch={sae.arch!r} has no SAELens equivalent"
    skip = spec.export_skip(sae.hparams)
    if skip:
        return skip
    params = jax.tree.map(np.asarray, state.params)
    path = export.export_saelens(
        workdir / "export", params, arch=sae.arch, d_in=sae.d_in, d_sae=sae.d_sae, k=sae.hparams["k"],
        norm_scale=float(state.norm_scale), metadata={"data_source": config.data.source, "seed": config.seed},
    )
    (Path(path) / analysis.EXPORT_CONFIG).write_text(config.to_json_best_effort(indent=2) + "\n")
    return str(path)


# data.* fields a resumed run may change: where the store lives, and what to do with bad rows (the
# usual fix after a NaN error). Everything else in data.* changes the stream, so it is refused.
RESUMABLE_DATA_FIELDS = ("path", "on_bad_rows")


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
    fields = {"seed": config_dict.get("seed"), "optim.name": config_dict.get("optim", {}).get("name")}
    for section in ("data", "sae"):
        fields.update({f"{section}.{k}": v for k, v in config_dict.get(section, {}).items()
                       if not (section == "data" and k in RESUMABLE_DATA_FIELDS)})
    fields.update({f"loss.{k} is on": bool(v) for k, v in config_dict.get("loss", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return fields


def _differences(saved: dict, current: dict) -> list[str]:
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(saved.keys() | current.keys())
            if saved.get(k) != current.get(k)]


def check_resumable(workdir: Path, config) -> None:
    """ConfigError listing the differing fields if `workdir` holds a run this config cannot resume;
    prints the harmless differences (steps, logging, coefficients ...) when it can."""
    saved_path = workdir / "config.json"
    if not (saved_path.exists() and any((workdir / "checkpoints").glob("[0-9]*"))):
        return
    saved_dict, current_dict = json.loads(saved_path.read_text()), json.loads(config.to_json_best_effort())
    differing = _differences(_resume_fields(saved_dict), _resume_fields(current_dict))
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


class _NoWriter:
    """What processes other than 0 log through: nothing."""

    def write(self, step, scalars, split="train") -> None:
        pass

    def close(self) -> None:
        pass


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename (other processes may be reading it)."""
    tmp = path.with_name(f".{path.name}.{jax.process_index()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Run the whole job a config describes (see module docstring); returns the summary dict.

    With several processes (`saejax.distributed`), every process trains; process 0 alone writes
    config.json, metrics, plots, the summary and the export, and evaluates."""
    start = time.perf_counter()
    config, notes = defaults.resolve(config)
    for note in notes:
        say(f"note: {note}")
    config_lib.validate(config)
    text_model = harvest.prepare_run(config, Path(workdir))  # model.name set: harvest first
    source, sae, loss, optimizer = _build(config)
    where = make_placement(config, sae, loss, optimizer)
    workdir = Path(workdir)
    check_resumable(workdir, config)
    main = distributed.is_main_process()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if main:
            _write_atomically(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: {e.strerror or e}") from None
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    say(f"{sae.arch} SAE d_in={sae.d_in} d_sae={sae.d_sae} on data.source={source.name!r}; "
        f"{jax.device_count()} {jax.default_backend()} device(s){processes}"
        + (f" as a {dict(where.mesh.shape)} mesh" if config.parallel.strategy == "mesh" else "")
        + (" as pmap replicas" if config.parallel.strategy == "pmap" else "") + f"; workdir {workdir}")

    writer = _NoWriter()
    if main:
        wandb_run = writers.start_wandb(workdir, json.loads(config.to_json_best_effort()), config.log.wandb_project,
                                        config.log.wandb_mode) if config.log.wandb else None
        writer = writers.MetricWriter(workdir, config.train.steps, tensorboard=config.log.tensorboard,
                                      progress=config.log.progress, wandb_run=wandb_run)
    # matplotlib draws on this thread while XLA evaluates on the main one; one worker: one plot at a time
    plotting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots")
    if main:  # matplotlib's import (~0.6 s) overlaps the compiles and steps instead of following them
        plotting.submit(importlib.import_module, "saejax.plots")
    try:
        state, preempted = run_training(config, workdir, source, sae, loss, optimizer, writer, where)
        if preempted:
            say(f"stopped by {preempted} at step {int(parallel.replicated_value(state.step))}; checkpoint saved in "
                f"{workdir / 'checkpoints'}; run the same command to resume")
            return {"preempted": preempted, "steps": int(parallel.replicated_value(state.step))}
        state = parallel.to_host(state)  # evaluation, plots and export work on host copies
        state = state._replace(params=train.eval_params(sae, state))  # schedule-free: the averaged params
        if not main:
            return {"steps": int(state.step), "process": jax.process_index()}
        training_plot = plotting.submit(save_training_plot, workdir, writers.read_metrics(workdir))
        eval_source = source if getattr(source, "process_count", 1) == 1 else data.make_source(
            config.data, config.seed, whole_batches=True)
        scalars, density, split = evaluate(config, eval_source, sae, state)
        training_plot.result()  # drawn while XLA evaluated; the task evaluation below may plot too
        problem = scalars and int(state.step) > collapse_check_from(config) and collapse(scalars["fvu"], scalars["l0"])
        if problem:
            raise SaejaxError(f"the SAE collapsed: {problem} on {scalars['rows']:.0f} {split} rows after step "
                              f"{int(state.step)}; no export written; lower optim.lr or the sparsity coefficients")
        scalars.update(dictionary_recovery(source, state.params))
        scalars.update(downstream_evaluation(workdir, source, sae, state))
        if text_model is not None:
            scalars.update(splice_evaluation(config, workdir, text_model, sae, state))
        writer.write(int(state.step), scalars, split="eval")
        dictionary_plots = plotting.submit(save_dictionary_plots, workdir, source, sae, state.params, density)
    finally:
        writer.close()
        plotting.shutdown(wait=True)
    dictionary_plots.result()  # a failed plot raises here
    summary = {
        "arch": sae.arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "steps": int(state.step),
        "eval": scalars, "eval_split": split, "export": save_export(workdir, config, sae, state),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
