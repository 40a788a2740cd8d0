"""The streamed ``model`` source on many devices and processes (tiny random BERT, 8 fake CPU devices):
a run on a ("data", "model") mesh, one with pmap replicas, and one of 2 processes x 4 devices (each
process computing only its own shards of every fill) end where the same run on one device does; for
an SAE, a transcoder (mlp_in -> mlp_out) and a skip transcoder; and the model's forward spread over
the 8 devices (data.forward_on_all_devices) gives the same rows to float rounding."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")

import saejax  # noqa: E402
from test_stream import CONTEXT, LAYER, TEXTS, tiny_bert  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
SHARDS = 4  # 8 rows of each batch of 32 per shard; 2 processes compute 2 shards of every fill each


def flags(model_dir: Path, corpus: Path) -> list[str]:
    return [f"--config.model.name={model_dir}", f"--config.model.layer={LAYER}", f"--config.model.text_glob={corpus}",
            f"--config.model.context_length={CONTEXT}", "--config.model.eval_texts=4",
            "--config.model.dashboard_latents=0", "--config.data.source=model", "--config.data.buffer_contexts=64",
            "--config.data.forward_batch=4", f"--config.data.stream_shards={SHARDS}", "--config.sae.arch=topk",
            "--config.sae.d_sae=64", "--config.sae.k=4", "--config.train.batch_size=32", "--config.train.steps=40",
            "--config.train.checkpoint_every=20", "--config.train.eval_rows=200", "--config.log.tensorboard=False",
            "--config.log.progress=False", "--config.train.evaluators=heldout,export"]


def env(devices: int = 0) -> dict:
    extra = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"} if devices else {}
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}


def train(workdir: Path, common: list[str], *extra: str, devices: int = 0, processes: int = 0):
    command = [str(TRAIN), f"--workdir={workdir}", *common, *extra]
    if processes:
        command = ["-m", "saejax.launch", f"--processes={processes}", "--devices_per_process=4", "--", *command]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env(devices), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_params(a_dir: Path, b_dir: Path) -> None:
    (a, _), (b, _) = saejax.load(a_dir), saejax.load(b_dir)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5 * np.abs(a[key]).max(), err_msg=key)


KINDS = {"sae": [], "transcoder": ["--config.model.site=mlp_in", "--config.model.target_site=mlp_out"],
         "skip": ["--config.model.site=mlp_in", "--config.model.target_site=mlp_out", "--config.sae.arch=topk_skip"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, {kind: its flags}), each kind trained once on one device in root/KIND/single."""
    root = tmp_path_factory.mktemp("stream_parallel")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    common = flags(tiny_bert(root / "bert"), corpus)
    kinds = {kind: common + extra for kind, extra in KINDS.items()}
    for kind, kind_flags in kinds.items():
        train(root / kind / "single", kind_flags)
    return root, kinds


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["mesh", "pmap"])
def test_a_stream_run_on_eight_devices_matches_one_device(setup, strategy, kind):
    root, kinds = setup
    extra = ["--config.parallel.mesh_shape=2,4"] if strategy == "mesh" else []
    result = train(root / kind / strategy, kinds[kind], f"--config.parallel.strategy={strategy}", *extra, devices=8)
    assert "8 cpu device(s)" in result.stdout and ("transcoder" in result.stdout) == (kind != "sae")
    assert_same_params(root / kind / "single", root / kind / strategy)


@pytest.mark.parametrize("kind", ["sae", "skip"])
def test_two_processes_each_streaming_their_own_shards_match_one_process(setup, kind):
    root, kinds = setup
    result = train(root / kind / "processes", kinds[kind], "--config.parallel.strategy=mesh",
                   "--config.parallel.mesh_shape=2,4", processes=2)
    assert "in 2 processes" in result.stdout and "does not divide" not in result.stdout + result.stderr
    assert f"in {SHARDS} shards (each of 2 processes computes 2)" in result.stdout
    assert_same_params(root / kind / "single", root / kind / "processes")


_SPREAD = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from saejax.data.stream import ModelSource
    from saejax.models.loading import load_text_model
    from test_stream import TEXTS, SIZES, LAYER, SITE
    model = load_text_model({model!r})
    def source(devices, **extra):
        return ModelSource(model, lambda: iter(TEXTS), lambda: iter(TEXTS[:30]), seed=0, layer=LAYER, site=SITE,
                           devices=devices, **{{**SIZES, **extra}})
    one, spread = source(None, forward_batch=6), source(jax.local_devices(), forward_batch=6)  # 2 copies pad to 8
    out = spread.capture(model.params, *[np.zeros((8, 16), np.int32)] * 2)
    a, b = one.fill_rows(1), spread.fill_rows(1)
    ha, hb = one.heldout_batch(0, 64), spread.heldout_batch(0, 64)
    print(json.dumps({{"devices": len(out.sharding.device_set), "shapes": [a.shape == b.shape, ha.shape == hb.shape],
                      "rel": float(max(np.abs(a - b).max() / np.abs(a).max(),
                                       np.abs(ha - hb).max() / np.abs(ha).max()))}}))
""")


def test_a_forward_spread_over_the_devices_gives_the_rows_of_one_device(setup, tmp_path):
    root, _ = setup
    script = tmp_path / "spread.py"
    script.write_text(_SPREAD.format(tests=str(ROOT / "tests"), model=str(root / "bert")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env(8), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["devices"] == 8 and found["shapes"] == [True, True] and found["rel"] < 1e-5, found
