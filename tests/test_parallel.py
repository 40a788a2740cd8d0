"""parallel.strategy='pmap' and 'mesh' on 8 fake CPU devices: same params, counters and metrics as
one device, exact two-stage TopK under latent sharding, resume onto another mesh shape or strategy,
and clear size errors. Each test runs in a fresh process, because the device count is fixed at
JAX's first use."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import saejax

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

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
    from saejax import latent_axis, losses, optimizers, parallel, train
    from saejax import step as step_lib
    from saejax.data.synthetic import SyntheticSource
    from saejax.resampling import resample_dead_latents

    assert jax.device_count() == 8
    source = SyntheticSource(0, d=16, n_features=32, avg_active=3)
    batches = [source.batch(i, 64) for i in range(5)]
    probe = source.batch(99, 64)
    results = {}
    # SGD shows a wrongly scaled gradient at once (Adam would hide it); one Adam case for its sharded moments
    cases = {"relu": dict(l1=1.0), "relu adam": dict(l1=1.0), "topk": dict(auxk=1 / 32, dead_steps=2),
             "topk sparse": dict(auxk=1 / 32, dead_steps=2),
             "jumprelu": dict(l0=0.01), "batchtopk": dict(auxk=1 / 32, dead_steps=2),
             "relu kl balance": dict(l1=0.0, kl=0.1, balance=0.1)}
    for name, terms in cases.items():
        c = saejax.base_config()
        c.sae.arch, c.sae.d_sae, c.sae.k = name.split()[0], 64, 4
        c.sae.sparse = "true" if "sparse" in name else "auto"
        c.loss.l1 = 0.0
        for key, value in terms.items():
            c.loss[key] = value
        c.optim.name, c.optim.lr = ("adam", 1e-3) if "adam" in name else ("sgd", 0.05)
        c, _ = saejax.defaults.resolve(c)  # as a run completes its config (dead window, clipping, ...)
        sae = saejax.sae_from_config(c.sae, 16)
        loss = losses.loss_from_config(c.loss, sae)
        optimizer = optimizers.optimizer_from_config(c.optim, c.train, sae)
        pure = step_lib.make_train_step(sae, loss, optimizer, dead_steps=c.loss.dead_steps)
        fresh = lambda: step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), source.sample(256))
        abstract = step_lib.abstract_train_state(sae, loss, optimizer)

        where_of = {}

        def encode_on(mesh, params, x):
            with latent_axis.split_over(mesh):
                return sae.encode(params, x)

        def run(strategy, shape):
            mesh = None if strategy == "none" else parallel.make_mesh(shape)
            where_of[shape] = mesh
            where = parallel.placement(strategy, mesh, sae, optimizer, abstract, 64)
            state = fresh() if mesh is None else parallel.put_state(fresh(), where.state_shardings)
            step = where.compile(pure)
            resample = jax.jit(lambda s, b: resample_dead_latents(sae, optimizer, s, b.reshape(-1, 16), jax.random.key(1), 1),
                               out_shardings=(where.state_shardings, None) if mesh is not None else None)
            for i, b in enumerate(batches):
                state, metrics = step(state, parallel.put_batch(b, where))
                if i == 2:  # resampling also runs on each layout
                    state, _ = resample(state, parallel.put_batch(batches[0], where))
            return state, jax.device_get(metrics)

        reference, ref_metrics = run("none", "")
        ref_active = np.asarray(sae.encode(reference.params, probe * reference.norm_scale) > 0)
        for strategy, shape in (("pmap", ""), ("mesh", "8,1"), ("mesh", "4,2"), ("mesh", "2,4")):
            state, step_metrics = run(strategy, shape)
            rel = max(float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r)))
                      for a, r in zip(jax.tree.leaves(state), jax.tree.leaves(reference))
                      if jnp.issubdtype(r.dtype, jnp.floating) and r.size)
            same_ints = all(bool(jnp.all(a == r)) for a, r in zip(jax.tree.leaves(state), jax.tree.leaves(reference))
                            if jnp.issubdtype(r.dtype, jnp.integer))
            metrics_rel = max(abs(float(step_metrics[k]) - float(ref_metrics[k])) / max(abs(float(ref_metrics[k])), 1e-6)
                              for k in ref_metrics)
            active = np.asarray(sae.encode(jax.device_get(state.params), probe * reference.norm_scale) > 0)
            same_choice = True
            if strategy == "mesh":  # the latents the sharded (two-stage) encoder picks, same params
                x = probe * reference.norm_scale
                sharded = jax.jit(lambda p, x: encode_on(where_of[shape], p, x))(state.params, x)
                same_choice = bool((np.asarray(sharded > 0) == np.asarray(sae.encode(jax.device_get(state.params), x) > 0)).all())
            results[f"{name} {strategy} {shape}"] = {
                "rel": rel, "same_ints": same_ints, "metrics_rel": metrics_rel, "same_choice": same_choice,
                "same_active": bool((active == ref_active).all()), "spec": list(state.params["W_enc"].sharding.spec)}
    print(json.dumps(results))
""")


def run_on_eight_devices(tmp_path, script_text: str):
    """Run a script in a fresh 8-device process; returns the JSON on its last stdout line."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=eight_device_env(),
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pmap_and_mesh_steps_match_the_single_device_run(tmp_path):
    results = run_on_eight_devices(tmp_path, _EQUIVALENCE)
    assert len(results) == 7 * 4
    for name, r in results.items():
        assert r["rel"] < 1e-5, (name, r)  # params, optimizer state, loss-term state
        assert r["same_ints"], name  # step and dead-latent counters
        assert r["metrics_rel"] < 1e-5, (name, r)  # the logged loss terms and metrics are global too
        assert r["same_active"], name  # TopK/BatchTopK/JumpReLU choose the same latents
        assert r["same_choice"], name  # and the two-stage top-k over sharded latents picks what one device picks
        assert r["spec"] == ([] if " pmap " in name else [None, "model"]), name


SMALL = ["--config.data.d=32", "--config.data.n_features=64", "--config.data.avg_active=3", "--config.sae.d_sae=128",
         "--config.sae.k=4", "--config.train.batch_size=256", "--config.train.steps=60",
         "--config.train.checkpoint_every=30", "--config.log.progress=False", "--config.log.tensorboard=False",
         "--config.train.eval_rows=512"]


def cli(workdir, *flags):
    args = [sys.executable, str(TRAIN), f"--workdir={workdir}", f"--config={SYNTHETIC}:topk", *SMALL, *flags]
    return subprocess.run(args, capture_output=True, text=True, env=eight_device_env(), timeout=600)


def test_cli_pmap_mesh_2x4_and_resumes_on_other_layouts_match_one_device(tmp_path):
    single = cli(tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    pmapped = cli(tmp_path / "pmap", "--config.parallel.strategy=pmap")
    assert pmapped.returncode == 0, pmapped.stderr[-2000:]
    assert "8 cpu device(s) as pmap replicas" in pmapped.stdout
    shutil.rmtree(tmp_path / "pmap" / "checkpoints" / "60")  # resume the pmap run at step 30 on a mesh
    switched = cli(tmp_path / "pmap", "--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=4,2")
    assert switched.returncode == 0 and "at step 30" in switched.stdout, switched.stderr[-2000:]
    meshed = cli(tmp_path / "mesh", "--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=2,4")
    assert meshed.returncode == 0, meshed.stderr[-2000:]
    assert "as a {'data': 2, 'model': 4} mesh" in meshed.stdout
    # resume from step 30 of the 2x4 run on a 4x2 mesh (the last checkpoint and export removed)
    shutil.rmtree(tmp_path / "mesh" / "checkpoints" / "60")
    resumed = cli(tmp_path / "mesh", "--config.parallel.strategy=mesh", "--config.parallel.mesh_shape=4,2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 30" in resumed.stdout and "parallel.mesh_shape: '2,4' -> '4,2'" in resumed.stdout
    a, _ = saejax.load(tmp_path / "single")
    for run in ("pmap", "mesh"):
        b, _ = saejax.load(tmp_path / run)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5 * np.abs(a[key]).max(), err_msg=(run, key))


# every size message is checked in-process by test_parallel_sizes; these two go through the command line
@pytest.mark.parametrize("flags, message", [
    (["--config.parallel.mesh_shape=4,4"], "parallel.mesh_shape='4,4' needs 16 devices; 8 are visible"),
    (["--config.parallel.strategy=pmap", "--config.train.batch_size=100"],
     "train.batch_size=100 must divide by the mesh's data axis (8)"),
])
def test_mesh_size_errors_are_one_line_before_compiling(tmp_path, flags, message):
    result = cli(tmp_path, "--config.parallel.strategy=mesh", *flags)  # a later strategy flag wins
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "checkpoints").exists()


_GATHERS = textwrap.dedent("""
    import json, re
    import jax, numpy as np
    import saejax
    from saejax import losses, optimizers, parallel, train
    from saejax import step as step_lib
    from saejax.data.synthetic import SyntheticSource

    source = SyntheticSource(0, d=16, n_features=32, avg_active=3)
    c = saejax.base_config()
    c.sae.arch, c.sae.d_sae, c.sae.k, c.loss.l1, c.loss.auxk = "topk", 1024, 4, 0.0, 1 / 32
    c, _ = saejax.defaults.resolve(c)
    sae = saejax.sae_from_config(c.sae, 16)
    loss = losses.loss_from_config(c.loss, sae)
    optimizer = optimizers.optimizer_from_config(c.optim, c.train, sae)
    pure = step_lib.make_train_step(sae, loss, optimizer, dead_steps=c.loss.dead_steps)
    where = parallel.placement("mesh", parallel.make_mesh("2,4"), sae, optimizer,
                               step_lib.abstract_train_state(sae, loss, optimizer), 64)
    state = parallel.put_state(step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), source.sample(256)),
                               where.state_shardings)
    hlo = where.compile(pure).lower(state, parallel.put_batch(source.batch(0, 64), where)).compile().as_text()
    sizes = [int(np.prod([int(d) for d in m.group(1).split(",") if d]))
             for m in re.finditer(r"= \\w+\\[([\\d,]*)\\][^=]*? all-gather\\(", hlo)]
    print(json.dumps(sizes))
""")


def test_topk_over_sharded_latents_gathers_candidates_not_the_pre_activations(tmp_path):
    """Two-stage top-k: TopK (k=4) and AuxK (k_aux=8) gather k·M candidates per row, never the
    [B/D, d_sae] pre-activations that XLA's own partitioning of lax.top_k gathers."""
    sizes = run_on_eight_devices(tmp_path, _GATHERS)
    rows_per_device, d_sae, model, k_aux = 64 // 2, 1024, 4, 8
    assert sizes and max(sizes) <= rows_per_device * k_aux * model < rows_per_device * d_sae // 4
