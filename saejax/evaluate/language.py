"""Evaluators of an SAE trained on a text model's activations (`model.name` set): the splice
evaluation (the model's loss with the SAE's reconstruction in place of the activations) and feature
dashboards, both on the run's held-out texts."""

import itertools

from saejax import dashboards, harvest, normalization, splice


def applies(run) -> str | None:
    """Why the text-model evaluators do not apply to `run`, or None."""
    return None if run.text_model is not None else "model.name is not set (no text model to splice into)"


def dashboards_apply(run) -> str | None:
    """Why the dashboards do not apply to `run`, or None."""
    return applies(run) or (None if run.config.model.dashboard_latents else "model.dashboard_latents is 0")


def _texts(config) -> list[str]:
    m = config.model
    return list(itertools.islice(harvest.run_texts(m, held_out=True), m.eval_texts))


def splice_metrics(run, state, found: dict) -> dict:
    """`saejax.splice.evaluate` on the run's held-out texts, as "splice/..." metrics."""
    params = normalization.fold(state.params, float(state.norm_scale))  # act on raw activations
    m = run.config.model
    report = splice.evaluate(run.text_model, run.sae, params, _texts(run.config), layer=m.layer, site=m.site,
                             context_length=m.context_length, max_texts=m.eval_texts)
    return {f"splice/{key}": value for key, value in report.items()}


def feature_dashboards(run, state, found: dict) -> dict:
    """HTML dashboards of `model.dashboard_latents` latents in workdir/dashboards."""
    params = normalization.fold(state.params, float(state.norm_scale))
    m = run.config.model
    dashboards.write(run.text_model, run.sae, params, _texts(run.config), layer=m.layer, site=m.site,
                     out_dir=run.workdir / "dashboards", n_latents=m.dashboard_latents, max_texts=m.eval_texts,
                     context_length=m.context_length)
    return {}
