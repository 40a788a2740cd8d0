"""The command-line contract: experiments/train.py end to end, its workdir, resume, and errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import saejax
from saejax import export, optimizers
from saejax import step as step_lib
from saejax.config import base_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SYNTHETIC = ROOT / "experiments" / "configs" / "synthetic.py"
DEFAULT = ROOT / "experiments" / "configs" / "default.py"


def run_cli(workdir, *flags, config=SYNTHETIC):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, str(TRAIN), f"--workdir={workdir}", *([f"--config={config}"] if config else []), *flags]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


SMALL_SYNTHETIC = [
    "--config.data.d=32", "--config.data.n_features=64", "--config.data.avg_active=3",
    "--config.data.freq_ratio=10", "--config.sae.d_sae=128", "--config.train.batch_size=512",
    "--config.log.tensorboard=False",
]


@pytest.mark.slow
def test_synthetic_dictionary_recovery_relu_l1_through_the_cli(tmp_path):
    result = run_cli(tmp_path, *SMALL_SYNTHETIC, "--config.train.steps=1500", "--config.loss.l1=1.0",
                     "--config.optim.lr=3e-3")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval"]["mmcs"] >= 0.99, summary


@pytest.mark.slow
def test_synthetic_dictionary_recovery_topk(tmp_path):
    # the small version of experiments/configs/synthetic.py:topk: k = mean active + 1, AuxK with
    # k_aux = d_in / 2 (the default) and a short dead window
    c = saejax.base_config()
    for flag in SMALL_SYNTHETIC:
        field, value = flag.removeprefix("--config.").split("=")
        section, name = field.split(".")
        c[section][name] = type(c[section][name])(value) if value != "False" else False
    c.sae.arch, c.sae.k, c.loss.l1, c.loss.auxk, c.loss.dead_steps = "topk", 4, 0.0, 1 / 32, 10
    c.optim.lr, c.train.steps, c.log.progress = 3e-3, 1500, False
    summary = saejax.train_and_evaluate(c, tmp_path)
    assert summary["eval"]["mmcs"] >= 0.99, summary


@pytest.mark.slow
def test_workdir_contents_and_resume(tmp_path):
    flags = ["--config.data.source=patches", "--config.data.patch_size=6", "--config.data.n_patches=4000",
             "--config.sae.d_sae=64", "--config.loss.l1=0.1", "--config.train.batch_size=128",
             "--config.train.log_every=20", "--config.train.checkpoint_every=30"]
    first = run_cli(tmp_path, *flags, "--config.train.steps=60")
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ["config.json", "metrics.jsonl", "summary.json", "plots/atoms.png", "plots/training.png",
                 "plots/density.png", "export/cfg.json", "export/sae_weights.safetensors", "checkpoints/60"]:
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["sae"]["d_sae"] == 64
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [20, 40, 60]
    assert {"loss", "loss/mse", "loss/l1", "l0", "fvu", "dead_fraction"} <= records[0].keys()

    second = run_cli(tmp_path, *flags, "--config.train.steps=80")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed" in second.stdout and "at step 60" in second.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [20, 40, 60, 80]


def _write_npy_store(directory: Path, rows=3000, d=24, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(40, d))
    codes = rng.uniform(size=(rows, 40)) * (rng.uniform(size=(rows, 40)) < 0.1)
    data = (codes @ features * 7.0 + 3.0).astype(np.float32)  # far from E||x||^2 = d: normalisation matters
    directory.mkdir()
    np.save(directory / "a.npy", data[: rows // 2])
    np.save(directory / "b.npy", data[rows // 2:])
    return data


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_npy_export_works_on_raw_activations(tmp_path, arch):
    data = _write_npy_store(tmp_path / "store")
    c = base_config()
    c.data.source, c.data.path = "npy", str(tmp_path / "store" / "*.npy")
    c.sae.arch, c.sae.d_sae, c.sae.k = arch, 64, 4
    c.loss.l1 = 0.5 if arch == "relu" else 0.0
    c.loss.l0 = 0.01 if arch == "jumprelu" else 0.0
    c.train.steps, c.train.batch_size, c.train.log_every = 50, 128, 25
    c.log.progress, c.log.tensorboard = False, False
    saejax.train_and_evaluate(c, tmp_path / "run")

    params, cfg = export.load_saelens(tmp_path / "run" / "export")
    x_raw = data[:256]
    z_export = export.encode_saelens(params, cfg, x_raw)
    x_hat_export = export.decode_saelens(params, cfg, z_export)

    # our own forward on the normalised inputs, from the final checkpoint
    sae = saejax.sae_from_config(c.sae, data.shape[1])
    ckpt_params, scale = _restore_params(tmp_path / "run", c, sae)
    z_ours = sae.encode(ckpt_params, x_raw * scale)
    np.testing.assert_allclose(z_export, z_ours, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(x_hat_export, sae.decode(ckpt_params, z_ours) / scale, atol=2e-4, rtol=2e-4)


def _restore_params(workdir, c, sae):
    from saejax import checkpoint, defaults, losses

    c, _ = defaults.resolve(c)  # as the run did: AuxK on for topk, its dead window in steps
    loss = losses.loss_from_config(c.loss, sae)
    optimizer = optimizers.optimizer_from_config(c.optim, c.train, sae)
    like = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), np.ones((4, sae.d_in), np.float32))
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    state, _, _ = ckpt.restore_latest_good(like)
    ckpt.close()
    return state.params, float(state.norm_scale)


def _nan_store(directory: Path):
    data = _write_npy_store(directory)
    data[1000, 5] = np.nan
    np.save(directory / "a.npy", data[:1500])
    return str(directory / "*.npy")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.sae.arch=resnet"], "error: unknown SAE architecture sae.arch='resnet'"),
        (["--config.sae.arch=topk", "--config.sae.k=5000"], "error: sae.k=5000 must be in [1, sae.d_sae=1024]"),
        (["--config.loss.l1=-0.5"], "error: loss coefficient loss.l1=-0.5 must be a finite number >= 0"),
        (["--config.data.source=npy", "--config.data.path=/nonexistent/*.npy"], "no files match"),
        (["--config.parallel.strategy=ring"], "error: unknown parallel.strategy='ring'"),
    ],
)
def test_bad_input_gives_one_clear_error_line(tmp_path, flags, message):
    result = run_cli(tmp_path / "w", *flags)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and last.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_synthetic_config_variants():
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_config", SYNTHETIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    relu, topk = module.get_config(), module.get_config("topk")
    assert (relu.sae.arch, relu.loss.l1) == ("relu", 1.0)
    assert (topk.sae.arch, topk.sae.k, topk.loss.l1, topk.loss.auxk) == ("topk", 6, 0.0, 1 / 32)
    saejax.config.validate(topk)


def test_unknown_config_variant_is_one_error_line(tmp_path):
    result = run_cli(tmp_path / "w", config=f"{SYNTHETIC}:resnet")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "resnet" in last and "Traceback" not in result.stderr


def test_nan_in_data_names_step_source_and_file(tmp_path):
    pattern = _nan_store(tmp_path / "store")
    result = run_cli(tmp_path / "w", "--config.data.source=npy", f"--config.data.path={pattern}",
                     "--config.train.batch_size=256", "--config.train.steps=40")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert "data.source='npy'" in last and "a.npy" in last and "row 1000" in last and "non-finite" in last


@pytest.mark.parametrize("config", [SYNTHETIC, None])  # None: the default config, read while defining --config
def test_unknown_config_field_names_the_flag(tmp_path, config):
    result = run_cli(tmp_path / "w", "--config.sae.widht=3", config=config)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: unknown config field sae.widht (--config.help lists the fields)"]


@pytest.mark.parametrize("flag", ["--config.sae.widht=3", "--config.sae.d_sae=abc", "--no_such_flag=1"])
def test_bad_flags_give_one_error_line(tmp_path, flag):
    result = run_cli(tmp_path / "w", flag)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert flag.split("=")[0].split(".")[-1].lstrip("-") in lines[-1]


@pytest.mark.slow
def test_resume_with_incompatible_config_is_one_clear_error(tmp_path):
    flags = [*SMALL_SYNTHETIC, "--config.train.steps=5", "--config.train.log_every=5"]
    assert run_cli(tmp_path, *flags).returncode == 0
    result = run_cli(tmp_path, *flags, "--config.sae.d_sae=64")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "sae.d_sae: 128 -> 64" in last and "Traceback" not in result.stderr
    harmless = run_cli(tmp_path, *flags, "--config.train.steps=8")  # more steps: resumes
    assert harmless.returncode == 0 and "at step 5" in harmless.stdout


class _SourceWithNanAtStep:
    """Clean init sample; batch 7 holds a NaN (as a corrupt shard mid-stream would)."""

    name, d_in = "fake", 8

    def sample(self, n):
        return np.ones((n, self.d_in), np.float32)

    def batch(self, step, batch_size):
        batch = np.random.default_rng(step).normal(size=(batch_size, self.d_in)).astype(np.float32)
        if step == 7:
            batch[3, 2] = np.inf
        return batch


def test_non_finite_batch_stops_the_run_naming_step_and_source(tmp_path, monkeypatch):
    from saejax import assemble

    monkeypatch.setattr(assemble.data, "make_source", lambda data, seed, **_: _SourceWithNanAtStep())
    c = base_config()
    c.sae.d_sae, c.train.batch_size, c.train.steps, c.log.progress = 16, 32, 20, False
    with pytest.raises(saejax.DataError, match=r"non-finite value inf in the batch at step 7 from "
                                               r"data.source='fake' \(row 3, column 2\)"):
        saejax.train_and_evaluate(c, tmp_path)


def test_wrong_batch_width_names_step_and_source():
    from saejax.data.batches import check_batch

    with pytest.raises(saejax.DataError, match=r"batch at step 3 from data.source='npy' has shape \(4, 7\); "
                                               r"the SAE expects \[batch, 8\]"):
        check_batch(np.zeros((4, 7), np.float32), 3, "npy", 8)


def test_prefetch_keeps_order_and_reraises():
    from saejax.data.batches import prefetch

    assert list(prefetch(lambda s: s * s, range(5, 10))) == [(s, s * s) for s in range(5, 10)]
    assert list(prefetch(lambda s: s, [])) == []

    def fails_at_3(step):
        if step == 3:
            raise saejax.DataError("bad shard at 3")
        return step

    seen = []
    with pytest.raises(saejax.DataError, match="bad shard at 3"):
        for step, _ in prefetch(fails_at_3, range(10)):
            seen.append(step)
    assert seen == [0, 1, 2]


@pytest.mark.slow
def test_trains_on_a_shard_store_folder_with_its_statistics(tmp_path):
    from saejax.data import store

    rng = np.random.default_rng(0)
    blocks = (rng.normal(size=(700, 24)).astype(np.float32) * 5.0 for _ in range(4))
    manifest = store.write_store(tmp_path / "store", blocks, dtype="float16", rows_per_shard=1000)
    result = run_cli(tmp_path / "run", "--config.data.source=npy", f"--config.data.path={tmp_path / 'store'}",
                     "--config.sae.d_sae=48", "--config.train.steps=20", "--config.train.batch_size=128",
                     "--config.log.tensorboard=False")
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = json.loads((tmp_path / "run" / "export" / "cfg.json").read_text())
    expected = np.sqrt(24 / manifest.stats["mean_sq_norm"])  # from the manifest, not a sample
    assert cfg["metadata"]["saejax"]["norm_scale_folded"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_resume_on_data_of_another_width_is_one_clear_error(tmp_path):
    from saejax.data import store

    store.write_store(tmp_path / "store", np.random.default_rng(0).normal(size=(600, 24)).astype(np.float32))
    flags = ["--config.data.source=npy", f"--config.data.path={tmp_path / 'store'}", "--config.sae.d_sae=32",
             "--config.train.steps=4", "--config.train.batch_size=64", "--config.log.tensorboard=False"]
    assert run_cli(tmp_path / "run", *flags).returncode == 0
    store.write_store(tmp_path / "store", np.random.default_rng(0).normal(size=(600, 20)).astype(np.float32),
                      overwrite=True)
    result = run_cli(tmp_path / "run", *flags, "--config.train.steps=8")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "d_in=24" in last and "width 20" in last and last.startswith("error: ")


@pytest.mark.slow
def test_topk_from_the_default_config_inherits_no_l1_and_reports_held_out_metrics(tmp_path):
    # no --config: the image-patches job (ReLU + L1) with only the architecture changed
    result = run_cli(tmp_path, "--config.sae.arch=topk", "--config.sae.k=8", "--config.data.patch_size=6",
                     "--config.data.n_patches=4000", "--config.sae.d_sae=64", "--config.train.steps=40",
                     "--config.train.batch_size=128", "--config.train.eval_rows=1000", "--config.loss.dead_steps=5",
                     "--config.sae.dec_init_norm=0.3", "--config.log.tensorboard=False", config=DEFAULT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: loss.l1=2.0 is not a penalty of sae.arch='topk'" in result.stdout
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["loss"]["l1"], saved["loss"]["auxk"], saved["loss"]["dead_steps"]) == (0.0, 1 / 32, 5)
    assert saved["sae"]["dec_init_norm"] == 0.3  # the command line sets an architecture default
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval_split"] == "held-out" and summary["eval"]["rows"] == 1000
    assert summary["eval"]["l0"] == 8 and "dense_fraction" in summary["eval"]
    assert "final: split=held-out, rows=1000, l0=8," in result.stdout
    assert "loss/l1" not in (tmp_path / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_a_collapsed_run_stops_with_one_line_and_exports_nothing(tmp_path):
    flags = ["--config.data.patch_size=6", "--config.data.n_patches=4000", "--config.sae.d_sae=64",
             "--config.train.batch_size=128", "--config.train.log_every=10", "--config.train.checkpoint_every=50",
             "--config.optim.warmup_steps=10", "--config.log.tensorboard=False"]
    good = run_cli(tmp_path, *flags, "--config.train.steps=100", config=DEFAULT)
    assert good.returncode == 0, good.stderr[-2000:]
    (tmp_path / "summary.json").unlink()
    shutil.rmtree(tmp_path / "export")
    # the same run continued with a learning rate that wrecks it
    bad = run_cli(tmp_path, *flags, "--config.train.steps=200", "--config.optim.lr=30", config=DEFAULT)
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the SAE collapsed by step 150:") and "the last good checkpoint (step 100) is kept" in last
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [50, 100]
    assert not (tmp_path / "export").exists() and not (tmp_path / "summary.json").exists()


def _experiment_configs():
    """(file:variant, config) of every experiments/configs/*.py, each of its VARIANTS."""
    import importlib.util

    for path in sorted((ROOT / "experiments" / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant in getattr(module, "VARIANTS", (None,)):
            yield f"{path.name}:{variant}", module.get_config(*([variant] if variant else []))


def test_every_config_field_has_a_one_line_doc():
    from saejax import cli
    from saejax.config import FIELDS, field_docs

    docs = field_docs()
    assert len(docs) == len(FIELDS) and all(doc.strip() and "\n" not in doc for doc in docs.values())
    assert cli.field_paths(base_config()) == list(docs)
    configs = list(_experiment_configs())
    assert len(configs) >= 9  # 7 files, two of them with two variants
    for name, config in configs:
        assert set(cli.field_paths(config)) <= set(docs), (name, set(cli.field_paths(config)) - set(docs))

