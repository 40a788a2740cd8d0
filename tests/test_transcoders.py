"""Transcoders: an SAE-like model that reads one hook point (the MLP's input, ``mlp_in``) and
reconstructs another (its output, ``mlp_out``), and skip transcoders with a linear skip term.

On tiny random BERT and Gemma-3 models: the mlp_in hook point is what the MLP reads; pairs of
(input, target) rows from a store or the stream are aligned; gradients are those of the dense formula;
the splice replaces the MLP's output and reports CE recovered; SAELens loads the export and computes
what we compute."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers")

import saejax  # noqa: E402
from saejax import analysis, export, from_config, harvest, initializers, normalization, splice  # noqa: E402
from saejax import step as step_lib  # noqa: E402
from saejax.config import base_config  # noqa: E402
from saejax.data import as_pairs, make_source  # noqa: E402
from saejax.data.pairs import PairSource  # noqa: E402
from saejax.data.stream import ModelSource  # noqa: E402
from saejax.errors import ConfigError, SaejaxError  # noqa: E402
from saejax.evaluate import heldout  # noqa: E402
from saejax.models import bert as bert_lib  # noqa: E402
from saejax.models import gemma3 as gemma_lib  # noqa: E402
from saejax.models.loading import load_text_model, padded_batch  # noqa: E402
from test_stream import TEXTS, tiny_bert, tiny_gemma  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LAYER, CONTEXT = 1, 16


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return load_text_model(str(tiny_bert(tmp_path_factory.mktemp("models") / "bert")))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return load_text_model(str(tiny_gemma(tmp_path_factory.mktemp("models") / "gemma")))


def _tokens(model, n=6):
    return model.tokenize(TEXTS[:n], CONTEXT)


def _bert_mlp(p, x, act):
    return bert_lib._dense(bert_lib._activation(act)(bert_lib._dense(x, p["mlp_in"])), p["mlp_out"])


# ---------------------------------------------------------------------------------------------
# The mlp_in hook point.


# the points around block LAYER's MLP, in the order a forward pass computes them
AROUND_MLP = [(LAYER - 1, "resid_post"), (LAYER, "attn_out"), (LAYER, "mlp_in"), (LAYER, "mlp_out"),
              (LAYER, "resid_post")]


def test_bert_mlp_in_is_what_the_mlp_reads_and_replacing_it_leaves_the_residual_stream(bert):
    ids, mask = _tokens(bert)
    points = AROUND_MLP
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
    points = AROUND_MLP
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
    config = base_config()
    config.model.name, config.model.layer, config.model.context_length = model.name, LAYER, CONTEXT
    config.model.site, config.model.target_site = "mlp_in", "mlp_out"
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
    config.model.name = ""  # a store of pairs needs no model to train on
    _assert_aligned(make_source(config.data, 0, model=config.model).batch(0, 32), mlp)


@pytest.mark.parametrize("name", ["bert", "gemma"])
def test_the_stream_of_pairs_hands_out_aligned_inputs_and_targets(name, bert, gemma):
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
    config.data.source = "synthetic"
    with pytest.raises(ConfigError, match="model.target_site='mlp_out' trains a transcoder on pairs of a text model"):
        make_source(config.data, 0, model=config.model)


# ---------------------------------------------------------------------------------------------
# Training: separate scales for inputs and targets, the held-out FVU of the target.


def test_a_transcoder_trains_on_pairs_with_a_scale_for_inputs_and_one_for_targets(gemma):
    config = _run_config(gemma, sae__arch="topk_skip", sae__d_sae=64, sae__k=4, train__batch_size=32,
                         train__eval_rows=64, data__source="model")
    rows = ModelSource(gemma, lambda: iter(TEXTS[10:]), lambda: iter(TEXTS[:10]), seed=0, layer=LAYER, site="mlp_in",
                       target_site="mlp_out", context_length=CONTEXT, buffer_contexts=32, forward_batch=4,
                       heldout_max_rows=64)
    source = as_pairs(rows, config.data, config.model)
    sae, loss, optimizer = from_config.model_from_config(config, source.d_in, source.d_out)
    assert sae.transcoder and sae.arch == "topk_skip"
    _, targets = sample = source.sample(256)
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


# ---------------------------------------------------------------------------------------------
# Splice: the MLP's output replaced by the transcoder's reconstruction from the MLP's input.


def test_a_transcoder_that_is_the_mlp_splices_in_exactly(tmp_path):
    """A BERT whose MLP is ReLU(x W1 + b1) W2 + b2 is a ReLU transcoder with W_enc = W1, b_enc = b1,
    W_dec = W2, b_dec = b2: spliced at mlp_out from mlp_in it changes nothing, zero-ablated it does."""
    folder = tiny_bert(tmp_path / "bert")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    model = load_text_model(str(folder))
    p = model.params["layers"][LAYER]
    sae = saejax.make_sae("relu", model.d_model, p["mlp_in"]["w"].shape[1], d_out=model.d_model)
    params = {"W_enc": p["mlp_in"]["w"], "b_enc": p["mlp_in"]["b"], "W_dec": p["mlp_out"]["w"],
              "b_dec": p["mlp_out"]["b"]}
    report = splice.evaluate(model, sae, params, TEXTS[:12], layer=LAYER, site="mlp_in", target_site="mlp_out",
                             context_length=CONTEXT)
    assert report["fvu"] < 1e-9 and report["cos_sim"] == pytest.approx(1.0, abs=1e-6)
    assert report["ablation_cos_sim"] < 0.999 and report["tokens"] > 0 and report["l0"] > 0
    with pytest.raises(ConfigError, match="spliced with its target site"):
        splice.evaluate(model, sae, params, TEXTS[:2], layer=LAYER, site="mlp_in", context_length=CONTEXT)
    with pytest.raises(ConfigError, match="must come after model.site"):
        splice.evaluate(model, sae, params, TEXTS[:2], layer=LAYER, site="mlp_out", target_site="mlp_in")


def test_splice_reports_the_ce_recovered_of_a_transcoder_in_place_of_the_mlp(gemma):
    sae = saejax.make_sae("topk_skip", gemma.d_model, 48, k=4, d_out=gemma.d_model)
    params = _random_params(sae, seed=4)
    texts = TEXTS[:6]
    report = splice.evaluate(gemma, sae, params, texts, layer=LAYER, site="mlp_in", target_site="mlp_out",
                             context_length=CONTEXT, batch_size=len(texts))

    ids, mask, keep = padded_batch(gemma, texts, CONTEXT)

    def replacing(fn):
        read = {}

        def hook(layer, site, x):
            if (layer, site) == (LAYER, "mlp_in"):
                read["x"] = x
            if (layer, site) != (LAYER, "mlp_out"):
                return x
            return jnp.where(keep[..., None], fn(read["x"], x), x)
        return hook

    def transcoded(x, _):
        return sae.forward(params, x.reshape(-1, x.shape[-1]), train=False).x_hat.reshape(x.shape)

    ce = {name: float(gemma_lib.cross_entropy(gemma.forward(ids, mask, hook=hook)[0], ids, mask))
          for name, hook in (("clean", None), ("spliced", replacing(transcoded)),
                             ("ablated", replacing(lambda _, y: jnp.zeros_like(y))))}
    for name in ce:
        assert report[f"ce_{name}"] == pytest.approx(ce[name], rel=1e-5)
    recovered = (ce["ablated"] - ce["spliced"]) / (ce["ablated"] - ce["clean"])
    assert report["ce_loss_recovered"] == pytest.approx(recovered, rel=1e-4, abs=1e-6)
    assert ce["spliced"] != ce["clean"] and report["kl"] > 0

    silent = {**params, **{key: jnp.zeros_like(params[key]) for key in ("W_dec", "b_dec", "W_skip")}}
    zero = splice.evaluate(gemma, sae, silent, texts, layer=LAYER, site="mlp_in", target_site="mlp_out",
                           context_length=CONTEXT, batch_size=len(texts))
    assert zero["ce_spliced"] == pytest.approx(zero["ce_ablated"], rel=1e-6) and abs(zero["ce_loss_recovered"]) < 1e-5


# ---------------------------------------------------------------------------------------------
# Export in SAELens' transcoder layout.

EXPORTED = {"relu": "Transcoder", "jumprelu": "JumpReLUTranscoder", "batchtopk": "JumpReLUTranscoder",
            "relu_skip": "SkipTranscoder", "jumprelu_skip": "JumpReLUSkipTranscoder",
            "batchtopk_skip": "JumpReLUSkipTranscoder"}
INPUT_SCALE, TARGET_SCALE = 2.5, 0.25


@pytest.mark.saelens
@pytest.mark.parametrize("arch", EXPORTED)
def test_saelens_loads_the_transcoder_export_and_computes_what_we_compute(tmp_path, arch):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    sae = saejax.make_sae(arch, D_IN, D_SAE, k=K, d_out=D_OUT)
    params = {key: np.asarray(value) for key, value in _random_params(sae, seed=5).items()}
    if "threshold" in params:
        params["threshold"] = np.abs(params["threshold"]) + 0.05 if params["threshold"].ndim else np.float32(0.1)
    export.export_transcoder(tmp_path, params, arch=arch, d_in=D_IN, d_out=D_OUT, d_sae=D_SAE, k=K,
                             input_scale=INPUT_SCALE, target_scale=TARGET_SCALE)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert type(theirs).__name__ == EXPORTED[arch] and theirs.cfg.d_out == D_OUT
    raw = np.random.default_rng(6).normal(size=(64, D_IN)).astype(np.float32)
    with torch.no_grad():
        z_theirs = theirs.encode(torch.from_numpy(raw)).numpy()
        y_theirs = theirs(torch.from_numpy(raw)).numpy()
    z_ours = np.asarray(sae.encode(params, raw * INPUT_SCALE))  # trained on scaled inputs and targets
    y_ours = np.asarray(sae.forward(params, raw * INPUT_SCALE, train=False).x_hat) / TARGET_SCALE
    assert (z_ours != 0).any() and (z_ours == 0).any()
    np.testing.assert_allclose(z_theirs, z_ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_theirs, y_ours, rtol=1e-5, atol=1e-4)
    tensors, _ = export.load_saelens_transcoder(tmp_path)
    np.testing.assert_allclose(export.forward_saelens_transcoder(tensors, {}, raw), y_ours, rtol=1e-5, atol=1e-4)


def test_a_topk_transcoder_has_no_saelens_layout(tmp_path):
    sae = saejax.make_sae("topk", D_IN, D_SAE, k=K, d_out=D_OUT)
    with pytest.raises(SaejaxError, match="a topk transcoder has no SAELens equivalent"):
        export.export_transcoder(tmp_path, sae.init(jax.random.key(0)), arch="topk", d_in=D_IN, d_out=D_OUT,
                                 d_sae=D_SAE)


# ---------------------------------------------------------------------------------------------
# End to end: experiments/train.py trains a skip transcoder from the MLP's input to its output.


def _train(workdir, model_dir, corpus, *flags):
    common = [f"--config.model.name={model_dir}", f"--config.model.layer={LAYER}", "--config.model.site=mlp_in",
              "--config.model.target_site=mlp_out", f"--config.model.text_glob={corpus}",
              f"--config.model.context_length={CONTEXT}", "--config.model.eval_texts=4",
              "--config.model.dashboard_latents=0", "--config.model.max_tokens=2000",
              "--config.data.buffer_contexts=64",
              "--config.data.forward_batch=4", "--config.sae.d_sae=64", "--config.sae.k=4",
              "--config.train.batch_size=32", "--config.train.steps=40", "--config.train.checkpoint_every=20",
              "--config.train.log_every=10", "--config.train.eval_rows=200", "--config.log.tensorboard=False",
              "--config.log.progress=False"]
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}", *common,
                           *flags], capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_train_skip_transcoders_from_the_command_line_on_the_stream_and_on_a_store(tmp_path):
    model_dir = tiny_gemma(tmp_path / "gemma")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    streamed = _train(tmp_path / "stream", model_dir, corpus, "--config.data.source=model",
                      "--config.sae.arch=topk_skip")
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    summary = json.loads((tmp_path / "stream" / "summary.json").read_text())
    assert summary["arch"] == "topk_skip" and summary["eval_split"] == "held-out"
    assert 0 < summary["eval"]["fvu"] < 1 and "splice/ce_loss_recovered" in summary["eval"]
    assert summary["export"] == "skipped: SAELens has no topk_skip transcoder"
    params, config = saejax.load(tmp_path / "stream")
    assert config.model.target_site == "mlp_out" and params["W_skip"].shape == (32, 32)

    stored = _train(tmp_path / "store", model_dir, corpus, "--config.data.source=npy", "--config.data.chunk_rows=64",
                    "--config.sae.arch=batchtopk_skip")
    assert stored.returncode == 0, stored.stderr[-3000:]
    summary = json.loads((tmp_path / "store" / "summary.json").read_text())
    assert (tmp_path / "store" / "activations" / "manifest.json").exists() and summary["eval_split"] == "held-out"
    assert 0 < summary["eval"]["fvu"] < 1 and "splice/ce_loss_recovered" in summary["eval"]
    assert summary["export"] == str(tmp_path / "store" / "export")
    rows = np.random.default_rng(7).normal(size=(16, 32)).astype(np.float32)
    from_workdir, from_export = (saejax.load(tmp_path / "store" / name) for name in ("", "export"))
    np.testing.assert_allclose(analysis.reconstruct(*from_export, rows), analysis.reconstruct(*from_workdir, rows),
                               rtol=1e-4, atol=1e-4)
