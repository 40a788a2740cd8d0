"""The bf16 pre-screen of the sparse TopK encoder (`saejax.kernels.screening`): certified rows select what
float32 selects, uncertified chunks fall back to float32 exactly, the sparse step keeps the
dense loss and gradients, and the automatic choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax.kernels import screening, selection
from saejax import sae as sae_lib
from saejax.config import base_config
from saejax.errors import ConfigError

B, D, F, K = 96, 24, 2048, 4


def _problem(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (B, D))
    w = jax.random.normal(keys[1], (D, F)) / np.sqrt(D)
    offset = 0.1 * jax.random.normal(keys[2], (F,))
    return x, w, offset.at[:100].set(-1e3)  # some latents kept silent, as AuxK's benchmark does


def _float32_top_k(x, w, offset):
    return jax.lax.top_k(jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST) + offset, K)


def _norms(w):
    return jnp.sqrt(jnp.sum(w * w, axis=0))


def test_certified_rows_select_the_float32_latents():
    x, w, offset = _problem()
    assert _screen_list_is_blockwise()
    values, indices, certified = jax.jit(screening.screen_rows, static_argnums=5)(
        x, screening.screen_weight(w, _norms(w)), w.T, offset, jnp.max(_norms(w)), K)
    assert bool(certified.all())  # random data: every row certified
    ref_values, ref_indices = _float32_top_k(x, w, offset)
    np.testing.assert_array_equal(np.sort(indices, -1), np.sort(ref_indices, -1))
    np.testing.assert_allclose(values, ref_values, rtol=1e-6, atol=1e-6)
    assert indices.dtype == jnp.int32


@pytest.mark.parametrize("case", ["spread column norms", "outlier dimensions", "near ties"])
def test_certified_rows_hold_against_float64(case):
    """Whatever the data, a certified row's latents are the exact (float64) top k. Column norms spread
    over 30x, a few input dimensions 100x the others (as in LLM residual streams), or latents whose
    pre-activations differ by less than bf16 can resolve: rows may go uncertified, never wrong."""
    x, w, offset = _problem(3)
    keys = jax.random.split(jax.random.key(4), 2)
    if case == "spread column norms":
        w = w * jnp.exp(jax.random.uniform(keys[0], (F,), minval=0.0, maxval=np.log(30.0)))
    elif case == "outlier dimensions":
        x = x.at[:, :3].multiply(100.0)
    else:  # 400 latents lead every row, their columns tiny perturbations of one another
        w = w.at[:, 1000:1400].set(w[:, 1000:1001] + 1e-4 * jax.random.normal(keys[1], (D, 400)))
        offset = offset.at[1000:1400].set(10.0)
    norms = _norms(w)
    values, indices, certified = screening.screen_rows(x, screening.screen_weight(w, norms), w.T, offset,
                                                       jnp.max(norms), K)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(offset, np.float64)
    exact_sets = np.sort(np.argsort(-exact, axis=1, kind="stable")[:, :K], axis=1)
    certified = np.asarray(certified)
    assert (certified.sum() > B // 2) if case != "near ties" else (certified.sum() < B // 2), (case, certified.sum())
    np.testing.assert_array_equal(np.sort(indices, -1)[certified], exact_sets[certified], err_msg=case)


def _screen_list_is_blockwise():
    """The screen's list of 2k takes `selection.top_k`'s blockwise path at this width, as at d_sae 32768."""
    return screening.SCREEN_FACTOR * K * selection.BLOCK <= selection.MAX_CANDIDATE_SHARE * F


@pytest.mark.parametrize("repair_rows", [screening.REPAIR_ROWS, 0])
@pytest.mark.parametrize("chunk_rows", [None, 40])
@pytest.mark.parametrize("tied", [False, True])
def test_screened_top_k_matches_float32_and_falls_back_on_ties(monkeypatch, chunk_rows, tied, repair_rows):
    """chunk_rows 40: 3 chunks of 32 rows. 2k latents copy row 5's k-th latent (column and offset), so
    its k-th value is tied 2k + 1 times and no bound can separate the screen's bar from it. Such rows
    are re-selected in float32 on their own (the same list as float32's, ties to the lower latent);
    with repair_rows 0 their whole chunk is, bit for bit as the unscreened `selection.chunked_top_k`.
    Certified rows agree up to rounding."""
    if chunk_rows:
        monkeypatch.setattr(selection, "CHUNK_BYTES", chunk_rows * 4 * F)
    monkeypatch.setattr(screening, "REPAIR_ROWS", repair_rows)
    x, w, offset = _problem(1)
    top = np.asarray(_float32_top_k(x, w, offset)[1][5])
    copies = np.setdiff1d(np.arange(100, 100 + 3 * K * screening.SCREEN_FACTOR), top)[:K * screening.SCREEN_FACTOR]
    w = w.at[:, copies].set(w[:, top[K - 1]][:, None])
    offset = offset.at[copies].set(offset[top[K - 1]])
    run = jax.jit(lambda x, w, offset: screening.screened_top_k(x, w, w.T if tied else None, offset, K))
    values, indices = run(x, w, offset)
    plain_values, plain_indices = jax.jit(lambda x, w, offset: selection.chunked_top_k(
        lambda rows: jnp.matmul(rows, w, preferred_element_type=jnp.float32), x, K, F, offset))(x, w, offset)
    certified = np.asarray(screening.screen_rows(x, screening.screen_weight(w, _norms(w)), w.T, offset, jnp.max(_norms(w)), K)[2])
    assert not certified[5] and certified.sum() >= B - 8, certified.sum()
    np.testing.assert_array_equal(indices[~certified], plain_indices[~certified])
    if not repair_rows:
        rows = chunk_rows and 32 or B
        fallback = np.repeat(~certified.reshape(-1, rows).all(-1), rows)
        assert fallback[5] and (not chunk_rows or not fallback.all())
        np.testing.assert_array_equal(values[fallback], plain_values[fallback])
        np.testing.assert_array_equal(indices[fallback], plain_indices[fallback])
    np.testing.assert_array_equal(np.sort(indices, -1), np.sort(plain_indices, -1))
    np.testing.assert_allclose(values, plain_values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_screened_sparse_path_has_the_dense_loss_and_gradients(tied):
    """The sparse path's own test setup (tests/test_sparse_topk.py), screened: rows certified there."""
    import test_sparse_topk as sparse_tests  # tests/ is on sys.path (rootless test modules)

    dense = sae_lib.make_sae("topk", sparse_tests.D_IN, sparse_tests.D_SAE, k=sparse_tests.K, sparse=False, tied=tied)
    screened = sae_lib.make_sae("topk", sparse_tests.D_IN, sparse_tests.D_SAE, k=sparse_tests.K, sparse=True,
                                screen=True, tied=tied)
    assert screened.hparams["screen"] and not dense.hparams["screen"]
    params, x = sparse_tests._params(dense), sparse_tests._x()
    for dead_latents in (0, 200):
        (loss_d, _), grads_d = sparse_tests._loss_and_grads(dense, params, x, dead_latents)
        (loss_s, _), grads_s = sparse_tests._loss_and_grads(screened, params, x, dead_latents)
        np.testing.assert_allclose(loss_s, loss_d, rtol=1e-6)
        for name in grads_d:
            scale = float(jnp.abs(grads_d[name]).max())
            np.testing.assert_allclose(grads_s[name], grads_d[name], rtol=0, atol=2e-6 * scale, err_msg=name)
    out_d, out_s = dense.forward(params, x), screened.forward(params, x)
    np.testing.assert_allclose(out_s.x_hat, out_d.x_hat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_s.z, out_d.z, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out_s.z != 0, out_d.z != 0)


def test_bf16_dots_are_read_off_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(screening, "_CPU_FLAGS", str(cpuinfo))
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    for text, fast in [("flags\t\t: fpu avx512f avx512_bf16 sse\n", True), ("flags\t: fpu avx2\n", False),
                       ("flags\t: amx_bf16 amx_tile\n", True), ("", False)]:
        cpuinfo.write_text("processor\t: 0\n" + text)
        screening.bf16_dots_are_fast.cache_clear()
        assert screening.bf16_dots_are_fast() is fast, text
    cpuinfo.unlink()
    screening.bf16_dots_are_fast.cache_clear()
    assert screening.bf16_dots_are_fast() is False  # unreadable: no screen
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    screening.bf16_dots_are_fast.cache_clear()
    assert screening.bf16_dots_are_fast() is False
    screening.bf16_dots_are_fast.cache_clear()


def test_auto_choice_and_bad_settings(monkeypatch):
    monkeypatch.setattr(screening, "bf16_dots_are_fast", lambda: True)
    wide = dict(k=32, sparse=True)
    assert sae_lib.make_sae("topk", 16, screening.MIN_WIDTH_PER_K * 32, **wide).hparams["screen"] == "auto"
    assert screening.screens("auto", screening.MIN_ROWS) and not screening.screens("auto", screening.MIN_ROWS - 1)
    assert screening.screens(True, 1) and not screening.screens(False, 10**6)
    assert not sae_lib.make_sae("topk", 16, screening.MIN_WIDTH_PER_K * 32 - 32, **wide).hparams["screen"]  # too narrow to pay
    assert not sae_lib.make_sae("topk", 16, screening.MIN_WIDTH_PER_K * 32, dtype="bfloat16", **wide).hparams["screen"]
    assert not sae_lib.make_sae("topk", 16, screening.MIN_WIDTH_PER_K * 32, k=32, sparse=False).hparams["screen"]
    assert not sae_lib.make_sae("relu", 16, screening.MIN_WIDTH_PER_K * 32).hparams["screen"]
    monkeypatch.setattr(screening, "bf16_dots_are_fast", lambda: False)
    assert not sae_lib.make_sae("topk", 16, screening.MIN_WIDTH_PER_K * 32, **wide).hparams["screen"]
    assert sae_lib.make_sae("topk", 16, 64, k=4, sparse=True, screen=True).hparams["screen"] is True  # forced
    with pytest.raises(ConfigError, match="sae.screen=True needs the sparse float32 TopK path"):
        sae_lib.make_sae("topk", 16, 64, k=4, sparse=False, screen=True)
    with pytest.raises(ConfigError, match="sae.screen=True needs"):
        sae_lib.make_sae("topk", 16, 64, k=4, sparse=True, dtype="bfloat16", screen=True)
    config = base_config()
    config.sae.arch, config.sae.d_sae, config.sae.sparse, config.sae.screen = "topk", 64, "true", "maybe"
    with pytest.raises(ConfigError, match="sae.screen='maybe'"):
        sae_lib.sae_from_config(config.sae, 16)
    config.sae.screen = "true"
    assert sae_lib.sae_from_config(config.sae, 16).hparams["screen"]
