"""Everything a run is made of, built once from its config: the completed config, the data
source, the SAE, loss and optimizer, where the state and batches live, (with `model.name`) the
text model whose activations were harvested, and (with several ``model.hookpoints``) the hook points
it trains an SAE on each of (`saejax.hookpoints`).

    run = prepare(config, workdir)         # checks everything that needs no data first
    for step, batch in batches(run, first):
        ...
"""

from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from saejax import config as config_lib, data, from_config, harvest, parallel, resampling, writers
from saejax.data import batches as batch_lib


class Run(NamedTuple):
    config: ml_collections.ConfigDict  # completed (`saejax.config.complete`)
    workdir: Path
    source: Any  # `saejax.data.Source`
    sae: Any  # `saejax.sae.SAE`
    loss: Any  # `saejax.losses.LossTerm`
    optimizer: optax.GradientTransformation
    where: parallel.Placement
    text_model: Any  # `saejax.models` TextModel, or None without model.name
    # several hook points: their names ("3/resid_post", ...), one SAE each, stacked (`saejax.hookpoints`); () = one SAE
    points: tuple[str, ...] = ()
    # the run of one of those SAEs (`saejax.hookpoints.point_run`): its point's name, its outputs' subfolder
    point: str = ""


def prepare(config, workdir: Path) -> Run:
    """The Run a config describes, its notes printed; with `model.name`, harvests first (data.source=npy)
    or streams (data.source=model).
    Everything that needs no training data is checked here, before anything compiles."""
    config, notes = config_lib.complete(config)
    for note in notes:
        writers.say(f"note: {note}")
    text_model = harvest.prepare_run(config, workdir)
    spread = config.parallel.strategy != "none" and config.data.get("forward_on_all_devices", False)
    forward_devices = jax.local_devices() if spread else None  # where a streamed model's forward runs
    source = data.make_source(config.data, config.seed, model=config.model, text_model=text_model,
                              forward_devices=forward_devices)
    sae, loss, optimizer = from_config.model_from_config(config, source.d_in, getattr(source, "d_out", None))
    points = tuple(getattr(source, "point_names", ()))
    where = parallel.placement_from_config(config, sae, loss, optimizer, points=len(points))
    return Run(config, workdir, source, sae, loss, optimizer, where, text_model, points)


def describe(run: Run) -> str:
    """One line saying what trains where."""
    config = run.config
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    strategy = config.parallel.strategy
    what = (f"transcoder d_in={run.sae.d_in} -> d_out={run.sae.d_out}" if run.sae.transcoder
            else f"SAE d_in={run.sae.d_in}")
    saes = (f"{len(run.points)} {run.sae.arch} SAEs (hook points {', '.join(run.points)}) d_in={run.sae.d_in}"
            if run.points else f"{run.sae.arch} {what}")
    sharing = f" fills{run.source.sharing}" if getattr(run.source, "sharing", "") else ""
    return (f"{saes} d_sae={run.sae.d_sae} on data.source={run.source.name!r}{sharing}; "
            f"{jax.device_count()} {jax.default_backend()} device(s){processes}"
            + (f" as a {dict(run.where.mesh.shape)} mesh" if strategy == "mesh" else "")
            + (" as pmap replicas" if strategy == "pmap" else "") + f"; workdir {run.workdir}")


def batches(run: Run, first: int):
    """(step, batch) for steps first .. train.steps - 1: this process's rows, checked and copied onto
    the run's devices on a background thread while the previous step runs."""
    t = run.config.train

    def next_batch(step):
        rows = batch_lib.read_local_batch(run.source, step, t.batch_size, run.sae.d_in)
        return parallel.put_batch(rows, run.where)

    return batch_lib.prefetch(next_batch, range(first, t.steps))


def resample_step(run: Run):
    """Jitted (state, batch, key) -> (state, resampled count): `resampling.resample_dead_latents`
    over the global batch (pmap's [N, B/N, d_in] flattened); the state stays on its shardings. Several
    hook points: each SAE of the stacked state in turn on its point's batch [P, B, d_in], with the same
    key (as each would be alone), the counts [P]."""
    shardings = run.where.state_shardings
    resample_one = resampling.resample_step(run.sae, run.optimizer, run.config.loss.dead_steps)

    def resample_each(state, batch, key):
        return jax.lax.map(lambda pair: resample_one(*pair, key), (state, batch))

    resample = resample_each if run.points else resample_one
    return jax.jit(resample, out_shardings=None if shardings is None else (shardings, None))
