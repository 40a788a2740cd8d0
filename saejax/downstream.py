"""What a trained SAE is good for besides reconstruction, measured on held-out rows: anomaly
detection by reconstruction error, sparse codes as features for a linear classifier, and PCA
as the baseline at an equal number of active components.

All functions take NumPy arrays and return floats or arrays; nothing here trains the SAE.
`evaluate_task` runs the evaluation a source's ``task`` calls for ("anomaly" or
"classification", see `saejax.data.table.TableSource`) after a run, and the same functions serve
notebooks (`saejax.analysis`).
"""

from pathlib import Path

import numpy as np

from saejax import probes
from saejax.errors import DataError


def reconstruction_errors(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Per-row squared error ||x - x̂||². [n, d], [n, d] -> [n]"""
    return np.sum(np.square(np.asarray(x, np.float64) - np.asarray(x_hat, np.float64)), axis=-1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` [n] for binary `labels` [n] (1 = positive): the
    probability that a random positive scores above a random negative, ties counting half
    (Mann–Whitney U with average ranks)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"ROC-AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    # average rank of each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) as the threshold sweeps down through `scores`."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.r_[0, np.cumsum(labels[order])]
    fp = np.r_[0, np.cumsum(~labels[order])]
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


# An FVU below this is the float64 round-off of an exact reconstruction (e.g. PCA keeping as many
# components as the rows have dimensions, when an SAE's L0 exceeds d_in: ~1e-30), reported as 0.
ROUNDOFF_FVU = 1e-12


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance unexplained, Σ||x - x̂||² / Σ||x - mean(x)||², over all rows; 0.0 for an
    exact reconstruction (below `ROUNDOFF_FVU`)."""
    x = np.asarray(x, np.float64)
    value = float(reconstruction_errors(x, x_hat).sum() / np.sum(np.square(x - x.mean(0))))
    return 0.0 if value < ROUNDOFF_FVU else value


def pca_reconstruction(train: np.ndarray, test: np.ndarray, n_components: int) -> np.ndarray:
    """`test` [m, d] projected onto the top `n_components` principal directions of `train` [n, d]
    (around train's mean) and back: PCA's best rank-n reconstruction. [m, d]"""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[: max(0, int(n_components))]
    return (test - mean) @ basis.T @ basis + mean


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                          steps: int = 500, learning_rate: float = 0.05, l2: float = 1e-4) -> float:
    """Test accuracy of a multinomial logistic regression fitted on (train_x [n, f], train_y [n])
    (`saejax.probes.fit`: full-batch Adam, features standardised with the training rows' statistics)."""
    n_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    probe = probes.fit(train_x, train_y, n_classes=n_classes, steps=steps, learning_rate=learning_rate, l2=l2)
    return float(np.mean(probe.predict(test_x) == np.asarray(test_y)))


def evaluate_task(source, encode, decode, plots_dir: str | Path | None = None) -> dict[str, float]:
    """The downstream evaluation `source.task` asks for, on its held-out rows; {} without one.

    encode: rows [n, d_in] -> codes [n, d_sae]; decode: codes -> reconstructions [n, d_in] (both
    on the source's rows as stored). Anomaly: ROC-AUC of the reconstruction error (plus score
    histogram and ROC plots in `plots_dir`). Classification: linear-probe accuracy on the codes vs
    the raw rows, and the SAE's test FVU vs PCA's with as many components as the mean L0.
    """
    test, labels, task = getattr(source, "test_table", None), getattr(source, "test_labels", None), getattr(
        source, "task", None)
    if test is None or labels is None or task is None or len(test) == 0:
        return {}
    codes = np.asarray(encode(test))
    x_hat = np.asarray(decode(codes))
    if task == "anomaly":
        scores = reconstruction_errors(test, x_hat)
        auc = roc_auc(scores, labels)
        if plots_dir is not None:
            from saejax import plots  # noqa: PLC0415 (matplotlib only when plotting)

            plots.plot_anomaly_scores(scores, labels, Path(plots_dir) / "anomaly_scores.png")
            plots.plot_roc(*roc_curve(scores, labels), auc, Path(plots_dir) / "roc.png")
        return {"anomaly_roc_auc": auc}
    if task == "classification":
        l0 = float(np.mean(np.sum(codes != 0, axis=-1)))
        train_codes = np.asarray(encode(source.table))
        return {
            "test_l0": l0,
            "test_fvu": fvu(test, x_hat),
            "pca_fvu_at_l0": fvu(test, pca_reconstruction(source.table, test, int(round(l0)))),
            "probe_accuracy_codes": linear_probe_accuracy(train_codes, source.labels, codes, labels),
            "probe_accuracy_raw": linear_probe_accuracy(source.table, source.labels, test, labels),
        }
    raise DataError(f"data.source={source.name!r} has an unknown task {task!r}")
