"""Sparse probing of an SAE on labelled texts (Gurnee et al. 2023, as SAEBench's sparse probing runs
it): each text's activations at the hook point mean-pooled over its tokens, and its SAE latents
likewise; for each class (one against the rest) k-sparse probes on the pooled latents
(`saejax.probes.k_sparse`) beside a dense probe on the pooled activations.

    x, z = pooled(model, texts, layer, site, encode)            # [n, d_model], [n, F]
    report = sparse_probing(x, z, labels, names, ks=(1, 2, 5, 20))
    report = snippet_report(model, layer, site, encode)           # the language of source snippets, all of it
"""

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from saejax import harvest, probes, snippets
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
    score): {"classes": {name: {"dense": accuracy, "sparse": {k: accuracy}, "sparse_f1": {k: F1}}},
    "dense_accuracy", "sparse_accuracy": {k: mean over the classes}}."""
    cut = int(fit_share * len(labels))
    classes = {}
    for index, name in enumerate(names):
        y = np.asarray(labels) == index
        dense = probes.fit(x[:cut], y[:cut].astype(np.int32), n_classes=2, balanced=True)
        runs = probes.k_sparse(z[:cut], y[:cut], z[cut:], y[cut:], ks=ks)
        classes[name] = {"dense": float(np.mean((dense.margin(x[cut:]) > 0) == y[cut:])),
                         "sparse": {run.k: run.accuracy for run in runs}, "sparse_f1": {run.k: run.f1 for run in runs}}
    return {"classes": classes, "dense_accuracy": float(np.mean([c["dense"] for c in classes.values()])),
            "sparse_accuracy": {k: float(np.mean([c["sparse"][k] for c in classes.values()])) for k in ks}}


def snippet_report(model, layer: int, site: str, encode: Callable, per_language: int = 200,
                   context_length: int = 128) -> dict:
    """`sparse_probing` on the language of source snippets (`saejax.snippets`), with "task", "languages",
    "texts" and "seconds"."""
    start = time.perf_counter()
    texts, labels, names = snippets.snippets(per_language=per_language)
    x, z = pooled(model, texts, layer, site, encode, context_length=context_length)
    return {"task": "language of a source snippet", "languages": names, "texts": len(texts),
            **sparse_probing(x, z, labels, names), "seconds": round(time.perf_counter() - start, 1)}


def save(report: dict, folder: str | Path) -> Path:
    """`report` as folder/snippets.json; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "snippets.json").write_text(json.dumps(report, indent=1) + "\n")
    return folder / "snippets.json"
