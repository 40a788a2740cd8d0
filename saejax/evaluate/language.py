"""Evaluators of an SAE trained on a text model's activations (`model.name` set): the splice
evaluation (the model's loss with the SAE's reconstruction in place of the activations; a
transcoder's in place of model.target_site's) and feature dashboards, both on the run's held-out
texts, feature absorption on the first-letter task (`saejax.first_letter`) and sparse probing on
labelled texts (`saejax.text_probing`)."""

import functools
import itertools

import numpy as np

from saejax import dashboards, first_letter, harvest, normalization, splice, text_probing
from saejax.errors import ConfigError, DataError


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
    """HTML dashboards of `model.dashboard_latents` latents in workdir/dashboards (dashboards/POINT for a
    hook point's SAE), with the first-letter absorption and the probing reports when the run made them."""
    params = normalization.fold_norm(state.params, state.norm_scale)
    m = run.config.model
    dashboards.write(run.text_model, run.sae, params, _texts(run.config, found), layer=m.layer, site=m.site,
                     out_dir=run.workdir / "dashboards" / run.point, n_latents=m.dashboard_latents,
                     max_texts=m.eval_texts, context_length=m.context_length,
                     absorption=first_letter.load_report(run.workdir / "absorption" / run.point),
                     probing=text_probing.load_reports(run.workdir / "probing" / run.point))
    return {}


def absorption_applies(run) -> str | None:
    """Why the first-letter absorption evaluator does not apply to `run`, or None."""
    if reason := applies(run):
        return reason
    if run.sae.transcoder or not run.sae.spec.has_linear_decoder:
        return "absorption needs an SAE with linear decoder rows on one hook point (not a transcoder)"
    return None if run.config.model.get("absorption_words", 0) else "model.absorption_words is 0"


def first_letter_absorption(run, state, found: dict) -> dict:
    """Feature absorption on the first-letter task with `model.absorption_words` words: the report in
    workdir/absorption/first_letter.json and .png (absorption/POINT/ for a hook point's SAE), its means
    as "absorption/rate", "absorption/fraction", "absorption/letters", "absorption/sparse_probe_f1_k{1,2,5}"."""
    params = normalization.fold_norm(state.params, state.norm_scale)
    m = run.config.model
    report = first_letter.measure_sae(run.text_model, m.layer, m.site, lambda x: run.sae.encode(params, x),
                                      np.asarray(params["W_dec"]), n_words=m.absorption_words)
    first_letter.save(report, run.workdir / "absorption" / run.point)
    f1 = report["sparse_probe_f1"] or [float("nan")] * 5
    return {"absorption/rate": report["absorption_rate"], "absorption/fraction": report["absorption_fraction"],
            "absorption/letters": float(report["scored"]),
            **{f"absorption/sparse_probe_f1_k{k}": f1[k - 1] for k in (1, 2, 5)}}


def probing_applies(run) -> str | None:
    """Why the sparse-probing evaluator does not apply to `run`, or None; ConfigError when
    `model.probing_tasks` names an unknown task or one whose data is not installed."""
    if reason := applies(run):
        return reason
    if not run.config.model.get("probing_snippets", 0):
        return "model.probing_snippets is 0"
    try:
        text_probing.task_names(run.config.model.get("probing_tasks", "auto"))
    except DataError as e:
        raise ConfigError(f"model.probing_tasks: {e}") from None
    return None


def text_probing_tasks(run, state, found: dict) -> dict:
    """k-sparse probing on each task of `model.probing_tasks` with `model.probing_snippets` texts a class
    (`saejax.text_probing.task_report`), saved as workdir/probing/TASK.json (probing/POINT/ for a hook
    point's SAE); `text_probing.summary_metrics`: "probing/TASK/dense_accuracy",
    "probing/TASK/sparse_accuracy_k{1,2,5,20}" and their means over the tasks as "probing/dense_accuracy", ..."""
    params = normalization.fold_norm(state.params, state.norm_scale)
    m = run.config.model
    reports, encode = [], functools.partial(run.sae.encode, params)
    for task in text_probing.task_names(m.get("probing_tasks", "auto")):
        reports.append(text_probing.task_report(run.text_model, m.layer, m.site, encode, task,
                                                per_class=m.probing_snippets, context_length=m.context_length))
        text_probing.save(reports[-1], run.workdir / "probing" / run.point)
    return text_probing.summary_metrics(reports)
