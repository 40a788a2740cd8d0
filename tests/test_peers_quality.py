"""Smoke test of benchmarks.peers_quality: every contender trains a tiny TopK SAE on the same rows of a
random store, and the one held-out metric is written as JSON and a markdown table."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from saejax.data.store import write_store

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("saejax", "saelens", "sparsify", "sparsify_signum")


def test_every_contender_is_scored_on_the_held_out_rows(tmp_path):
    pytest.importorskip("sparsify")
    pytest.importorskip("sae_lens")
    store = tmp_path / "store"
    rows = np.random.default_rng(0).standard_normal((400, 16), dtype=np.float32) * 2.0 + 0.5
    write_store(store, rows)
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers_quality", f"--store={store}", "--d_sae=64", "--k=4", "--batch=64",
         "--steps=3", f"--contenders={','.join(CONTENDERS)}", f"--out_dir={out}", "--out=tiny",
         f"--work_dir={tmp_path / 'runs'}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "tiny.json").read_text())
    assert [r["contender"] for r in report["rows"]] == list(CONTENDERS)
    assert report["settings"]["heldout_rows"] == 40 and report["settings"]["train_rows"] == 360
    for row in report["rows"]:
        assert math.isfinite(row["fvu"]) and row["fvu"] > 0, row
        assert 0 < row["l0"] <= 4 and 0 <= row["dead_pct"] <= 100 and row["wall_s"] > 0
    for check in report["saelens_check"].values():  # SAELens' own encode/decode agrees with the metric
        assert check["fvu_rel_diff"] < 1e-5 and check["max_abs_dx_hat"] < 1e-4
    table = (out / "tiny.md").read_text()
    assert "| contender | held-out FVU |" in table and all(f"| {name} |" in table for name in CONTENDERS)
    assert (Path(f"{store}_train") / "manifest.json").exists() and (Path(f"{store}_heldout") / "manifest.json").exists()


def test_scaled_rows_fold_back_and_saelens_jumprelu_aims_at_the_target_l0(tmp_path):
    pytest.importorskip("sae_lens")
    store = tmp_path / "store"
    rows = np.random.default_rng(1).standard_normal((400, 16), dtype=np.float32) * 300.0 + 50.0  # far from unit scale
    write_store(store, rows)
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers_quality", f"--store={store}", "--arch=jumprelu", "--d_sae=64",
         "--k=4", "--target_l0=4", "--scale_rows", "--batch=64", "--steps=3", "--contenders=saelens",
         f"--out_dir={out}", "--out=tiny", f"--work_dir={tmp_path / 'runs'}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "tiny.json").read_text())
    (saelens,) = report["rows"]  # saejax gets the target as loss.target_l0, its default for k = 4 anyway
    assert saelens["settings"]["sae"]["jumprelu_sparsity_loss_mode"] == "quadratic"
    assert saelens["settings"]["sae"]["target_l0"] == 4.0
    expected = math.sqrt(16 / np.mean(np.sum(np.square(rows[:360].astype(np.float64)), axis=1)))
    assert saelens["settings"]["row_scale"] == pytest.approx(expected, rel=0.2)  # the 360 training rows
    check = report["saelens_check"]["saelens"]  # the folded weights act on raw rows like SAELens on scaled ones
    assert check["fvu_rel_diff"] < 1e-4 and check["max_abs_dx_hat"] < 1e-2 * np.abs(rows).max()


def test_metric_matches_a_float64_reference():
    """`score` on a TopK SAE: FVU, L0, dead and dense shares against a direct float64 computation."""
    from benchmarks import peers_quality as pq

    rng = np.random.default_rng(1)
    d, f, k = 8, 32, 3
    shapes = {"W_enc": (d, f), "b_enc": (f,), "W_dec": (f, d), "b_dec": (d,)}
    weights = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
    weights["b_enc"][:4] = -1e3  # never fire
    x = rng.standard_normal((500, d)).astype(np.float32)
    got = pq.score(weights, "topk", k, x, batch_rows=64)
    w = {key: v.astype(np.float64) for key, v in weights.items()}
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    kth = np.sort(pre, axis=1)[:, -k][:, None]
    z = np.where(pre >= kth, np.maximum(pre, 0), 0)
    x_hat = z @ w["W_dec"] + w["b_dec"]
    fires = (z > 0).sum(0)
    assert got["fvu"] == pytest.approx(np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2), rel=1e-5)
    assert got["l0"] == pytest.approx((z > 0).sum() / len(x))
    assert got["dead_pct"] == pytest.approx(100 * np.mean(fires == 0)) and got["dead_pct"] >= 100 * 4 / f
    assert got["dense_pct"] == pytest.approx(100 * np.mean(fires > 0.1 * len(x)))


def test_synthetic_store_is_built_once_and_scored_on_dictionary_recovery(tmp_path):
    """--synthetic writes saejax's superposition rows and their true features, and every contender
    gets an MMCS against them; a second run reuses the store, a changed recipe rebuilds it."""
    pytest.importorskip("sparsify")
    store, out = tmp_path / "synthetic", tmp_path / "results"

    def run(contenders="sparsify", *extra):
        return subprocess.run(
            [sys.executable, "-m", "benchmarks.peers_quality", "--synthetic", f"--store={store}",
             "--synthetic_features=24", "--synthetic_d=12", "--synthetic_active=2", "--synthetic_freq_ratio=100",
             "--synthetic_rows=600", "--d_sae=48", "--k=3", "--batch=64", "--steps=3", f"--contenders={contenders}",
             f"--out_dir={out}", "--out=syn", f"--work_dir={tmp_path / 'runs'}", *extra],
            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)

    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    true = np.load(store / "true_dictionary.npy", allow_pickle=False)
    assert true.shape == (24, 12) and np.allclose(np.linalg.norm(true, axis=1), 1, atol=1e-5)
    report = json.loads((out / "syn.json").read_text())
    assert report["settings"]["train_rows"] == 540 and report["harvest"]["synthetic"]["freq_ratio"] == 100
    assert [r["contender"] for r in report["rows"]] == ["sparsify"] and -1 <= report["rows"][0]["mmcs"] <= 1
    assert "| MMCS |" in (out / "syn.md").read_text()
    built = (store / "manifest.json").stat().st_mtime_ns
    assert run("").returncode == 0 and (store / "manifest.json").stat().st_mtime_ns == built  # no training
    heldout = np.load(sorted(Path(f"{store}_heldout").glob("*.npy"))[0], allow_pickle=False)
    assert run("", "--synthetic_freq_ratio=10").returncode == 0
    assert json.loads((store / "peers_quality_synthetic.json").read_text())["freq_ratio"] == 10
    assert not np.array_equal(heldout, np.load(sorted(Path(f"{store}_heldout").glob("*.npy"))[0], allow_pickle=False))


def test_mmcs_is_one_for_the_true_dictionary_in_any_order_and_scale():
    from benchmarks import peers_quality as pq

    true = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0][:5]  # 5 orthonormal rows
    learned = np.concatenate([3.0 * true[::-1], np.random.default_rng(1).standard_normal((4, 8))])
    assert pq.mmcs(learned, true) == pytest.approx(1.0)
    assert pq.mmcs(-learned[:5], true) < 0.5  # signed, as saejax.metrics.mmcs


def test_mcc_is_saelens_mean_correlation_coefficient():
    """`mcc` (numpy + scipy) against SAELens' own function, with fewer and with more decoder rows than
    true features; 1 for the true features in any order, sign and scale."""
    pytest.importorskip("sae_lens")
    from benchmarks import peers_quality as pq

    rng = np.random.default_rng(0)
    true = rng.standard_normal((40, 16))
    for m in (24, 60):
        learned = rng.standard_normal((m, 16)).astype(np.float32)
        assert pq.mcc(learned, true) == pytest.approx(pq.saelens_mcc(learned, true), abs=1e-6)
    assert pq.mcc(-2.0 * true[::-1], true) == pytest.approx(1.0)


def test_synth_bench_store_is_saelens_generator_and_both_frameworks_train_matryoshka_on_it(tmp_path):
    """--synth_bench builds the rows with SAELens' SyntheticModel at a toy size and keeps its feature
    vectors; saejax and SAELens train a Matryoshka SAE with the same nested widths and get an MCC."""
    pytest.importorskip("sae_lens")
    store, out = tmp_path / "synth", tmp_path / "results"

    def run(rows=2000, contenders="saejax,saelens"):
        return subprocess.run(
            [sys.executable, "-m", "benchmarks.peers_quality", "--synth_bench", f"--store={store}",
             "--synth_bench_features=256", "--synth_bench_d=32", f"--synthetic_rows={rows}", "--arch=matryoshka",
             "--matryoshka_widths=16,32", "--d_sae=64", "--k=4", "--batch=64", "--steps=3",
             f"--contenders={contenders}", f"--out_dir={out}", "--out=sb", f"--work_dir={tmp_path / 'runs'}"],
            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)

    result = run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    true = np.load(store / "true_dictionary.npy", allow_pickle=False)
    assert true.shape == (256, 32) and np.allclose(np.linalg.norm(true, axis=1), 1, atol=1e-4)
    report = json.loads((out / "sb.json").read_text())
    recipe = report["harvest"]["synth_bench"]
    assert recipe["num_features"] == 256 and recipe["hierarchy"]["total_root_nodes"] == 2 and recipe["true_l0"] > 0
    assert [r["contender"] for r in report["rows"]] == ["saejax", "saelens"]
    for row in report["rows"]:
        assert 0 < row["mcc"] <= 1 and row["mcc"] == pytest.approx(row["mcc_saelens"], abs=1e-5)
    saejax_sae = report["rows"][0]["settings"]["sae"]
    assert saejax_sae["matryoshka_prefixes"] == "16,32,64"
    assert report["rows"][1]["settings"]["sae"]["matryoshka_widths"] == [16, 32, 64]
    assert "| MMCS | MCC |" in (out / "sb.md").read_text()
    model = Path(f"{store}_model") / "peers_quality_model.json"
    built = model.stat().st_mtime_ns
    assert run(rows=1500, contenders="").returncode == 0  # other rows of the same model: the model is reused
    assert model.stat().st_mtime_ns == built
    assert json.loads((out / "sb.json").read_text())["harvest"]["synth_bench"]["rows"] == 1500
    assert np.array_equal(np.load(store / "true_dictionary.npy", allow_pickle=False), true)
