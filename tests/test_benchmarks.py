"""The benchmark suite runs end to end (tiny sizes) and writes its JSON, table and plot, every section
included (the overhead section, whose training processes take too long here, by its arithmetic); the A/B
tool alternates fresh processes of its variants; the malloc tuning of the training entry point applies
once and can be turned off. Speed itself is measured by `python -m benchmarks.run`
and `python -m benchmarks.ab`, never asserted here."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saejax.kernels import cpu


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
    assert all(isinstance(r["minor_faults_per_step"], (int, float)) for r in f32) and "anon_huge_mib" in suite
    assert all("limit" not in r and r["fraction_of_limit"] > 0 and r["mfu"] > 0 for r in bf16)
    assert {r["dtype"] for r in suite["precision"]["training"]} == {"float32", "bfloat16"}
    assert all(0 <= r["fvu"] < 2 for r in suite["precision"]["training"])
    peers_installed = all(importlib.util.find_spec(name) for name in ("torch", "sae_lens", "sparsify"))  # [test]
    assert ("skipped" in suite["peers"]) is not peers_installed  # skipped exactly when the peers are missing
    if peers_installed:
        assert {"saejax", "SAELens training step", "PyTorch plain, eager"} <= {r["contender"] for r in suite["peers"]["rows"]}
        topk_contenders = {r["contender"] for r in suite["peers"]["rows"] if r["arch"] == "topk"}
        assert "sparsify (SparseCoder + Trainer step)" in topk_contenders
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert "| relu |" in (tmp_path / "suite.md").read_text()


def test_ab_parts_variants_rounds_and_ratios():
    """A variant's tokens split into environment, working folder and arguments; the order rotates
    every round; the ratio is the median over rounds of a variant's value over the first's."""
    from benchmarks import ab

    variant = ab.parse_variant("off: SAEJAX_NO_MALLOC_TUNING=1 GONE= cwd=/tmp/old --config.sae.k=16 '--variants=a, b'")
    assert variant == {"name": "off", "env": {"SAEJAX_NO_MALLOC_TUNING": "1", "GONE": None}, "cwd": "/tmp/old",
                       "args": ["--config.sae.k=16", "--variants=a, b"]}
    assert ab.environment({"GONE": "1", "KEPT": "2"}, variant["env"]) == {"KEPT": "2", "SAEJAX_NO_MALLOC_TUNING": "1"}
    assert [ab.round_order(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert ab.flatten({"x": 1, "rows": [{"s": 2.5, "ok": True, "name": "n"}]}) == {"x": 1.0, "rows.0.s": 2.5}
    runs = [{"round": r, "variant": v, "metrics": {"s": s}} for r, v, s in [(0, "a", 2), (0, "b", 4), (1, "b", 9),
                                                                            (1, "a", 3)]]
    summary = ab.summarise(runs, ["a", "b"])
    assert summary["s"]["a"] == {"median": 2.5} and summary["s"]["b"] == {"median": 6.5, "ratio": 2.5}


def test_ab_alternates_fresh_processes_that_differ_by_environment_and_arguments(tmp_path):
    """A trivial pair: the measured command prints X (its environment) times 3 if --triple is passed."""
    code = ("import json, os, sys; print('noise'); "
            "print(json.dumps({'x': float(os.environ['X']) * (3 if '--triple' in sys.argv else 1), 'name': 'a'}))")
    result = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--runs=2", "--variant=a: X=2",
                             "--variant=b: X=4 --triple", "--metrics=x", f"--out={tmp_path}", "--name=pair", "--",
                             sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pair.json").read_text())
    assert [(r["round"], r["variant"]) for r in report["runs"]] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert report["summary"]["x"] == {"a": {"median": 2.0}, "b": {"median": 12.0, "ratio": 6.0}}
    assert set(report["summary"]) == {"x", "wall_s"} and all(r["metrics"]["wall_s"] > 0 for r in report["runs"])
    assert "| x | 2 | 12 | 6 |" in (tmp_path / "pair.md").read_text()


@pytest.mark.slow
def test_ab_times_a_suite_step_with_and_without_malloc_tuning(tmp_path):
    """The suite's steps section for one variant (latents kept dead) at a tiny size in f32 (the full
    plan's dtypes), each variant's process with its own {out} folder whose suite.json holds the measurement."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.ab", "--runs=1", "--variant=tuned",
                             f"--variant=default: {cpu.DISABLE_ENV}=1", "--result=suite.json",
                             "--metrics=steps.0.*", f"--out={tmp_path}", "--",
                             sys.executable, "-m", "benchmarks.run", "--plan=full", "--sections=steps",
                             "--variants=topk sparse, 5% dead", "--sizes=16x256x32", "--repeats=1", "--out={out}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ab.json").read_text())
    summary = report["summary"]
    assert summary["steps.0.d_sae"]["tuned"]["median"] == 256 and summary["steps.0.step_s"]["default"]["ratio"] > 0
    assert set(summary["steps.0.minor_faults_per_step"]) == {"tuned", "default"}  # recorded for both variants


@pytest.mark.slow
def test_sections_run_at_quick_size(tmp_path):
    """The sections of `benchmarks.sections` at their quick settings (screen_certification on a store of
    random rows instead of a harvested model) and the screen's in-process A/B (speed-ups of the
    screened step over the unscreened one, screening forced at a width where auto would not), in one run."""
    import numpy as np

    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "shard_000000.npy", np.random.default_rng(0).standard_normal((9000, 16), dtype=np.float32))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    names = "speedups,checkpoint,loader,dense_step,topk_crossover,screen_certification"
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", f"--sections={names}",
                             "--variants=topk sparse(, unscreened)?", "--sae_options=screen=True",
                             "--sizes=16x1024x64", "--repeats=2", f"--set=screen_certification.store={store}",
                             "--set=topk_crossover.d_sae=64", f"--out={tmp_path / 'out'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    suite = json.loads((tmp_path / "out" / "suite.json").read_text())
    (pair,) = suite["speedups"]
    assert (pair["slow"], pair["fast"], pair["d_sae"]) == ("topk sparse, unscreened", "topk sparse", 1024)
    assert pair["slow_s"] > 0 and pair["fast_s"] > 0
    assert [r["variant"] for r in suite["checkpoint"]["rows"]] == ["none", "every 2"]
    assert all(r["run_s_median"] > 0 for r in suite["checkpoint"]["rows"])
    assert [r["dtype"] for r in suite["loader"]["loaders"]] == ["float32", "float16"]
    assert all(r["rows_per_s"] > 0 and r["times_faster_than_step"] > 0 for r in suite["loader"]["loaders"])
    assert [r["variant"] for r in suite["dense_step"]["steps"]] == ["saejax step", "plain autodiff step"]
    assert all(r["fraction_of_numpy_matmul"] > 0 for r in suite["dense_step"]["steps"])
    (crossover,) = suite["topk_crossover"]["rows"]
    assert crossover["d_sae"] == 64 and crossover["ratio"] == 16 and crossover["speedup"] > 0
    cert = suite["screen_certification"]
    assert [r["step"] for r in cert["rows"]] == [0, 1, 2] and cert["d_in"] == 16
    assert all(0 <= r["certified_rows"] <= 1 and r["column_norm_max_over_median"] >= 1 for r in cert["rows"])
    table = (tmp_path / "out" / "suite.md").read_text()
    assert all(header in table for header in ("| checkpoints |", "| store dtype |", "| fraction of numpy matmul |",
                                              "| sparse speed-up |", "| certified rows |", "| speed-up |"))


def test_overhead_is_the_intercept_of_the_walls_over_steps():
    """The overhead section's arithmetic (its processes are too slow for the tests): 4 steps in 10 s and
    16 in 16 s are 0.5 s a step after 8 s of fixed cost."""
    from benchmarks.sections import overhead

    assert overhead.fixed_overhead(10.0, 16.0) == (0.5, 8.0)
    command = overhead.train_command(overhead.SIZES["quick"], Path("/s"), Path("/w"), 4)
    assert {"--config.data.path=/s", "--workdir=/w", "--config.train.steps=4", "--config.sae.d_sae=128"} <= set(command)


def test_suite_rejects_unknown_settings():
    """--set names a section's own setting, in the type of its default."""
    from benchmarks import sections

    assert sections.parse_overrides(["checkpoint.d_sae=8192", "topk_crossover.d_sae=64,128"]) == {
        "checkpoint": {"d_sae": "8192"}, "topk_crossover": {"d_sae": "64,128"}}
    assert sections.settings("topk_crossover", "quick", {"d_sae": "64,128"})["d_sae"] == (64, 128)
    assert sections.settings("checkpoint", "gpu", {"d_sae": "8192"}) == {**sections.module("checkpoint").SIZES["full"],
                                                                        "d_sae": 8192}
    with pytest.raises(ValueError, match="no setting"):
        sections.settings("checkpoint", "quick", {"width": "3"})
    with pytest.raises(ValueError):
        sections.settings("checkpoint", "quick", {"d_sae": "wide"})


@pytest.mark.slow
def test_the_synthetic_suite_trains_each_architecture_on_both_data_sets(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.synthetic_suite", "--steps=30", "--archs=topk,relu",
                             f"--out={tmp_path}"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "synthetic_suite.json").read_text())["results"]
    assert set(found) == {"independent", "hierarchical"} and set(found["hierarchical"]) == {"topk", "relu"}
    for dataset, by_arch in found.items():
        for arch, metrics in by_arch.items():
            assert "error" not in metrics, (dataset, arch, metrics)
            assert 0 <= metrics["matched_mean_abs_cos"] <= 1 and 0 < metrics["mmcs"] <= 1
            assert ("absorption/rate" in metrics) == (dataset == "hierarchical")
    assert "| topk |" in (tmp_path / "synthetic_suite.md").read_text()
