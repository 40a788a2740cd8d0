"""The experiment configs (each runnable by the command in its docstring, reporting its
downstream numbers) and the sweep script, on shortened settings."""

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SWEEP = ROOT / "experiments" / "sweep.py"
CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.py"))
QUIET = ["--config.log.progress=False", "--config.log.tensorboard=False"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_docstring_holds_its_run_command(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    commands = [line.strip() for line in doc.splitlines() if line.strip().startswith("python experiments/train.py")]
    assert commands and all("--workdir=" in c for c in commands), path
    if path.stem != "default":  # the default config is what train.py runs without --config
        assert any(f"--config=experiments/configs/{path.name}" in c for c in commands), path


def summary_of(workdir):
    return json.loads((Path(workdir) / "summary.json").read_text())


def test_digits_reports_probe_accuracy_and_the_pca_baseline(tmp_path):
    result = run(TRAIN, f"--workdir={tmp_path}", "--config=experiments/configs/digits.py", "--config.train.steps=200",
                 *QUIET)
    assert result.returncode == 0, result.stderr[-2000:]
    evals = summary_of(tmp_path)["eval"]
    for key in ("test_l0", "test_fvu", "pca_fvu_at_l0", "probe_accuracy_codes", "probe_accuracy_raw"):
        assert key in evals, key
    assert evals["probe_accuracy_raw"] > 0.9 and evals["probe_accuracy_codes"] > 0.8
    assert (tmp_path / "plots" / "atoms.png").exists()


def test_digits_deep_and_kl_sparsity_configs_run(tmp_path):
    deep = run(TRAIN, f"--workdir={tmp_path / 'deep'}", "--config=experiments/configs/digits.py:deep",
               "--config.train.steps=50", *QUIET)
    assert deep.returncode == 0, deep.stderr[-2000:]
    assert summary_of(tmp_path / "deep")["arch"] == "mlp"
    kl = run(TRAIN, f"--workdir={tmp_path / 'kl'}", "--config=experiments/configs/kl_sparsity.py",
             "--config.train.steps=50", *QUIET)
    assert kl.returncode == 0, kl.stderr[-2000:]
    first = json.loads((tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/kl"] > 0 and "loss/l1" not in first


def test_anomaly_config_reports_roc_auc(tmp_path):
    result = run(TRAIN, f"--workdir={tmp_path}", "--config=experiments/configs/anomaly.py", "--config.train.steps=300",
                 *QUIET)
    assert result.returncode == 0, result.stderr[-2000:]
    assert summary_of(tmp_path)["eval"]["anomaly_roc_auc"] > 0.9
    assert (tmp_path / "plots" / "roc.png").exists() and (tmp_path / "plots" / "anomaly_scores.png").exists()


SYNTHETIC = ["--config=experiments/configs/synthetic.py", "--grid=loss.l1=0.3,3"]
SMALL = ["--", "--config.train.steps=40", "--config.data.d=16", "--config.data.n_features=32",
         "--config.sae.d_sae=64", "--config.train.batch_size=128", "--config.train.eval_rows=512", *QUIET]


def test_sweep_collects_a_table_and_a_pareto_plot_and_skips_finished_points(tmp_path):
    result = run(SWEEP, f"--workdir={tmp_path}", *SYNTHETIC, *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["loss.l1"] for r in rows] == ["0.3", "3"]
    assert float(rows[0]["l0"]) > float(rows[1]["l0"])  # a stronger L1 gives sparser codes
    assert "| loss.l1 | l0 | fvu |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "pareto.png").stat().st_size > 0
    logged = (tmp_path / "loss.l1=0.3" / "metrics.jsonl").read_text()
    again = run(SWEEP, f"--workdir={tmp_path}", *SYNTHETIC, *SMALL)
    assert again.returncode == 0 and (tmp_path / "loss.l1=0.3" / "metrics.jsonl").read_text() == logged


def test_sweep_reports_failed_points_and_bad_grids(tmp_path):
    bad_value = run(SWEEP, f"--workdir={tmp_path}", "--config=experiments/configs/synthetic.py",
                    "--grid=sae.arch=relu,nosuch", *SMALL)
    assert bad_value.returncode == 1
    assert "sae.arch=nosuch: error:" in bad_value.stdout and "1 run(s) failed: sae.arch=nosuch" in bad_value.stderr
    bad_grid = run(SWEEP, f"--workdir={tmp_path}", "--grid=loss.l1")
    assert bad_grid.returncode != 0 and "must look like FIELD=V1,V2" in bad_grid.stderr


def test_wandb_logging_offline_and_resumed_into_the_same_run(tmp_path):
    pytest.importorskip("wandb")
    args = [TRAIN, f"--workdir={tmp_path}", "--config=experiments/configs/synthetic.py", "--config.log.wandb=True",
            *SMALL[1:]]
    first = run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    logged = runs[0].read_bytes()
    assert b"train/loss" in logged and b"eval/mmcs" in logged
    again = run(*args, "--config.train.steps=60")  # resume with more steps
    assert again.returncode == 0, again.stderr[-2000:]
    ids = {p.name for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")}
    assert len(ids) == 1  # the same W&B run id, continued


def test_plots_on_demand_from_a_finished_or_running_workdir(tmp_path):
    trained = run(TRAIN, f"--workdir={tmp_path}", "--config=experiments/configs/synthetic.py", *SMALL[1:])
    assert trained.returncode == 0, trained.stderr[-2000:]
    for name in ("training.png", "density.png"):
        (tmp_path / "plots" / name).unlink()
    result = run(ROOT / "experiments" / "plot.py", f"--workdir={tmp_path}", "--rows=512")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "plots" / "training.png").exists() and (tmp_path / "plots" / "density.png").exists()
    missing = run(ROOT / "experiments" / "plot.py", f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
