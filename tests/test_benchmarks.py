"""The benchmark suite runs end to end (tiny sizes) and writes its JSON, table and plot; the malloc
tuning of the training entry point applies once and can be turned off. Speed itself is measured by
`python -m benchmarks.run`, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_suite_writes_every_section(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--repeats=1", "--peak_tflops=1",
                             f"--out={tmp_path}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert {"limits", "steps", "speedups", "scaling", "precision", "peers"} <= suite.keys()
    assert all(r["speedup"] > 0 and r["fast_s"] > 0 for r in suite["speedups"])
    assert suite["plan"] == "quick" and {r["dtype"] for r in suite["steps"]} == {"float32", "bfloat16"}
    assert {r["variant"] for r in suite["steps"]} == {"relu", "topk sparse", "topk dense", "topk sparse, 5% dead",
                                                      "topk sparse, 20% dead", "topk sparse, unscreened",
                                                      "batchtopk", "jumprelu"}
    assert {(r["slow"], r["fast"]) for r in suite["speedups"]} >= {("relu", "topk sparse"),
                                                                   ("topk sparse, unscreened", "topk sparse")}
    assert all(r["step_s"] > 0 and r["total_mib"] > 0 for r in suite["steps"])
    # on CPU in f32 each step's fraction of numpy's rate comes from rounds alternating the two; bf16
    # steps are compared with jax's bf16 matmul rate and, given a nominal peak, get an MFU
    f32, bf16 = ([r for r in suite["steps"] if r["dtype"] == t] for t in ("float32", "bfloat16"))
    assert all(r["limit"] == "numpy f32, paired" and r["fraction_of_limit"] > 0 for r in f32)
    assert all("limit" not in r and r["fraction_of_limit"] > 0 and r["mfu"] > 0 for r in bf16)
    assert {r["dtype"] for r in suite["precision"]["training"]} == {"float32", "bfloat16"}
    assert all(0 <= r["fvu"] < 2 for r in suite["precision"]["training"])
    if "skipped" not in suite["peers"]:
        assert {"saejax", "SAELens training step", "PyTorch plain, eager"} <= {r["contender"] for r in suite["peers"]["rows"]}
        topk_contenders = {r["contender"] for r in suite["peers"]["rows"] if r["arch"] == "topk"}
        assert "sparsify (SparseCoder + Trainer step)" in topk_contenders
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert "| relu |" in (tmp_path / "suite.md").read_text()


@pytest.mark.slow
def test_step_ab_times_one_variant_with_latents_kept_dead():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.step_ab", "--d_in=16", "--d_sae=256", "--batch=32",
                             "--dead_fraction=0.1", "--repeats=1", "--malloc=int_max_trim"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["d_sae"] == 256 and row["dead_fraction"] == 0.1 and row["step_s"] > 0 and row["faults_per_step"] >= 0


@pytest.mark.slow
def test_screen_ab_and_certification_scripts_run(tmp_path):
    """`benchmarks.screen_ab` (screened against unscreened step) and `benchmarks.screen_certification`
    (on a store of random rows instead of a harvested model) at tiny sizes."""
    import numpy as np

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.screen_ab", "--d_sae=1024", "--d_in=16", "--batch=64",
                             "--rounds=2", f"--out={tmp_path / 'ab'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "ab" / "screen_ab.json").read_text())["rows"]
    assert row["d_sae"] == 1024 and row["screened_s"] > 0 and row["unscreened_s"] > 0 and row["rounds"] == 2
    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "shard_000000.npy", np.random.default_rng(0).standard_normal((9000, 16), dtype=np.float32))
    result = subprocess.run([sys.executable, "-m", "benchmarks.screen_certification", f"--store={store}",
                             "--d_sae=512", "--k=4", "--steps=2", "--every=1", f"--out={tmp_path / 'cert'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cert = json.loads((tmp_path / "cert" / "certification.json").read_text())
    assert [r["step"] for r in cert["rows"]] == [0, 1, 2] and cert["d_in"] == 16
    assert all(0 <= r["certified_rows"] <= 1 and r["column_norm_max_over_median"] >= 1 for r in cert["rows"])
