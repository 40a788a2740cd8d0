"""What a source's own ground truth or task says about the trained SAE: dictionary recovery for data
with a known dictionary, anomaly ROC-AUC or probe accuracy (with the PCA baseline) for tabular tasks."""

import numpy as np

from saejax import absorption, downstream, metrics, normalization


def dictionary_applies(run) -> str | None:
    """Why dictionary recovery does not apply to `run`, or None."""
    if getattr(run.source, "dictionary", None) is None:
        return f"data.source={run.source.name!r} has no ground-truth dictionary"
    if not run.sae.spec.has_linear_decoder:
        return f"sae.arch={run.sae.arch!r} has no linear decoder rows"
    return None


HIERARCHY_ROWS = 16384  # held-out rows the absorption of a hierarchy's parents is measured on


def dictionary_recovery(run, state, found: dict) -> dict:
    """MMCS and Hungarian-matched mean |cos| (SAELens' MCC) of the decoder rows against the true
    dictionary; for a hierarchy of features also the absorption of its parents
    (`saejax.absorption.hierarchy`, on HIERARCHY_ROWS held-out rows): "absorption/rate",
    "absorption/fraction"."""
    learned, truth = np.asarray(state.params["W_dec"]), run.source.dictionary
    result = {"mmcs": float(metrics.mmcs(learned, truth)),
              "matched_mean_abs_cos": metrics.matched_mean_abs_cos(learned, truth)}
    if getattr(run.source, "parent", None) is None:
        return result
    codes = run.source.heldout_codes(0, HIERARCHY_ROWS)
    x_norm = np.asarray(normalization.normalize(codes @ run.source.dictionary,  # as the SAE reads rows
                                                normalization.input_scale(state.norm_scale)))
    z = np.asarray(run.sae.encode(state.params, x_norm))
    found_parents = absorption.hierarchy(x_norm, codes, run.source.parent, z, learned)
    return {**result, "absorption/rate": found_parents["absorption_rate"],
            "absorption/fraction": found_parents["absorption_fraction"],
            "absorption/parents_scored": float(found_parents["scored"])}


def task_applies(run) -> str | None:
    """Why the source's downstream task does not apply to `run`, or None."""
    if getattr(run.source, "task", None) is None:
        return f"data.source={run.source.name!r} has no downstream task"
    return None


def task(run, state, found: dict) -> dict:
    """The held-out evaluation the source's task asks for (`saejax.downstream.evaluate_task`):
    anomaly ROC-AUC, or probe accuracy and the PCA baseline, on the source's raw rows."""
    encode, decode = normalization.raw_codec(run.sae, state.params, float(state.norm_scale))
    return downstream.evaluate_task(run.source, encode, decode, run.workdir / "plots")
