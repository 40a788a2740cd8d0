"""Files a run leaves for people and other tools: plots/training.png (the logged curves),
plots/density.png and plots/atoms.png (image data) from the held-out density, and the SAELens-format
export (a transcoder's in SAELens' transcoder layout) with the normalisation folded back in. The SAE of
one hook point of several (`run.point`, `saejax.hookpoints`) leaves them in subfolders named by the
point: plots/3/resid_post/, export/3/resid_post/."""

from pathlib import Path

import jax
import numpy as np

from saejax import analysis, data, export, from_config, normalization, writers


def save_training_plot(workdir: Path, records: list[dict], point: str = "") -> None:
    """plots/training.png (plots/POINT/training.png) from the train records of metrics.jsonl
    (`writers.read_metrics`)."""
    from saejax import plots  # noqa: PLC0415 (matplotlib takes ~0.4 s to import)

    plots.plot_training_curves(records, workdir / "plots" / point / "training.png")


def save_dictionary_plots(workdir: Path, source, sae, params, density: np.ndarray, point: str = "") -> None:
    """plots/density.png (plots/POINT/density.png) from the latents' firing density [d_sae], and
    plots/atoms.png (the decoder rows as images, densest first) for image data."""
    from saejax import plots  # noqa: PLC0415 (matplotlib takes ~0.4 s to import)

    plots.plot_density_histogram(density, workdir / "plots" / point / "density.png")
    image_shape = getattr(source, "image_shape", None)
    if image_shape and "W_dec" in params:
        order = np.argsort(-density)
        plots.plot_atoms(np.asarray(params["W_dec"]), tuple(image_shape), workdir / "plots" / point / "atoms.png",
                         n=min(sae.d_sae, 256), order=order, ordered_by="firing density, densest first")


def point_records(records: list[dict], point: str) -> list[dict]:
    """The records of hook point `point`'s metrics ("3/resid_post/fvu"), under their plain names
    ("fvu"); `records` as they are for point ""."""
    if not point:
        return records
    prefix = f"{point}/"
    return [{"step": record.get("step"), **{k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}}
            for record in records]


def curves(run, state, found: dict) -> dict:
    """The evaluator drawing plots/training.png (plots/POINT/training.png for a hook point's SAE)."""
    save_training_plot(run.workdir, point_records(writers.read_metrics(run.workdir), run.point), run.point)
    return {}


def dictionary_plots(run, state, found: dict) -> dict:
    """The evaluator drawing plots/density.png (+ atoms.png) from the held-out density (zeros
    without the heldout evaluator)."""
    density = found.get("density", np.zeros(run.sae.d_sae))
    save_dictionary_plots(run.workdir, run.source, run.sae, state.params, density, run.point)
    return {}


def save_export(workdir: Path, config, sae, state, point: str = "") -> str:
    """SAELens-format export (in workdir/export, or workdir/export/POINT for a hook point's SAE) with the
    normalisation folded back in; returns what happened."""
    spec = sae.spec
    if sae.transcoder and export.saelens_transcoder(sae.arch) is None:
        return f"skipped: SAELens has no {sae.arch} transcoder"
    if spec.export is None:
        return f"skipped: sae.arch={sae.arch!r} has no SAELens equivalent"
    skip = spec.export_skip(sae.hparams)
    if skip:
        return skip
    params = jax.tree.map(np.asarray, state.params)
    metadata = {"data_source": config.data.source, "seed": config.seed, **({"hook_point": point} if point else {})}
    if sae.transcoder:
        input_scale, target_scale = normalization.scales(state.norm_scale)
        path = export.export_transcoder(workdir / "export" / point, params, arch=sae.arch, d_in=sae.d_in,
                                        d_out=sae.d_out, d_sae=sae.d_sae, k=sae.hparams["k"], input_scale=input_scale,
                                        target_scale=target_scale, metadata=metadata)
    else:
        path = export.export_saelens(workdir / "export" / point, params, arch=sae.arch, d_in=sae.d_in, d_sae=sae.d_sae,
                                     k=sae.hparams["k"], norm_scale=float(state.norm_scale), metadata=metadata)
    (Path(path) / analysis.EXPORT_CONFIG).write_text(config.to_json_best_effort(indent=2) + "\n")
    return str(path)


def export_sae(run, state, found: dict) -> dict:
    """The evaluator writing workdir/export (export/POINT); "export" says where (or why not)."""
    return {"export": save_export(run.workdir, run.config, run.sae, state, run.point)}


def replot(workdir: str | Path, rows: int = 16384, point: str = "") -> Path:
    """Draw `workdir`'s plots again from its metrics and latest good checkpoint (also mid-run, e.g.
    from another terminal), the densities measured on `rows` rows of its data. A workdir of several
    hook points: those of hook `point`'s SAE ("3/resid_post"), into plots/POINT. Returns the folder."""
    workdir = Path(workdir)
    params, config = analysis.load(workdir, point or None)
    source = data.make_source(config.data, config.seed, whole_batches=True, model=config.model)
    sae = from_config.sae_of(config, source.d_in, getattr(source, "d_out", None))
    density = analysis.feature_density(analysis.encode(params, config, source.sample(rows)))
    save_training_plot(workdir, point_records(writers.read_metrics(workdir), point), point)
    save_dictionary_plots(workdir, source, sae, params, density, point)
    return workdir / "plots" / point
