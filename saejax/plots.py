"""Figures for SAE runs: decoder atoms, training curves, feature-density histograms.

Figures are built with `matplotlib.figure.Figure` (Agg canvas), never pyplot, so nothing
opens a window or touches global backend state. Each function writes a PNG (or any
format matplotlib infers from the suffix), creates missing parent directories and
returns the path. Every figure carries a caption across its top saying what it shows.
"""

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saejax.errors import SaejaxError
from saejax.metrics import log10_density_histogram

# (metrics-dict key, panel title) of the training-curve panels, in order.
CURVE_PANELS = (
    ("loss", "loss"),
    ("l0", "L0"),
    ("fvu", "FVU"),
    ("dead_fraction", "dead fraction"),
)


CAPTION_FONTSIZE = 8.0


def _wrapped(text: str, width_inches: float, fontsize: float = CAPTION_FONTSIZE) -> str:
    """`text` broken into lines that fit `width_inches` at `fontsize` (about 0.55 em a character)."""
    return textwrap.fill(text, max(24, int(width_inches * 72 / (0.55 * fontsize))), break_on_hyphens=False)


def _caption(fig: Figure, text: str) -> None:
    """The caption across the top of `fig` (its suptitle), wrapped to the figure's width."""
    fig.suptitle(_wrapped(text, fig.get_figwidth()), fontsize=CAPTION_FONTSIZE)


def _save(fig: Figure, path: str | Path) -> Path:
    """Write fig to path (making parent dirs) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=100)
    return out


def _atom_rows(
    W_dec: np.ndarray, n: int, order: Sequence[int] | None
) -> np.ndarray:
    """The (up to) n decoder rows to draw, in `order` if given. W_dec: [d_sae, d_in]."""
    idx = np.arange(W_dec.shape[0]) if order is None else np.asarray(order, int)
    return idx[: max(0, n)]


def atom_mosaic(atoms: np.ndarray, patch_shape: tuple[int, int], cols: int) -> np.ndarray:
    """One image of `atoms` [n, h·w] laid out row-major `cols` to a row, each scaled to its own
    max |value| (so in [-1, 1]) and framed by a one-pixel NaN gap: [rows·(h+1) − 1, cols·(w+1) − 1]."""
    h, w = patch_shape
    rows = max(1, math.ceil(len(atoms) / cols))
    scaled = atoms / np.maximum(np.abs(atoms).max(axis=1, keepdims=True), 1e-12)
    tiles = np.full((rows * cols, h + 1, w + 1), np.nan, np.float32)
    tiles[:len(atoms), :h, :w] = scaled.reshape(-1, h, w)
    mosaic = tiles.reshape(rows, cols, h + 1, w + 1).transpose(0, 2, 1, 3).reshape(rows * (h + 1), cols * (w + 1))
    return mosaic[:-1, :-1]


def plot_atoms(
    W_dec: np.ndarray,
    patch_shape: tuple[int, int],
    path: str | Path,
    n: int = 64,
    order: Sequence[int] | None = None,
    ordered_by: str | None = None,
) -> Path:
    """Grid of decoder rows drawn as grayscale patches, under a caption saying so.

    W_dec: [d_sae, d_in] with d_in == h * w for patch_shape (h, w). Each atom is scaled
    to its own max |value| on a symmetric gray colormap (0 = mid-gray). order: latent
    indices to draw first (e.g. np.argsort(-density) for most-used first); the first
    n of them (default: latents 0..n-1) are drawn, row-major. ordered_by: what `order`
    follows, for the caption (e.g. "firing density, densest first").
    """
    W = np.asarray(W_dec, dtype=np.float32)
    h, w = patch_shape
    if W.ndim != 2 or W.shape[1] != h * w:
        raise SaejaxError(
            f"plot_atoms: W_dec shape {W.shape} does not match patch_shape {(h, w)}"
        )
    idx = _atom_rows(W, n, order)
    cols = max(1, math.ceil(math.sqrt(len(idx))))
    rows = max(1, math.ceil(len(idx) / cols))
    order_note = f", ordered by {ordered_by}" if ordered_by else (", in the given order" if order is not None else "")
    width = max(cols * 0.9, 3.6)
    caption = _wrapped(f"Decoder atoms: {len(idx)} of the {W.shape[0]} latents' decoder rows as {h}x{w} images"
                       f"{order_note}, each scaled to its own largest |value| (mid-gray = 0)", width)
    caption_height = (caption.count("\n") + 1) * CAPTION_FONTSIZE * 1.4 / 72 + 0.1  # inches
    height = rows * 0.9 + caption_height
    fig = Figure(figsize=(width, height))
    fig.suptitle(caption, y=1 - 0.05 / height, va="top", fontsize=CAPTION_FONTSIZE)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - caption_height / height - 0.01))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(atom_mosaic(W[idx], (h, w), cols), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    return _save(fig, path)


def _series(metrics: Sequence[dict[str, Any]], key: str) -> tuple[list, list]:
    """(steps, values) of the finite scalar values logged under key."""
    steps, values = [], []
    for i, row in enumerate(metrics):
        if key not in row:
            continue
        value = float(np.asarray(row[key]))
        if math.isfinite(value):
            steps.append(float(np.asarray(row.get("step", i))))
            values.append(value)
    return steps, values


def plot_training_curves(metrics: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss, L0, FVU and dead fraction against step, one panel each.

    metrics: a list of dicts (one per log step) with an optional "step" (default: the
    row's index) and any of the keys in CURVE_PANELS; panels without data are skipped.
    """
    panels = [(key, title, *_series(metrics, key)) for key, title in CURVE_PANELS]
    panels = [p for p in panels if p[2]]
    fig = Figure(figsize=(4.0 * max(1, len(panels)), 3.4))
    shown = ", ".join(title for _, title, _, _ in panels) or "nothing logged yet"
    _caption(fig, f"Training curves: {shown} of the training batches, against the step (metrics.jsonl)")
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no metrics logged", ha="center", va="center")
        ax.set_axis_off()
    for i, (_, title, steps, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(steps, values, marker="." if len(values) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_density_histogram(
    density: np.ndarray, path: str | Path, bins: int = 32
) -> Path:
    """Histogram of log10 feature density, with the never-firing count in the title, under a caption.

    density: [d_sae] fraction of inputs on which each latent fires (see
    metrics.feature_density); bins span log10 density from -8 to 0.
    """
    counts, edges, n_never = log10_density_histogram(np.asarray(density), bins=bins)
    counts, edges = np.asarray(counts), np.asarray(edges)
    fig = Figure(figsize=(5.0, 3.4))
    _caption(fig, "Feature density: how many latents fire on what share of the rows (log10 of the fraction of "
                  "rows each latent is active on)")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black",
           linewidth=0.3)
    ax.set_xlabel("log10 feature density")
    ax.set_ylabel("latents")
    ax.set_title(f"{int(counts.sum())} alive, {int(n_never)} never fired")
    fig.tight_layout()
    return _save(fig, path)


def plot_anomaly_scores(scores: np.ndarray, labels: np.ndarray, path: str | Path, bins: int = 50) -> Path:
    """Histograms of log10 anomaly scores (e.g. reconstruction errors [n]) for normal (label 0)
    and anomalous (label 1) rows, each normalised to its own count."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    logs = np.log10(np.maximum(scores, 1e-12))
    edges = np.linspace(logs.min(), logs.max() + 1e-9, bins + 1)
    fig = Figure(figsize=(5.0, 3.4))
    _caption(fig, "Anomaly scores: the reconstruction error of held-out normal and anomalous rows, each histogram "
                  "normalised to its own count")
    ax = fig.add_subplot(1, 1, 1)
    for mask, name in ((~labels, "normal"), (labels, "anomaly")):
        if mask.any():
            ax.hist(logs[mask], bins=edges, density=True, alpha=0.55, label=f"{name} ({int(mask.sum())})")
    ax.set_xlabel("log10 reconstruction error")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: str | Path) -> Path:
    """ROC curve (true- vs false-positive rate) with its area in the title."""
    fig = Figure(figsize=(3.8, 3.8))
    _caption(fig, "ROC of the reconstruction error as an anomaly score on held-out rows (dotted: chance)")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"ROC-AUC {auc:.4f}")
    fig.tight_layout()
    return _save(fig, path)


def plot_pareto(points: Sequence[dict[str, Any]], path: str | Path, x: str = "l0", y: str = "fvu",
                label: str = "label", baseline: Sequence[tuple[float, float]] | None = None) -> Path:
    """Sparsity-fidelity trade-off across runs: each dict of `points` gives `x` (e.g. L0), `y`
    (e.g. FVU) and a `label`; the frontier (no other run lower in both) is joined by a line.
    `baseline`: optional (x, y) pairs drawn as a second curve (e.g. PCA at n components)."""
    pts = [(float(p[x]), float(p[y]), str(p.get(label, ""))) for p in points if p.get(x) is not None]
    fig = Figure(figsize=(5.0, 3.8))
    _caption(fig, f"Sparsity vs reconstruction across runs: {y} against {x}; the line joins the runs no other "
                  f"beats in both" + ("; dashed: PCA with as many components" if baseline else ""))
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, zorder=3)
        for px, py, name in pts:
            ax.annotate(name, (px, py), fontsize=6, xytext=(3, 3), textcoords="offset points")
        frontier = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q[:2] != p[:2] for q in pts))
        ax.plot([p[0] for p in frontier], [p[1] for p in frontier], zorder=2, label="SAE frontier")
    if baseline:
        ax.plot(*zip(*sorted(baseline)), color="gray", linestyle="--", marker=".", label="PCA")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if pts or baseline:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_absorption(per_letter: dict[str, dict], path: str | Path) -> Path:
    """Feature absorption per letter of the first-letter task (`saejax.first_letter`): the full
    absorption rate and the mean absorption fraction of each measured letter (hatched: its probe is
    too weak to score it)."""
    letters = sorted(per_letter)
    fig = Figure(figsize=(7.0, 3.2))
    _caption(fig, "Feature absorption by first letter: the share of a letter's words whose main latents stay off "
                  "while another latent carries the letter (full), and the mean share of the letter's probe "
                  "projection carried by other latents (fraction); hatched letters' probes are below F1 0.6")
    ax = fig.add_subplot(1, 1, 1)
    at = np.arange(len(letters))
    for offset, key, name in ((-0.2, "rate", "full absorption rate"), (0.2, "fraction", "absorption fraction")):
        bars = ax.bar(at + offset, [per_letter[k][key] for k in letters], width=0.4, label=name)
        for bar, letter in zip(bars, letters):
            if per_letter[letter]["probe_f1"] < 0.6:
                bar.set_hatch("//")
    ax.set_xticks(at, [k.upper() for k in letters])
    ax.set_ylabel("share of the letter's words")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_sparse_probing(report: dict, path: str | Path) -> Path:
    """A sparse-probing report (`saejax.text_probing.task_report`): each class's k-sparse probe accuracy
    against k (log scale), the mean over classes in bold, the dense probe's mean as a dashed line."""
    ks = [int(k) for k in report["sparse_accuracy"]]
    fig = Figure(figsize=(5.6, 3.4))
    _caption(fig, f"Sparse probing, {report['description']}: balanced accuracy on the held-out half of a probe on "
                  "the k latents whose mean differs most between the class and the rest, against a probe on the "
                  "model's activations (dashed)")
    ax = fig.add_subplot(1, 1, 1)
    for name, found in report["classes"].items():
        ax.plot(ks, list(found["sparse"].values()), marker=".", linewidth=0.8, alpha=0.6, label=name)
    ax.plot(ks, list(report["sparse_accuracy"].values()), color="black", linewidth=2.0, marker="o", label="mean")
    ax.axhline(report["dense_accuracy"], color="black", linestyle="--", linewidth=1.0, label="dense probe")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k latents")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, path)
