"""parallel.strategy='mesh' on 8 fake CPU devices: same params as one device, exact TopK under
latent sharding, resume onto another mesh shape, and clear size errors. Each test runs in a fresh
process, because the device count is fixed at JAX's first use."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import saejax

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SYNTHETIC = ROOT / "experiments" / "configs" / "synthetic.py"


def eight_device_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


_EQUIVALENCE = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import saejax
    from saejax import losses, parallel, train
    from saejax.data.synthetic import SyntheticSource

    assert jax.device_count() == 8
    source = SyntheticSource(0, d=16, n_features=32, avg_active=3)
    batches = [source.batch(i, 64) for i in range(5)]
    probe = source.batch(99, 64)
    results = {}
    for arch in ("relu", "topk", "jumprelu"):
        c = saejax.base_config()
        c.sae.arch, c.sae.d_sae, c.sae.k = arch, 64, 4
        c.loss.l1 = 1.0 if arch == "relu" else 0.0
        c.loss.auxk, c.loss.dead_steps = (1 / 32, 2) if arch == "topk" else (0.0, 1000)
        c.loss.l0 = 0.01 if arch == "jumprelu" else 0.0
        sae = saejax.sae_from_config(c.sae, 16)
        loss = losses.loss_from_config(c.loss, sae)
        optimizer = train.optimizer_from_config(c.optim, c.train, sae)
        pure = train.make_train_step(sae, loss, optimizer, dead_steps=c.loss.dead_steps)
        fresh = lambda: train.init_train_state(sae, loss, optimizer, jax.random.key(0), source.sample(256))
        reference = fresh()
        step = train.jit_train_step(pure)
        for b in batches:
            reference, _ = step(reference, b)
        ref_active = np.asarray(sae.encode(reference.params, probe * reference.norm_scale) > 0)
        for shape in ("8,1", "4,2", "2,4"):
            mesh = parallel.make_mesh(shape)
            shardings = parallel.state_shardings(mesh, sae, optimizer, reference)
            state = jax.device_put(fresh(), shardings)
            mesh_step = parallel.jit_mesh_step(pure, mesh, shardings)
            for b in batches:
                state, _ = mesh_step(state, jax.device_put(b, parallel.batch_sharding(mesh)))
            rel = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r)))
                      for a, r in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)))
            active = np.asarray(sae.encode(state.params, probe * state.norm_scale) > 0)
            results[f"{arch} {shape}"] = {"rel": rel, "same_active": bool((active == ref_active).all()),
                                          "spec": list(state.params["W_enc"].sharding.spec)}
    print(json.dumps(results))
""")


def test_mesh_steps_match_the_single_device_run(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(_EQUIVALENCE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=eight_device_env(),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 9
    for name, r in results.items():
        assert r["rel"] < 1e-5, (name, r)
        assert r["same_active"], name  # TopK/JumpReLU choose the same latents under model sharding
        assert r["spec"] == [None, "model"], name


SMALL = ["--config.data.d=32", "--config.data.n_features=64", "--config.data.avg_active=3", "--config.sae.d_sae=128",
         "--config.sae.k=4", "--config.train.batch_size=256", "--config.train.steps=60",
         "--config.train.checkpoint_every=30", "--config.log.progress=False", "--config.log.tensorboard=False",
         "--config.train.eval_batches=1"]


def cli(workdir, *flags):
    args = [sys.executable, str(TRAIN), f"--workdir={workdir}", f"--config={SYNTHETIC}:topk", *SMALL, *flags]
    return subprocess.run(args, capture_output=True, text=True, env=eight_device_env(), timeout=600)


def test_cli_mesh_2x4_and_resume_on_another_mesh_match_one_device(tmp_path):
    single = cli(tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    meshed = cli(tmp_path / "mesh", "--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=2,4")
    assert meshed.returncode == 0, meshed.stderr[-2000:]
    assert "as a {'data': 2, 'model': 4} mesh" in meshed.stdout
    # resume from step 30 of the 2x4 run on a 4x2 mesh (the last checkpoint and export removed)
    import shutil

    shutil.rmtree(tmp_path / "mesh" / "checkpoints" / "60")
    resumed = cli(tmp_path / "mesh", "--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=4,2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 30" in resumed.stdout and "parallel.mesh_shape: '2,4' -> '4,2'" in resumed.stdout
    a, _ = saejax.load(tmp_path / "single")
    b, _ = saejax.load(tmp_path / "mesh")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5 * np.abs(a[key]).max(), err_msg=key)


@pytest.mark.parametrize("flags, message", [
    (["--config.parallel.mesh_shape=2,4", "--config.sae.d_sae=102"], "sae.d_sae=102 must divide by the mesh's model axis (4)"),
    (["--config.parallel.mesh_shape=8,1", "--config.train.batch_size=100"],
     "train.batch_size=100 must divide by the mesh's data axis (8)"),
    (["--config.parallel.mesh_shape=4,4"], "parallel.mesh_shape='4,4' needs 16 devices; 8 are visible"),
    (["--config.parallel.mesh_shape=4x2"], "parallel.mesh_shape='4x2' must be two integers 'D,M'"),
])
def test_mesh_size_errors_are_one_line_before_compiling(tmp_path, flags, message):
    result = cli(tmp_path, "--config.parallel.strategy=mesh", *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "checkpoints").exists()
