"""The sparse TopK path: the same loss and gradients as the dense path, AuxK included, a
compiled step with no dense decoder matmul, and the automatic choice between the two."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import saejax
from saejax import losses
from saejax.kernels import selection
from saejax import sae as sae_lib
from saejax.config import base_config
from saejax.errors import ConfigError

D_IN, D_SAE, K, B = 24, 256, 4, 64


def _pair(**kw):
    return (sae_lib.make_sae("topk", D_IN, D_SAE, k=K, sparse=False, **kw),
            sae_lib.make_sae("topk", D_IN, D_SAE, k=K, sparse=True, **kw))


def _params(sae, seed=0):
    params = sae.init(jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 1), 2)
    params["b_dec"] = 0.1 * jax.random.normal(keys[0], (D_IN,))
    params["b_enc"] = 0.1 * jax.random.normal(keys[1], (D_SAE,))
    return params


def _x(seed=2):
    return jax.random.normal(jax.random.key(seed), (B, D_IN))


def _loss_and_grads(sae, params, x, dead_latents):
    """mse + L1 (so z's gradient is exercised too) + AuxK with `dead_latents` marked dead."""
    loss = losses.chain(losses.mse(), losses.l1(0.3), losses.auxk(0.5, 8, 10, sae.pre_acts_of))
    state = loss.init(sae)
    counters = jnp.zeros(sae.d_sae, jnp.int32).at[:dead_latents].set(100)  # the train step's dead counter

    def total(params):
        out = sae.forward(params, x)
        out = out._replace(aux={**out.aux, "steps_since_fired": counters})
        terms, _ = loss.apply(params, x, out, state, jnp.asarray(0))
        return losses.total(terms), terms

    return jax.jit(jax.value_and_grad(total, has_aux=True))(params)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dead_latents", [0, 200])
@pytest.mark.parametrize("chunk_rows", [None, 24])
@pytest.mark.parametrize("block", [None, 8])
def test_sparse_path_has_the_dense_loss_and_gradients(monkeypatch, tied, dead_latents, chunk_rows, block):
    """chunk_rows 24: the selection runs over 3 chunks of 22 rows (the last padded), as a wide
    dictionary's does (`selection.chunked_top_k`). block 8: `selection.top_k` takes its blockwise
    path (k·BLOCK = 32 = D_SAE / 8), where the encoder bias enters as an offset, as at d_sae ≥ 256·k."""
    if chunk_rows:
        monkeypatch.setattr(selection, "CHUNK_BYTES", chunk_rows * 4 * D_SAE)
    if block:
        monkeypatch.setattr(selection, "BLOCK", block)
        assert K * block <= selection.MAX_CANDIDATE_SHARE * D_SAE
    dense, sparse = _pair(tied=tied)
    params, x = _params(dense), _x()
    (loss_d, terms_d), grads_d = _loss_and_grads(dense, params, x, dead_latents)
    (loss_s, terms_s), grads_s = _loss_and_grads(sparse, params, x, dead_latents)
    assert (terms_d["auxk"] > 0) == (dead_latents > 0)
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-6)
    for name in grads_d:
        scale = float(jnp.abs(grads_d[name]).max())
        assert scale > 0, name
        np.testing.assert_allclose(grads_s[name], grads_d[name], rtol=0, atol=2e-6 * scale, err_msg=name)
    out_d, out_s = dense.forward(params, x), sparse.forward(params, x)
    np.testing.assert_allclose(out_s.x_hat, out_d.x_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_s.z, out_d.z)
    assert out_s.aux["indices"].shape == (B, K)


@pytest.mark.slow
def test_sparse_training_follows_the_dense_trajectory():
    dense, sparse = _pair()
    x = np.asarray(_x())
    finals = []
    for sae in (dense, sparse):
        loss = losses.chain(losses.mse(), losses.auxk(1 / 32, 8, 3, sae.pre_acts_of))
        optimizer = saejax.make_optimizer(optax.adam(1e-3), sae)
        state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), x)
        step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer, dead_steps=3))
        for i in range(8):
            state, logged = step(state, jnp.asarray(np.roll(x, i, axis=0)))
        finals.append((state, logged))
    (s_d, m_d), (s_s, m_s) = finals
    p_d, p_s = s_d.params, s_s.params
    np.testing.assert_array_equal(s_s.steps_since_fired, s_d.steps_since_fired)  # read off the sparse values (AuxK's too)
    assert float(m_s["l0"]) == float(m_d["l0"]) and float(m_s["dead_fraction"]) == float(m_d["dead_fraction"])
    assert float(m_d["loss/auxk"]) > 0  # some latents died after 3 steps, so AuxK was active
    for name in p_d:
        np.testing.assert_allclose(p_s[name], p_d[name], rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(m_s["loss"], m_d["loss"], rtol=1e-5)


def _dot_shapes(step, state, x):
    """The operand shapes of every dot in the compiled step's HLO."""
    hlo = step.lower(state, x).compile().as_text()
    return re.findall(r"= f32\[([\d,]*)\]\{[^}]*\} dot\(", hlo)


@pytest.mark.slow
def test_the_compiled_sparse_step_has_no_dense_decoder_or_encoder_backward_matmul():
    """Dense step: encoder forward, decoder forward, dW_dec, dz and dW_enc are [B, F]-sized dots.
    Sparse: only the encoder forward is; everything else touches k latents per row. (Without AuxK:
    its branch for more than d_sae/4 dead latents runs a dense AuxK over the whole dictionary.)"""
    d_sae, k, b = 2048, 8, 128
    shapes = {}
    for sparse in (False, True):
        sae = sae_lib.make_sae("topk", D_IN, d_sae, k=k, sparse=sparse)
        loss = losses.chain(losses.mse(), losses.l1(0.1))
        optimizer = saejax.make_optimizer(optax.adam(1e-3), sae)
        x = np.asarray(jax.random.normal(jax.random.key(0), (b, D_IN)))
        state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), x)
        step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer))
        shapes[sparse] = _dot_shapes(step, state, jnp.asarray(x))
    big = {f"{b},{d_sae}", f"{D_IN},{d_sae}", f"{d_sae},{D_IN}"}  # dots with a [B, F] or [d, F] output
    dense, sparse = (sum(s in big for s in shapes[v]) for v in (False, True))
    assert dense >= 4 and sparse == 1, shapes


def test_auto_choice_and_bad_settings():
    assert sae_lib.make_sae("topk", 512, 8192, k=32).hparams["sparse"] is True
    assert sae_lib.make_sae("topk", 512, 1024, k=32).hparams["sparse"] is False
    assert sae_lib.make_sae("topk", 384, 2048, k=32).hparams["sparse"] is True  # from 64·k
    assert sae_lib.make_sae("topk", 384, 2047, k=32).hparams["sparse"] is False
    assert sae_lib.make_sae("relu", 512, 8192).hparams["sparse"] is False
    assert sae_lib.make_sae("topk", 512, 1024, k=32, sparse=True).pre_acts_of is not None
    assert sae_lib.make_sae("mlp", 16, 64).pre_acts_of is None
    with pytest.raises(ConfigError, match="sae.sparse=True is for sae.arch='topk'"):
        sae_lib.make_sae("relu", 16, 64, sparse=True)
    config = base_config()
    config.sae.arch, config.sae.d_sae, config.sae.sparse = "topk", 64, "maybe"
    with pytest.raises(ConfigError, match="sae.sparse='maybe'"):
        sae_lib.sae_from_config(config.sae, 16)
    config.sae.sparse = "true"
    assert sae_lib.sae_from_config(config.sae, 16).hparams["sparse"] is True


def test_auxk_needs_no_pre_activation_gradient_from_the_sparse_forward():
    """AuxK encodes the dead latents itself, so its default (linear) encoder gives a sparse SAE the
    same term as the SAE's own pre_acts_of."""
    _, sparse = _pair()
    params, x = _params(sparse), _x()
    out = sparse.forward(params, x)
    out = out._replace(aux={**out.aux, "steps_since_fired": jnp.zeros(D_SAE, jnp.int32).at[:100].set(10)})
    values = [losses.auxk(0.5, 8, 10, *encoder).apply(params, x, out, (), 0)[0]["auxk"]
              for encoder in ((), (sparse.pre_acts_of,))]
    assert float(values[0]) > 0 and float(values[0]) == float(values[1])
