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

from saejax.errors import ConfigError  # noqa: E402
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


# ---------------------------------------------------------------------------------------------
# Training data: (input, target) pairs from a harvested store and from the stream, aligned.


def _bert_mlp_of(model):
    """The layer's MLP as the model computes it: mlp_in rows [n, d] -> mlp_out rows [n, d]."""
    return lambda x: np.asarray(_bert_mlp(model.params["layers"][LAYER], jnp.asarray(x), "gelu"))


def _gemma_mlp_of(model):
    return lambda x: np.asarray(_gemma_mlp(model.params["layers"][LAYER], jnp.asarray(x), 1e-6))


def _run_config(model, **fields):
    from saejax.config import base_config

    config = base_config()
    config.model.name, config.model.layer, config.model.site, config.model.target_site = model.name, LAYER, "mlp_in", \
        "mlp_out"
    config.model.context_length = CONTEXT
    for path, value in fields.items():
        section, name = path.split("__")
        config[section][name] = value
    return config


def _assert_aligned(pairs, mlp, rtol=1e-4, atol=1e-4):
    """Row i of the targets is the MLP's output on row i of the inputs."""
    inputs, targets = pairs
    assert inputs.shape == targets.shape and inputs.shape[0] > 0
    np.testing.assert_allclose(targets, mlp(inputs), rtol=rtol, atol=atol)


def test_a_harvested_store_of_pairs_hands_out_aligned_inputs_and_targets(bert, tmp_path):
    from saejax import harvest
    from saejax.data import make_source
    from saejax.data.pairs import PairSource

    texts = TEXTS[:40]
    kwargs = dict(layer=LAYER, context_length=CONTEXT, batch_size=4, rows_per_shard=64)
    manifest = harvest.harvest(bert, texts, site="mlp_in", target_site="mlp_out", out_dir=tmp_path / "pairs", **kwargs)
    assert manifest.d_in == 2 * bert.d_model
    for site in ("mlp_in", "mlp_out"):  # the halves are the harvests of each site, row for row
        harvest.harvest(bert, texts, site=site, out_dir=tmp_path / site, **kwargs)
    stored = [np.concatenate([np.load(f) for f in sorted((tmp_path / name).glob("shard_*.npy"))])
              for name in ("pairs", "mlp_in", "mlp_out")]
    np.testing.assert_array_equal(stored[0], np.concatenate(stored[1:], axis=1))

    config = _run_config(bert, data__source="npy", data__path=str(tmp_path / "pairs"), data__chunk_rows=16,
                         data__heldout_fraction=0.2)
    source = make_source(config.data, 0, model=config.model)
    assert isinstance(source, PairSource) and (source.d_in, source.d_out) == (bert.d_model, bert.d_model)
    assert source.stats is None and source.heldout_rows > 0
    mlp = _bert_mlp_of(bert)
    for step in range(3):
        _assert_aligned(source.batch(step, 32), mlp)
    _assert_aligned(source.heldout_batch(0, 32), mlp)
    _assert_aligned(source.sample(50), mlp)
    config.model.target_site, config.data.input_columns = "", bert.d_model  # or split by data.input_columns
    _assert_aligned(make_source(config.data, 0, model=config.model).batch(0, 32), mlp)


@pytest.mark.parametrize("name", ["bert", "gemma"])
def test_the_stream_of_pairs_hands_out_aligned_inputs_and_targets(name, bert, gemma):
    from saejax.data import as_pairs, make_source
    from saejax.data.stream import ModelSource

    model = {"bert": bert, "gemma": gemma}[name]
    config = _run_config(model, data__source="model", data__buffer_contexts=32, data__forward_batch=4,
                         data__heldout_max_rows=40)
    rows = ModelSource(model, lambda: iter(TEXTS[10:]), lambda: iter(TEXTS[:10]), seed=0, layer=LAYER, site="mlp_in",
                       target_site="mlp_out", context_length=CONTEXT, buffer_contexts=32, forward_batch=4,
                       heldout_max_rows=40)
    source = as_pairs(rows, config.data, config.model)
    assert rows.d_in == 2 * model.d_model and source.d_out == model.d_model
    mlp = _bert_mlp_of(model) if name == "bert" else _gemma_mlp_of(model)
    for step in (0, 1, 7):
        _assert_aligned(source.batch(step, 16), mlp)
    _assert_aligned(source.heldout_batch(0, 16), mlp)
    with pytest.raises(ConfigError, match="model.target_site='mlp_in' must come after model.site='mlp_out'"):
        ModelSource(model, lambda: iter(TEXTS), lambda: iter(()), seed=0, layer=LAYER, site="mlp_out",
                    target_site="mlp_in")
    config.model.name, config.data.source = "", "npy"
    with pytest.raises(ConfigError, match="model.target_site='mlp_out' is a site of model.name's model"):
        make_source(config.data, 0, model=config.model)


# ---------------------------------------------------------------------------------------------
# Training: separate scales for inputs and targets, the held-out FVU of the target.


def test_a_transcoder_trains_on_pairs_with_a_scale_for_inputs_and_one_for_targets(gemma):
    from saejax import from_config, initializers, normalization
    from saejax import step as step_lib
    from saejax.data import as_pairs
    from saejax.data.stream import ModelSource
    from saejax.evaluate import heldout

    config = _run_config(gemma, sae__arch="topk_skip", sae__d_sae=64, sae__k=4, train__batch_size=32,
                         train__eval_rows=64, data__source="model")
    rows = ModelSource(gemma, lambda: iter(TEXTS[10:]), lambda: iter(TEXTS[:10]), seed=0, layer=LAYER, site="mlp_in",
                       target_site="mlp_out", context_length=CONTEXT, buffer_contexts=32, forward_batch=4,
                       heldout_max_rows=64)
    source = as_pairs(rows, config.data, config.model)
    sae, loss, optimizer = from_config.model_from_config(config, source.d_in, source.d_out)
    assert sae.transcoder and sae.arch == "topk_skip"
    inputs, targets = sample = source.sample(256)
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), sample)
    assert state.norm_scale.shape == (2,)
    for half, scale in zip(sample, np.asarray(state.norm_scale)):  # E||s·x||² = width, for each half
        np.testing.assert_allclose(np.mean(np.sum(np.square(half * scale), -1)), half.shape[1], rtol=1e-4)
    b_dec = initializers.geometric_median(jnp.asarray(targets * np.asarray(state.norm_scale)[1]))
    np.testing.assert_allclose(state.params["b_dec"], b_dec, rtol=1e-5, atol=1e-6)  # from the targets
    assert not np.any(state.params["W_skip"])

    train_step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer, dead_steps=1000))
    before = heldout.measure(config, source, sae, state)[0]
    seen = []
    for i in range(60):
        state, metrics = train_step(state, source.batch(i, 32))
        seen.append(float(metrics["fvu"]))
    after, _, split = heldout.measure(config, source, sae, state)
    assert split == "held-out" and after["rows"] == 64
    assert np.mean(seen[-5:]) < 0.7 * np.mean(seen[:5]) and after["fvu"] < 0.7 * before["fvu"]
    # the held-out FVU is the target's, measured on raw rows through the folded params
    x, y = source.heldout_batch(0, 64)
    folded = normalization.fold_norm(state.params, state.norm_scale)
    y_hat = np.asarray(sae.forward(folded, x, train=False).x_hat)
    np.testing.assert_allclose(after["fvu"], np.sum(np.square(y - y_hat)) / np.sum(np.square(y - y.mean(0))),
                               rtol=1e-3)
