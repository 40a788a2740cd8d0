"""Transcoders: an SAE-like model that reads one hook point (the MLP's input, ``mlp_in``) and
reconstructs another (its output, ``mlp_out``), and skip transcoders with a linear skip term.

On tiny random BERT and Gemma-3 models: the mlp_in hook point is what the MLP reads; pairs of
(input, target) rows from a store or the stream are aligned; gradients are those of the dense formula;
the splice replaces the MLP's output and reports CE recovered; SAELens loads the export and computes
what we compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers")

from saejax.models import bert as bert_lib  # noqa: E402
from saejax.models import gemma3 as gemma_lib  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402
from test_stream import TEXTS, tiny_bert, tiny_gemma  # noqa: E402

LAYER, CONTEXT = 1, 16


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return load_text_model(str(tiny_bert(tmp_path_factory.mktemp("models") / "bert")))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return load_text_model(str(tiny_gemma(tmp_path_factory.mktemp("models") / "gemma")))


def _tokens(model, n=6):
    return model.tokenize(TEXTS[:n], CONTEXT)


def _bert_mlp(p, x, config):
    return bert_lib._dense(bert_lib._activation(config)(bert_lib._dense(x, p["mlp_in"])), p["mlp_out"])


# ---------------------------------------------------------------------------------------------
# The mlp_in hook point.


def test_bert_mlp_in_is_what_the_mlp_reads_and_replacing_it_leaves_the_residual_stream(bert):
    ids, mask = _tokens(bert)
    points = [(LAYER - 1, "resid_post"), (LAYER, "attn_out"), (LAYER, "mlp_in"), (LAYER, "mlp_out"),
              (LAYER, "resid_post")]
    _, got = bert.forward(ids, mask, capture=points)
    p, eps = bert.params["layers"][LAYER], 1e-12
    mlp_in = bert_lib._layer_norm(got[(LAYER - 1, "resid_post")] + got[(LAYER, "attn_out")], p["attn_norm"], eps)
    np.testing.assert_allclose(got[(LAYER, "mlp_in")], mlp_in, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[(LAYER, "mlp_out")], _bert_mlp(p, mlp_in, "gelu"), rtol=1e-5, atol=1e-5)

    shifted = lambda layer, site, x: x + 1.0 if (layer, site) == (LAYER, "mlp_in") else x  # noqa: E731
    _, hooked = bert.forward(ids, mask, hook=shifted, capture=points[2:])
    np.testing.assert_allclose(hooked[(LAYER, "mlp_out")], _bert_mlp(p, mlp_in + 1.0, "gelu"), rtol=1e-5, atol=1e-5)
    residual = bert_lib._layer_norm(mlp_in + hooked[(LAYER, "mlp_out")], p["mlp_norm"], eps)  # h, not h + 1
    np.testing.assert_allclose(hooked[(LAYER, "resid_post")], residual, rtol=1e-5, atol=1e-5)


def _gemma_mlp(p, x, eps):
    inner = (jax.nn.gelu(x @ p["gate"].T, approximate=True) * (x @ p["up"].T)) @ p["down"].T
    return gemma_lib._rms_norm(inner, p["mlp_post_norm"], eps)


def test_gemma_mlp_in_is_the_pre_norm_output_the_mlp_reads(gemma):
    ids, mask = _tokens(gemma)
    points = [(LAYER - 1, "resid_post"), (LAYER, "attn_out"), (LAYER, "mlp_in"), (LAYER, "mlp_out"),
              (LAYER, "resid_post")]
    _, got = gemma.forward(ids, mask, capture=points)
    p, eps = gemma.params["layers"][LAYER], 1e-6
    before_mlp = got[(LAYER - 1, "resid_post")] + got[(LAYER, "attn_out")]
    mlp_in = gemma_lib._rms_norm(before_mlp, p["mlp_pre_norm"], eps)
    np.testing.assert_allclose(got[(LAYER, "mlp_in")], mlp_in, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[(LAYER, "mlp_out")], _gemma_mlp(p, mlp_in, eps), rtol=1e-4, atol=1e-4)

    doubled = lambda layer, site, x: 2 * x if (layer, site) == (LAYER, "mlp_in") else x  # noqa: E731
    _, hooked = gemma.forward(ids, mask, hook=doubled, capture=points[3:])
    np.testing.assert_allclose(hooked[(LAYER, "mlp_out")], _gemma_mlp(p, 2 * mlp_in, eps), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hooked[(LAYER, "resid_post")], before_mlp + hooked[(LAYER, "mlp_out")],
                               rtol=1e-4, atol=1e-3)
