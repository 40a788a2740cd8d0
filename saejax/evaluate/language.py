"""Evaluators of an SAE trained on a text model's activations (`model.name` set): the splice
evaluation (the model's loss with the SAE's reconstruction in place of the activations; a
transcoder's in place of model.target_site's) and feature dashboards, both on the run's held-out
texts."""

import itertools

from saejax import dashboards, harvest, normalization, splice


def applies(run) -> str | None:
    """Why the text-model evaluators do not apply to `run`, or None."""
    return None if run.text_model is not None else "model.name is not set (no text model to splice into)"


def dashboards_apply(run) -> str | None:
    """Why the dashboards do not apply to `run`, or None."""
    return applies(run) or (None if run.config.model.dashboard_latents else "model.dashboard_latents is 0")


def _texts(config, found: dict) -> list[str]:
    """The run's `model.eval_texts` held-out texts: as an evaluator before found them ("held_out_texts";
    reading them takes seconds), else read here."""
    if "held_out_texts" in found:
        return found["held_out_texts"]
    m = config.model
    return list(itertools.islice(harvest.run_texts(m, held_out=True), m.eval_texts))


def splice_metrics(run, state, found: dict) -> dict:
    """`saejax.splice.evaluate` on the run's held-out texts, as "splice/..." metrics (and the texts, as
    "held_out_texts", for the dashboards)."""
    params = normalization.fold_norm(state.params, state.norm_scale)  # act on raw activations
    m, texts = run.config.model, _texts(run.config, found)
    report = splice.evaluate(run.text_model, run.sae, params, texts, layer=m.layer, site=m.site,
                             context_length=m.context_length, max_texts=m.eval_texts,
                             target_site=m.get("target_site") or None)
    return {**{f"splice/{key}": value for key, value in report.items()}, "held_out_texts": texts}


def feature_dashboards(run, state, found: dict) -> dict:
    """HTML dashboards of `model.dashboard_latents` latents in workdir/dashboards."""
    params = normalization.fold_norm(state.params, state.norm_scale)
    m = run.config.model
    dashboards.write(run.text_model, run.sae, params, _texts(run.config, found), layer=m.layer, site=m.site,
                     out_dir=run.workdir / "dashboards", n_latents=m.dashboard_latents, max_texts=m.eval_texts,
                     context_length=m.context_length)
    return {}
