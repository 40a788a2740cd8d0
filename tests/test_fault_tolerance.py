"""Kill a run at any moment and resume it with nothing lost and nothing changed: SIGKILL, SIGTERM,
damaged checkpoints, NaN data and diverging parameters, and `saejax.load`."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import saejax
from saejax import checkpoint
from saejax.config import base_config

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SYNTHETIC = ROOT / "experiments" / "configs" / "synthetic.py"
STEPS, EVERY = 1200, 50
# TopK + AuxK so that the dead-latent counter AuxK reads must survive too.
FLAGS = [
    "--config.data.d=32", "--config.data.n_features=64", "--config.data.avg_active=3", "--config.data.freq_ratio=10",
    "--config.sae.d_sae=128", "--config.sae.k=4", "--config.loss.dead_steps=10", "--config.train.batch_size=512",
    f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}", "--config.train.log_every=50",
    "--config.train.keep_checkpoints=3", "--config.train.eval_rows=512", "--config.log.tensorboard=False",
    "--config.log.progress=False",
]


def command(workdir, *extra):
    return [sys.executable, str(TRAIN), f"--workdir={workdir}", f"--config={SYNTHETIC}:topk", *FLAGS, *extra]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def run(workdir, *extra):
    return subprocess.run(command(workdir, *extra), capture_output=True, text=True, env=env(), timeout=600)


def start(workdir):
    return subprocess.Popen(command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def wait_for_checkpoint(workdir: Path, proc, step: int = EVERY, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (workdir / "checkpoints" / str(step) / "commit_success.txt").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def final_params(workdir):
    params, config = saejax.load(workdir)
    assert config.train.steps == STEPS
    return params


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == np.float32
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    return final_params(workdir)


def test_sigkill_at_a_random_step_then_rerun_is_bitwise_identical(tmp_path, uninterrupted):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, proc)
    time.sleep(random.Random().uniform(0.0, 1.0))
    proc.kill()  # SIGKILL: no handler runs, a save may be half written
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    killed_at = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_at < STEPS
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout
    assert f"took over the lock {tmp_path / '.lock'} of process {proc.pid}" in again.stdout  # the killed run's
    assert_bitwise_equal(final_params(tmp_path), uninterrupted)


def test_sigterm_saves_the_current_step_exits_zero_and_resumes_bitwise_identical(tmp_path, uninterrupted):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, proc)
    time.sleep(random.Random().uniform(0.0, 0.5))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    line = next(l for l in out.splitlines() if l.startswith("stopped by SIGTERM at step"))
    stopped_at = int(line.split("at step ")[1].split(";")[0])
    assert 0 < stopped_at < STEPS
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == stopped_at  # the step it stopped at, not the last multiple of EVERY
    ckpt.close()
    assert not (tmp_path / "export").exists() and not (tmp_path / "summary.json").exists()
    assert not (tmp_path / ".lock").exists()  # released on the way out
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"at step {stopped_at}" in again.stdout
    assert_bitwise_equal(final_params(tmp_path), uninterrupted)


FULL_DISK_RUN = '''"""Run experiments/train.py (argv[1:]) on a disk that fills up at checkpoint step
$SAEJAX_TEST_FULL_FROM: from then on Orbax's write of each step's config item fails with ENOSPC, on
its background thread."""
import errno, os, re, runpy, sys

import orbax.checkpoint as ocp

full_from, write = int(os.environ["SAEJAX_TEST_FULL_FROM"]), ocp.JsonCheckpointHandler._save_fn


async def save_fn(self, item, directory):
    if int(re.search(r"/(\\d+)[^/]*/[^/]*$", str(directory)).group(1)) >= full_from:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await write(self, item, directory)


ocp.JsonCheckpointHandler._save_fn = save_fn
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_a_full_disk_stops_the_run_with_one_line_and_the_rerun_is_bitwise_identical(tmp_path, uninterrupted):
    script = tmp_path / "full_disk_run.py"
    script.write_text(FULL_DISK_RUN)
    workdir = tmp_path / "run"
    full = subprocess.run([sys.executable, str(script), *command(workdir)[1:]], capture_output=True, text=True,
                          env={**env(), "SAEJAX_TEST_FULL_FROM": "600"}, timeout=600)
    assert full.returncode == 1
    assert full.stderr.strip().splitlines() == [
        f"error: checkpoint step 600 could not be written in {workdir / 'checkpoints'}: No space left on device; "
        "the last good checkpoint (step 550) is kept"], full.stderr[-3000:]
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    assert ckpt.latest_step() == 550
    ckpt.close()
    again = run(workdir)  # space freed
    assert again.returncode == 0, again.stderr[-2000:]
    assert "at step 550" in again.stdout
    assert_bitwise_equal(final_params(workdir), uninterrupted)


def _damage(step_dir: Path, how: str) -> None:
    data_files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
                        key=lambda p: p.stat().st_size)
    biggest = data_files[-1]
    if how == "truncate":
        with open(biggest, "r+b") as fh:
            fh.truncate(biggest.stat().st_size // 3)
    else:
        biggest.unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, how):
    first = run(tmp_path)  # the whole run (a shorter one would have another lr schedule: it decays at the end)
    assert first.returncode == 0, first.stderr[-2000:]
    latest = STEPS
    _damage(tmp_path / "checkpoints" / str(latest), how)
    (tmp_path / f"checkpoints/{latest + 7}.orbax-checkpoint-tmp-123").mkdir()  # a crash mid-save leaves these
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"the checkpoint at step {latest} is damaged" in again.stderr
    assert f"fell back to step {latest - EVERY}" in again.stderr
    assert f"at step {latest - EVERY}" in again.stdout
    assert (tmp_path / "checkpoints" / f"{latest}.damaged").is_dir()
    assert_bitwise_equal(final_params(tmp_path), uninterrupted)


def test_nan_in_the_data_mid_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from saejax.data import make_source, store

    rng = np.random.default_rng(0)
    store.write_store(tmp_path / "store", rng.normal(size=(40000, 16)).astype(np.float32), rows_per_shard=5000)
    flags = [f"--workdir={tmp_path / 'run'}", "--config.data.source=npy", f"--config.data.path={tmp_path / 'store'}",
             "--config.sae.d_sae=32", "--config.train.batch_size=256", "--config.train.checkpoint_every=10",
             "--config.log.tensorboard=False"]
    first = subprocess.run([sys.executable, str(TRAIN), *flags, "--config.train.steps=100"],
                           capture_output=True, text=True, env=env(), timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    # the data goes bad under the job: a row that batch 120 uses first (an epoch is 156 batches)
    c = base_config().data  # the run's reader: the same held-out split, so the same stream
    c.source, c.path = "npy", str(tmp_path / "store")
    reader = make_source(c, seed=0)
    path, row = reader.where(int(reader.rows(120, 256)[9]))
    data = np.load(path)
    data[row, 5] = np.nan
    np.save(path, data)
    result = subprocess.run([sys.executable, str(TRAIN), *flags, "--config.train.steps=400"],
                            capture_output=True, text=True, env=env(), timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "at step 120" in last and f"{Path(path).name}: row {row}" in last
    params, _ = saejax.load(tmp_path / "run")  # the last good checkpoint restores, finite
    assert all(np.isfinite(v).all() for v in params.values())
    ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() == 120
    ckpt.close()


class _SourceThatExplodes:
    """Batches become huge (finite, but their squares overflow) from step 23 on."""

    name, d_in = "exploding", 8

    def sample(self, n):
        return np.random.default_rng(0).normal(size=(n, self.d_in)).astype(np.float32)

    def batch(self, step, batch_size):
        batch = np.random.default_rng(step).normal(size=(batch_size, self.d_in)).astype(np.float32)
        return batch * (1e30 if step >= 23 else 1.0)


def test_non_finite_loss_or_params_stop_before_overwriting_the_last_good_checkpoint(tmp_path, monkeypatch):
    from saejax import assemble

    monkeypatch.setattr(assemble.data, "make_source", lambda data, seed, **_: _SourceThatExplodes())
    c = base_config()
    c.sae.d_sae, c.train.batch_size, c.train.steps, c.log.progress, c.log.tensorboard = 16, 32, 60, False, False
    c.train.checkpoint_every, c.train.log_every = 10, 1000
    with pytest.raises(saejax.SaejaxError, match=r"became non-finite by step 30; stopped before saving, "
                                                 r"the last good checkpoint \(step 20\) is kept"):
        saejax.train_and_evaluate(c, tmp_path)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 20
    ckpt.close()
    params, _ = saejax.load(tmp_path)
    assert all(np.isfinite(v).all() for v in params.values())


def test_load_from_workdir_and_export_agree(tmp_path):
    c = base_config()
    c.data.d, c.data.n_features, c.sae.d_sae, c.train.batch_size, c.train.steps = 16, 32, 48, 128, 20
    c.log.progress, c.log.tensorboard = False, False
    saejax.train_and_evaluate(c, tmp_path)
    from_checkpoint, config = saejax.load(tmp_path)
    from_export, export_config = saejax.load(tmp_path / "export")
    assert config.sae.d_sae == export_config.sae.d_sae == 48
    assert config.norm_scale == pytest.approx(export_config.norm_scale)
    assert_bitwise_equal(from_checkpoint, from_export)
    with pytest.raises(saejax.DataError, match="not a saejax workdir"):
        saejax.load(tmp_path / "plots")


def test_no_pickle_in_saving_or_loading():
    sources = {p: p.read_text() for p in (ROOT / "saejax").rglob("*.py")}
    for path, text in sources.items():
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "np.load(" in line and "mmap_mode" not in line:
                assert "allow_pickle=False" in line, (path, line)
