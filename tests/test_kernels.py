"""`saejax.kernels`: the CPU fast paths are taken on CPU only; every other backend gets the references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax import kernels
from saejax.kernels import layout, native, selection
from saejax.sae import make_sae


def _primitives(fn, *args) -> list[str]:
    return [str(eqn.primitive) for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


@pytest.fixture
def off_cpu(monkeypatch):
    """The fast paths' view of a GPU or TPU: the backend check says "not CPU"."""
    monkeypatch.setattr(kernels, "on_cpu", lambda: False)
    monkeypatch.setattr(selection, "on_cpu", lambda: False)


X = jax.random.normal(jax.random.key(0), (64, 2048))


def test_the_cpu_fast_paths_are_taken_on_cpu(monkeypatch):
    assert kernels.on_cpu() == (jax.default_backend() == "cpu")
    if not kernels.on_cpu():
        pytest.skip("the fast paths are CPU-only")
    if native.usable():  # the native kernel where it is built, with no XLA TopK beside it
        prims = _primitives(lambda x: selection.top_k(x, 4), X)
        assert "ffi_call" in prims and "top_k" not in prims
    monkeypatch.setattr(native, "usable", lambda: False)
    assert _primitives(lambda x: selection.top_k(x, 4), X).count("top_k") == 2  # blockwise: maxima, then candidates
    assert make_sae("topk", 16, 512, k=4, sparse="auto").hparams["sparse"]


def test_off_cpu_selection_is_one_lax_top_k(off_cpu):
    prims = _primitives(lambda x: selection.top_k(x, 4), X)
    assert prims.count("top_k") == 1 and "reshape" not in prims
    values, indices = selection.top_k(X, 4)
    want_values, want_indices = jax.lax.top_k(X, 4)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)
    assert _primitives(lambda x: selection.largest(x, 4), X) == ["top_k"]
    np.testing.assert_array_equal(selection.top_k_mask(X, 512).sum(-1), 512)  # through lax.top_k, not radix


def test_off_cpu_selection_is_not_chunked(off_cpu, monkeypatch):
    monkeypatch.setattr(selection, "CHUNK_BYTES", 4 * 2048 * 8)  # 8 rows a chunk on CPU
    prims = _primitives(lambda x: selection.chunked_top_k(lambda rows: rows, x, 4, 2048), X)
    assert "scan" not in prims and prims.count("top_k") == 1


def test_off_cpu_sparse_auto_means_the_dense_step(off_cpu):
    assert not make_sae("topk", 16, 512, k=4, sparse="auto").hparams["sparse"]
    assert make_sae("topk", 16, 512, k=4, sparse=True).hparams["sparse"]  # asked for: still there


def test_off_cpu_transpose_is_plain(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _primitives(layout.transpose, jnp.ones((32, 64))) == ["transpose"]
