"""Plots render to files without a display and reject mismatched shapes."""

from pathlib import Path

import numpy as np
import pytest

from saejax.errors import SaejaxError
from saejax.plots import plot_atoms, plot_density_histogram, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    """Whether path exists and starts with the PNG signature."""
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_atoms_writes_png_in_new_dirs(tmp_path):
    W_dec = np.random.default_rng(0).normal(size=(20, 12)).astype(np.float32)
    out = plot_atoms(W_dec, (3, 4), tmp_path / "a" / "b" / "atoms.png", n=9)
    assert out == tmp_path / "a" / "b" / "atoms.png" and is_png(out)


def test_plot_atoms_order_and_zero_atoms(tmp_path):
    W_dec = np.zeros((5, 4), np.float32)
    W_dec[3] = [1.0, -1.0, 0.5, 0.0]
    density = np.array([0.1, 0.0, 0.2, 0.9, 0.05])
    out = plot_atoms(W_dec, (2, 2), tmp_path / "atoms.png", n=64,
                     order=np.argsort(-density))
    assert is_png(out)


def test_plot_atoms_shape_mismatch_raises(tmp_path):
    with pytest.raises(SaejaxError, match=r"\(5, 4\).*\(3, 3\)"):
        plot_atoms(np.zeros((5, 4)), (3, 3), tmp_path / "atoms.png")


def test_plot_training_curves_skips_missing_keys(tmp_path):
    metrics = [{"step": s, "loss": 1.0 / (s + 1), "l0": 10.0 + s} for s in range(5)]
    metrics.append({"step": 5, "fvu": 0.2, "loss": float("nan")})
    assert is_png(plot_training_curves(metrics, tmp_path / "c" / "curves.png"))
    assert is_png(plot_training_curves([], tmp_path / "empty.png"))


def test_plot_density_histogram(tmp_path):
    density = np.array([0.0, 1e-6, 1e-3, 0.01, 0.5, 1.0])
    assert is_png(plot_density_histogram(density, tmp_path / "d" / "density.png"))


def test_atom_mosaic_places_each_atom_scaled_in_its_tile():
    from saejax.plots import atom_mosaic  # noqa: PLC0415

    atoms = np.arange(1, 6 * 5 + 1, dtype=np.float32).reshape(5, 6)  # 5 atoms of 2x3
    mosaic = atom_mosaic(atoms, (2, 3), cols=2)
    assert mosaic.shape == (3 * 3 - 1, 2 * 4 - 1)
    np.testing.assert_allclose(mosaic[3:5, 4:7], (atoms[3] / atoms[3].max()).reshape(2, 3))  # row 1, col 1
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[:, 3]).all()  # the gaps
    assert np.isnan(mosaic[6:8, 4:7]).all()  # the unused sixth tile


def test_every_plot_has_a_caption_saying_what_it_shows(tmp_path, monkeypatch):
    from saejax import plots  # noqa: PLC0415

    captions = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captions.setdefault(Path(path).stem, fig.get_suptitle()))
    rng = np.random.default_rng(0)
    plots.plot_atoms(rng.normal(size=(20, 12)), (3, 4), tmp_path / "atoms.png", n=9, order=np.arange(20)[::-1],
                     ordered_by="firing density, densest first")
    plots.plot_training_curves([{"step": 1, "loss": 1.0, "l0": 3.0}], tmp_path / "training.png")
    plots.plot_density_histogram(rng.uniform(size=20), tmp_path / "density.png")
    plots.plot_anomaly_scores(rng.uniform(size=30), np.arange(30) % 3 == 0, tmp_path / "anomaly_scores.png")
    plots.plot_roc(np.linspace(0, 1, 5), np.linspace(0, 1, 5) ** 0.5, 0.7, tmp_path / "roc.png")
    plots.plot_pareto([{"l0": 2, "fvu": 0.3, "label": "a"}], tmp_path / "pareto.png", baseline=[(2, 0.4)])
    flat = {name: " ".join(text.split()) for name, text in captions.items()}
    assert flat["atoms"].startswith("Decoder atoms: 9 of the 20 latents' decoder rows as 3x4 images, ordered by "
                                    "firing density, densest first")
    assert flat["training"].startswith("Training curves: loss, L0 of the training batches")
    assert flat["density"].startswith("Feature density:") and flat["anomaly_scores"].startswith("Anomaly scores:")
    assert flat["roc"].startswith("ROC of the reconstruction error") and "PCA" in flat["pareto"]

