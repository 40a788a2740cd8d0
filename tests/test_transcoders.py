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


# ---------------------------------------------------------------------------------------------
# Architectures: transcoders and skip transcoders, their gradients against the dense formula.

D_IN, D_OUT, D_SAE, K = 6, 5, 24, 3


def _random_params(sae, seed=0):
    """`sae`'s initial params with random biases and (skip variants) a random W_skip."""
    params = dict(sae.init(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    for key in ("b_enc", "b_dec", "W_skip"):
        if key in params:
            params[key] = jnp.asarray(rng.normal(scale=0.3, size=params[key].shape), jnp.float32)
    return params


def _dense_formula(arch, params, x):
    """The transcoder's reconstruction written out plainly: pre = x @ W_enc + b_enc (no b_dec on the
    input), z = ReLU(pre) or its k largest per row, x_hat = z @ W_dec + b_dec (+ x @ W_skip.T)."""
    pre = x @ params["W_enc"] + params["b_enc"]
    if arch.startswith("topk"):
        values, indices = jax.lax.top_k(pre, K)
        rows = jnp.arange(x.shape[0])[:, None]
        z = jnp.zeros_like(pre).at[rows, indices].set(jax.nn.relu(values))
    else:
        z = jax.nn.relu(pre)
    x_hat = z @ params["W_dec"] + params["b_dec"]
    return x_hat + x @ params["W_skip"].T if "W_skip" in params else x_hat


@pytest.mark.parametrize("arch,sparse", [("relu", False), ("topk", False), ("topk", True), ("relu_skip", False),
                                         ("topk_skip", False), ("topk_skip", True)])
def test_transcoder_gradients_are_those_of_the_dense_formula(arch, sparse):
    import saejax

    sae = saejax.make_sae(arch, D_IN, D_SAE, k=K, d_out=D_OUT, sparse=sparse)
    assert sae.transcoder and sae.d_out == D_OUT and sae.hparams["sparse"] == sparse
    params = _random_params(sae)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(16, D_IN)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, D_OUT)), jnp.float32)

    def ours(p):
        return jnp.mean(jnp.sum(jnp.square(y - sae.forward(p, x).x_hat), -1))

    def reference(p):
        return jnp.mean(jnp.sum(jnp.square(y - _dense_formula(arch, p, x)), -1))

    np.testing.assert_allclose(ours(params), reference(params), rtol=1e-5)
    got, want = jax.jit(jax.grad(ours))(params), jax.grad(reference)(params)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(sae.encode(params, x) @ params["W_dec"] + params["b_dec"]
                               + (x @ params["W_skip"].T if "W_skip" in params else 0),
                               sae.forward(params, x, train=False).x_hat, rtol=1e-5, atol=1e-5)


def test_the_skip_term_starts_at_zero_and_adds_x_times_w_skip():
    import saejax

    base, skip = (saejax.make_sae(arch, D_IN, D_SAE, k=K, d_out=D_OUT) for arch in ("topk", "topk_skip"))
    params = skip.init(jax.random.key(0))
    assert params["W_skip"].shape == (D_OUT, D_IN) and not np.any(params["W_skip"])
    assert skip.latent_axes["W_skip"] is None
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, D_IN)), jnp.float32)
    without = {k: v for k, v in params.items() if k != "W_skip"}
    np.testing.assert_array_equal(skip.forward(params, x).x_hat, base.forward(without, x).x_hat)
    w_skip = jnp.asarray(np.random.default_rng(3).normal(size=(D_OUT, D_IN)), jnp.float32)
    np.testing.assert_allclose(skip.forward({**params, "W_skip": w_skip}, x).x_hat,
                               base.forward(without, x).x_hat + x @ w_skip.T, rtol=1e-5, atol=1e-5)
