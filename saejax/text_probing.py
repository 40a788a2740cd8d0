"""Sparse probing of an SAE on labelled texts (Gurnee et al. 2023, as SAEBench's sparse probing runs it;
the texts of `saejax.labelled_texts`: the language of source code or of a sentence, the sentiment of a
word): each text's activations at the hook point mean-pooled over its tokens, and its SAE latents
likewise; for each class (one against the rest) k-sparse probes on the pooled latents
(`saejax.probes.k_sparse`) beside a dense probe on the pooled activations.

    x, z = pooled(model, texts, layer, site, encode)            # [n, d_model], [n, F]
    report = sparse_probing(x, z, labels, names, ks=(1, 2, 5, 20))
    report = task_report(model, layer, site, encode, "language")  # one task of saejax.labelled_texts
"""

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from saejax import harvest, labelled_texts, plots, probes
from saejax.errors import DataError
from saejax.models.loading import padded_batch


def pooled(model, texts: list[str], layer: int, site: str, encode: Callable, batch_size: int = 16,
           context_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [n, d_model], z float32 [n, F]): each text's activations at (layer, site) and its
    latents (`encode`: rows [m, d_model] -> [m, F]), each the mean over the text's kept tokens."""
    capture = harvest.capture_at(model, layer, site)
    xs, zs = [], []
    for start in range(0, len(texts), batch_size):
        ids, mask, keep = padded_batch(model, texts[start:start + batch_size], context_length)
        acts = np.asarray(capture(model.params, ids, mask), np.float32)
        rows, owner = acts[keep], np.nonzero(keep)[0]  # the kept tokens' rows and the text each is of
        latents = np.asarray(encode(rows), np.float32)
        counts = np.maximum(np.bincount(owner, minlength=ids.shape[0]), 1)[:, None]
        for per_text, values in ((xs, rows), (zs, latents)):
            sums = np.zeros((ids.shape[0], values.shape[1]), np.float32)
            np.add.at(sums, owner, values)
            per_text.append(sums / counts)
    return np.concatenate(xs), np.concatenate(zs)


def sparse_probing(x: np.ndarray, z: np.ndarray, labels: np.ndarray, names: Sequence[str],
                   ks: Sequence[int] = (1, 2, 5, 20), fit_share: float = 0.5) -> dict:
    """For each class, a balanced one-against-the-rest probe on the pooled activations x [n, d] ("dense")
    and k-sparse probes on the pooled latents z [n, F] (the first `fit_share` of the rows fit, the rest
    score; accuracy is `probes.balanced_accuracy`, 0.5 at chance): {"classes": {name: {"dense": accuracy,
    "sparse": {k: accuracy}, "sparse_f1": {k: F1}, "latents": the largest k's latents, best first}},
    "dense_accuracy", "sparse_accuracy": {k: mean over the classes}}."""
    cut = int(fit_share * len(labels))
    classes = {}
    for index, name in enumerate(names):
        y = np.asarray(labels) == index
        dense = probes.fit(x[:cut], y[:cut].astype(np.int32), n_classes=2, balanced=True)
        runs = probes.k_sparse(z[:cut], y[:cut], z[cut:], y[cut:], ks=ks)
        classes[name] = {"dense": probes.balanced_accuracy(dense.margin(x[cut:]) > 0, y[cut:]),
                         "sparse": {run.k: run.accuracy for run in runs}, "sparse_f1": {run.k: run.f1 for run in runs},
                         "latents": [int(i) for i in runs[-1].latents]}
    return {"classes": classes, "dense_accuracy": float(np.mean([c["dense"] for c in classes.values()])),
            "sparse_accuracy": {k: float(np.mean([c["sparse"][k] for c in classes.values()])) for k in ks}}


def task_names(setting: str) -> list[str]:
    """The probing tasks a `model.probing_tasks` setting names: "auto" = every task of
    `labelled_texts.TASKS` whose data is installed, else a comma-separated list of them; DataError on an
    unknown name or a task whose data is not installed (naming its package)."""
    if setting == "auto":
        return [task for task in labelled_texts.TASKS if labelled_texts.available(task)]
    names = [name.strip() for name in setting.split(",") if name.strip()]
    unknown = [name for name in names if name not in labelled_texts.TASKS]
    if unknown or not names:
        raise DataError(f"probing tasks {setting!r}: expected auto or a comma-separated list of "
                        f"{', '.join(labelled_texts.TASKS)}")
    missing = [name for name in names if not labelled_texts.available(name)]
    if missing:
        packages = ", ".join(labelled_texts.PACKAGES[task] for task in missing)
        raise DataError(f"{', '.join(missing)} read texts from {packages}, not installed: "
                        f"pip install -e \".[probing]\"")
    return names


def task_report(model, layer: int, site: str, encode: Callable, task: str = "code", per_class: int = 200,
                context_length: int = 128) -> dict:
    """`sparse_probing` on one task of `saejax.labelled_texts` (`per_class` texts a class), with "task",
    "description", "class_names", "texts" and "seconds"."""
    start = time.perf_counter()
    texts, labels, names = labelled_texts.load(task, per_class)
    x, z = pooled(model, texts, layer, site, encode, context_length=context_length)
    return {"task": task, "description": labelled_texts.DESCRIPTIONS[task], "class_names": names, "texts": len(texts),
            **sparse_probing(x, z, labels, names), "seconds": round(time.perf_counter() - start, 1)}


def summary_metrics(reports: list[dict]) -> dict:
    """summary.json's probing metrics: per task "probing/TASK/dense_accuracy" and
    "probing/TASK/sparse_accuracy_kK", and the means over the tasks without the task's name."""
    metrics = {}
    for report in reports:
        metrics[f"probing/{report['task']}/dense_accuracy"] = report["dense_accuracy"]
        for k, accuracy in report["sparse_accuracy"].items():
            metrics[f"probing/{report['task']}/sparse_accuracy_k{k}"] = accuracy
    metrics["probing/dense_accuracy"] = float(np.mean([r["dense_accuracy"] for r in reports]))
    for k in reports[0]["sparse_accuracy"]:
        metrics[f"probing/sparse_accuracy_k{k}"] = float(np.mean([r["sparse_accuracy"][k] for r in reports]))
    return metrics


def load_reports(folder: str | Path) -> list[dict]:
    """The task reports `save` wrote into `folder` (sorted by task; [] when there are none)."""
    folder = Path(folder)
    found = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [report for report in found if isinstance(report, dict) and report.get("task") in labelled_texts.TASKS]


def save(report: dict, folder: str | Path) -> Path:
    """`report` as folder/TASK.json, with its plot TASK.png (`plots.plot_sparse_probing`); returns the
    JSON's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report['task']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    plots.plot_sparse_probing(report, folder / f"{report['task']}.png")
    return path
