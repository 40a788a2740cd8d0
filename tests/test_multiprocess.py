"""Several processes on one machine (2 processes x 4 fake CPU devices, gloo collectives), through
`saejax.launch` and `experiments/train.py`: the same params as one process, a SIGTERM reaching one
process stops all of them at the same step with a checkpoint, and a killed process ends the others
with an error rather than a hang."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import saejax
from saejax import launch

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SYNTHETIC = ROOT / "experiments" / "configs" / "synthetic.py"
FLAGS = ["--config.data.d=32", "--config.data.n_features=64", "--config.data.avg_active=3", "--config.sae.d_sae=128",
         "--config.sae.k=4", "--config.train.batch_size=256", "--config.train.checkpoint_every=20",
         "--config.log.progress=False", "--config.log.tensorboard=False", "--config.train.eval_rows=512",
         "--config.optim.warmup_steps=0"]  # the LR schedule then does not depend on train.steps
STEPS = 100
MESH = ["--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=2,4"]


def command(workdir, *extra, steps=STEPS):
    return [str(TRAIN), f"--workdir={workdir}", f"--config={SYNTHETIC}:topk", *FLAGS, f"--config.train.steps={steps}",
            *extra]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}


def run_launcher(workdir, *extra, steps=STEPS):
    args = [sys.executable, "-m", "saejax.launch", "--processes=2", "--devices_per_process=4", "--",
            *command(workdir, *extra, steps=steps)]
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600)


def assert_same_params(workdir_a, workdir_b, rtol=1e-5):
    a, _ = saejax.load(workdir_a)
    b, _ = saejax.load(workdir_b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=rtol, atol=rtol * np.abs(a[key]).max(), err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process on one device, and 2 processes x 4 devices with the mesh strategy."""
    root = tmp_path_factory.mktemp("runs")
    single = subprocess.run([sys.executable, *command(root / "single")], capture_output=True, text=True,
                            env=env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    mesh = run_launcher(root / "mesh", *MESH)
    assert mesh.returncode == 0, mesh.stderr[-3000:]
    return root, mesh


def test_two_processes_on_a_mesh_match_one_process(runs):
    root, result = runs
    assert "8 cpu device(s) in 2 processes as a {'data': 2, 'model': 4} mesh" in result.stdout
    assert "final:" in result.stdout and "[1] final:" not in result.stdout  # process 0 reports
    assert "[Gloo] Rank" not in result.stdout + result.stderr
    assert_same_params(root / "single", root / "mesh")
    # process 0 alone wrote the run's files
    assert not list((root / "mesh").glob(".*.tmp"))
    records = (root / "mesh" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == len(set(records))


def test_two_processes_with_pmap_match_one_process(runs, tmp_path):
    root, _ = runs
    result = run_launcher(tmp_path, "--config.parallel.strategy=pmap")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in 2 processes as pmap replicas" in result.stdout
    assert_same_params(root / "single", tmp_path)


def spawn(workdir, steps, *extra):
    """Two processes started by hand (so the test can signal one), with launch's environment."""
    port = launch.free_port()
    return [subprocess.Popen(launch.command_line(command(workdir, *MESH, *extra, steps=steps)),
                             env=env(**{k: v for k, v in launch.process_env(i, 2, port, 4, 20).items()
                                        if k.startswith(("SAEJAX_", "XLA_"))}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def wait_for(path: Path, procs, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        for p in procs:
            assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.1)


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_matches(runs, tmp_path):
    root, _ = runs
    procs = spawn(tmp_path, 100000)
    wait_for(tmp_path / "checkpoints" / "20", procs)
    procs[1].send_signal(signal.SIGTERM)  # only process 1 hears it
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "stopped by a signal to another process at step" in outputs[0][0]
    step = int(outputs[0][0].split("at step ")[1].split(";")[0])
    assert str(step) in os.listdir(tmp_path / "checkpoints")
    assert step < STEPS  # the stop comes within a few steps of the signal
    resumed = run_launcher(tmp_path, *MESH)  # both processes resume from that step and finish
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stdout
    assert_same_params(root / "mesh", tmp_path, rtol=0)  # bitwise: same layout, same steps


def test_a_killed_process_ends_the_other_with_an_error_not_a_hang(tmp_path):
    procs = spawn(tmp_path, 100000)
    wait_for(tmp_path / "checkpoints" / "20", procs)
    procs[1].kill()
    start = time.monotonic()
    _, err = procs[0].communicate(timeout=180)  # a hang would raise TimeoutExpired
    assert procs[0].returncode != 0
    assert time.monotonic() - start < 120
    assert "another task died" in err or "heartbeat" in err, err[-3000:]


def test_launcher_returns_the_first_failure_and_kills_stragglers():
    quick = launch.launch([sys.executable, "-c", "import os, sys; sys.exit(3 if os.environ['SAEJAX_PROCESS_ID'] == '1' else 0)"],
                          2, grace_s=1)
    assert quick == 3
    start = time.monotonic()
    hung = launch.launch([sys.executable, "-c", "import os, sys, time; pid = os.environ['SAEJAX_PROCESS_ID']; "
                          "sys.exit(5) if pid == '1' else time.sleep(600)"], 2, grace_s=1)
    assert hung == 5 and time.monotonic() - start < 60
