"""What a run would do, without doing it: `experiments/train.py --dry_run`.

    print(describe(config, workdir))

builds what the run would build (the completed config, the data source, the SAE, loss and
optimizer, the device placement) and reports the data's rows and width, the SAE's parameters, the
memory its state and a batch take, the steps, and what lands where in `workdir`. Nothing is
trained, compiled, harvested or written, and `workdir` is not created.
"""

from pathlib import Path

import jax
import numpy as np

from saejax import assemble, cli, config as config_lib, data, evaluate, from_config, parallel
from saejax.step import abstract_train_state

BATCH_DTYPE_BYTES = 4  # a batch reaches the step as float32 [batch_size, d_in]


def tree_bytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct) leaf of `tree`."""
    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def tree_size(tree) -> int:
    """Number of elements of every array leaf of `tree`."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"


def rows_of(source) -> str:
    """What the source holds: its training and held-out rows, or that it generates rows."""
    if source.name == "model":
        return source.description
    heldout = getattr(source, "heldout_rows", None)
    if hasattr(source, "n_rows"):  # a store: training rows per epoch
        return f"{source.n_rows} training rows, {heldout} held out"
    if hasattr(source, "table"):
        return f"{source.table.shape[0]} training rows, {heldout} held out"
    if hasattr(source, "pool"):
        return f"a pool of {source.pool.shape[0]} training rows; held-out rows drawn apart"
    return "rows generated on the fly (no fixed number); held-out rows from their own stream"


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps of the checkpoints in workdir/checkpoints, oldest first (none when there are none)."""
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def outputs(config, evaluators: list[str]) -> list[str]:
    """What the run writes into its workdir, by the config's logging and evaluators."""
    written = ["config.json", "metrics.jsonl", "checkpoints/", "summary.json"]
    written += ["tensorboard/"] if config.log.tensorboard else []
    written += ["wandb/"] if config.log.wandb and config.log.wandb_mode == "offline" else []
    written += ["plots/"] if {"curves", "plots"} & set(evaluators) else []
    written += ["dashboards/"] if "dashboards" in evaluators else []
    written += ["export/"] if "export" in evaluators else []
    return written


def describe(config, workdir: str | Path) -> str:
    """The resolved config and the run's plan (data, SAE, parameters, memory, steps, outputs), as
    printed by --dry_run. Raises what the run would raise before its first step (ConfigError,
    DataError), except for checks that need the harvested activations of `model.name`."""
    workdir = Path(workdir)
    config, notes = config_lib.complete(config)
    if config.model.name and config.data.source == "npy" and not config.data.path:
        config.data.path = str(workdir / "activations")
    lines = ["resolved config:", *(f"  {line}" for line in cli.config_lines(config)), *(f"note: {n}" for n in notes)]
    harvested = (not config.model.name or config.data.source == "model"
                 or (Path(config.data.path) / "manifest.json").exists())
    if not harvested:
        return "\n".join(lines + [f"data: would first harvest up to {config.model.max_tokens} activation rows of "
                                  f"model.name={config.model.name!r} layer {config.model.layer} {config.model.site} "
                                  f"into {config.data.path}; d_in and the SAE's size follow from the model",
                                  *_writes(config, workdir, None), _NOTHING_DONE])
    source = data.make_source(config.data, config.seed, model=config.model)  # a model source computes nothing yet
    sae, loss, optimizer = from_config.model_from_config(config, source.d_in, getattr(source, "d_out", None))
    where = parallel.placement_from_config(config, sae, loss, optimizer)
    run = assemble.Run(config, workdir, source, sae, loss, optimizer, where, None)
    state = abstract_train_state(sae, loss, optimizer)
    t = config.train
    params, optimizer_state = tree_bytes(state.params), tree_bytes(state.opt_state)
    width = sae.d_in + (sae.d_out if sae.transcoder else 0)  # a transcoder's batch: inputs and targets
    batch = t.batch_size * width * BATCH_DTYPE_BYTES
    lines += [
        f"data: data.source={source.name!r}, d_in={sae.d_in}; {rows_of(source)}",
        f"SAE: {sae.arch}, d_in={sae.d_in}, d_sae={sae.d_sae}, {tree_size(state.params):,} parameters"
        + (f" (a transcoder to d_out={sae.d_out})" if sae.transcoder else ""),
        f"memory: params {megabytes(params)} + optimizer state {megabytes(optimizer_state)} + a batch "
        f"[{t.batch_size}, {width}] {megabytes(batch)} = {megabytes(params + optimizer_state + batch)} "
        f"(not counting the step's activations, [batch, d_sae] each)",
        f"training: {t.steps} steps of {t.batch_size} rows ({t.steps * t.batch_size:,} rows) on "
        f"{jax.device_count()} {jax.default_backend()} device(s), parallel.strategy={config.parallel.strategy!r}; "
        f"a checkpoint every {t.checkpoint_every or t.steps} steps (keeping {t.keep_checkpoints})",
        *_writes(config, workdir, evaluate.selected(run)),
        _NOTHING_DONE,
    ]
    return "\n".join(lines)


_NOTHING_DONE = "dry run: nothing was trained or written"


def _writes(config, workdir: Path, evaluators: list[str] | None) -> list[str]:
    """The lines saying where the run starts from and what it writes (evaluators None: not known yet)."""
    steps = checkpoint_steps(workdir)
    start = (f"resumes from the latest good checkpoint of {workdir / 'checkpoints'} (steps {steps}) if its config "
             "matches" if steps else "starts from step 0")
    after = "decided once the data is known" if evaluators is None else ", ".join(evaluators) or "nothing"
    return [f"start: {start}", f"after training: {after} (train.evaluators={config.train.evaluators!r})",
            f"writes into {workdir}: {', '.join(outputs(config, evaluators or []))}"]
