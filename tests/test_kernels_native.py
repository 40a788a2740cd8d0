"""The native CPU top-k (saejax.kernels.native): the same indices and values as ``lax.top_k`` on
every kind of row (ties, signed zeros, infinities, NaNs, an offset, batch axes, both of its
algorithms), the same training steps bit for bit, and a clear fallback when it cannot be built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax.kernels import native, selection

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler to build the native kernel")


def awkward_rows(shape, seed=0):
    """float32 rows with runs of ties, signed zeros, infinities and a NaN of each sign."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[:, 1:min(shape[-1], 9)] = 0.0
    flat[0, :3] = -0.0
    if shape[-1] > 12:
        flat[1, 10:13] = [np.inf, -np.inf, np.nan]
        flat[2, 11] = -np.nan
        flat[3, :] = 1.5  # a row of one value: ties everywhere
    return jnp.asarray(x)


@needs_compiler
@pytest.mark.parametrize("shape,k", [((64, 3072), 32), ((33, 1000), 64), ((17, 700), 65), ((9, 300), 256),
                                     ((5, 40), 40), ((4, 13), 1), ((2, 3, 96), 7), ((300, 2048), 2)])
@pytest.mark.parametrize("with_offset", [False, True])
def test_native_indices_are_lax_top_k_indices(shape, k, with_offset):
    assert native.available(), native.load()
    x = awkward_rows(shape)
    offset = jnp.asarray(np.random.default_rng(1).standard_normal(shape[-1]).astype(np.float32)) if with_offset else None
    expected = jax.lax.top_k(x if offset is None else x + offset, k)[1]
    found = jax.jit(lambda x, o: native.top_k_indices(x, k, o))(x, offset)
    np.testing.assert_array_equal(np.asarray(found), np.asarray(expected))


@needs_compiler
def test_top_k_through_the_kernel_keeps_values_and_gradients():
    x = awkward_rows((32, 512))
    x = jnp.where(jnp.isfinite(x), x, 0.0)  # gradients of inf/NaN entries aside
    offset = jnp.linspace(-1, 1, 512, dtype=jnp.float32)
    assert selection._native_pays(x, 16, offset)

    def summed(fn):
        return jax.grad(lambda x, o: jnp.sum(jnp.sin(fn(x, o)[0])), argnums=(0, 1))

    ours = jax.jit(lambda x, o: selection.top_k(x, 16, o))
    reference = jax.jit(lambda x, o: jax.lax.top_k(x + o, 16))
    for a, b in zip(ours(x, offset), reference(x, offset)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (dx, doffset), (dx_ref, doffset_ref) = (jax.jit(summed(fn))(x, offset) for fn in (ours, reference))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_ref))
    np.testing.assert_allclose(np.asarray(doffset), np.asarray(doffset_ref), rtol=1e-6)  # summed in another order


@needs_compiler
def test_kernel_under_vmap_and_inside_a_row_chunked_map():
    x = awkward_rows((3, 40, 256))
    found = jax.jit(jax.vmap(lambda rows: native.top_k_indices(rows, 8)))(x)
    np.testing.assert_array_equal(np.asarray(found), np.asarray(jax.lax.top_k(x, 8)[1]))
    rows = awkward_rows((2000, 64), seed=3)
    values, indices = jax.jit(lambda r: selection.map_row_chunks(lambda p: selection.top_k(p, 5), r, 2**20, 5))(rows)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(jax.lax.top_k(rows, 5)[1]))


@needs_compiler
def test_sparse_topk_training_steps_agree_with_and_without_the_kernels(monkeypatch):
    """The same three steps with the native kernels and with XLA's paths: the selection is exact, the
    sums of the sparse decode and its gradients differ only in float32 rounding."""
    from benchmarks import train_setup

    x = jnp.asarray(np.random.default_rng(0).standard_normal((128, 16), dtype=np.float32))

    def three_steps():
        step, state = train_setup("topk", 16, 256, x, k=4, sparse=True, screen=False)
        losses = []
        for _ in range(3):
            state, out = step(state, x)
            losses.append(float(out["loss"]))
        return state, losses

    calls = {name: 0 for name in ("top_k_indices", "gather_combine", "gather_dot", "scatter_outer")}
    for name in calls:
        kernel = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *args, _name=name, _kernel=kernel: calls.__setitem__(
            _name, calls[_name] + 1) or _kernel(*args))
    with_kernels, losses = three_steps()
    assert all(calls.values()), calls  # the step went through every kernel
    monkeypatch.setattr(native, "usable", lambda: False)
    without, reference_losses = three_steps()
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(with_kernels), jax.tree.leaves(without)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize("batch,k,width,rows", [(256, 4, 32, 64), (256, 16, 32, 64), (1, 1, 1, 1), (7, 3, 5, 13),
                                                (33, 2, 17, 3), (300, 6, 24, 2000), (40, 8, 70, 12)])
def test_row_kernels_match_xla_for_every_shape(batch, k, width, rows):
    """gather_combine, gather_dot and scatter_outer against XLA's gather / scatter-add, including
    tables with fewer rows than the scatter has bands and odd sizes everywhere."""
    rng = np.random.default_rng(batch * 1000 + rows)
    table = jnp.asarray(rng.standard_normal((rows, width)).astype(np.float32))
    a = jnp.asarray(rng.standard_normal((batch, k)).astype(np.float32))
    u = jnp.asarray(rng.standard_normal((batch, width)).astype(np.float32))
    index = jnp.asarray(rng.integers(0, rows, (batch, k)).astype(np.int32))
    gathered = table[index]  # [batch, k, width]
    np.testing.assert_allclose(jax.jit(native.gather_combine)(table, a, index),
                               jnp.einsum("bk,bkd->bd", a, gathered), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(native.gather_dot)(table, u, index),
                               jnp.einsum("bd,bkd->bk", u, gathered), rtol=1e-5, atol=1e-5)
    scattered = jnp.zeros((rows, width)).at[index.reshape(-1)].add((a[:, :, None] * u[:, None, :]).reshape(-1, width))
    np.testing.assert_allclose(jax.jit(native.scatter_outer, static_argnums=3)(a, u, index, rows), scattered,
                               rtol=1e-5, atol=1e-5)


@needs_compiler
def test_sparse_decode_gradients_match_xla_and_do_not_depend_on_threads():
    from saejax.sae import linear

    rng = np.random.default_rng(2)
    w_dec = jnp.asarray(rng.standard_normal((300, 24)).astype(np.float32))
    values = jnp.asarray(rng.random((200, 6)).astype(np.float32))
    indices = jnp.asarray(rng.integers(0, 300, (200, 6)).astype(np.int32))
    target = jnp.asarray(rng.standard_normal((200, 24)).astype(np.float32))

    def loss(decode):
        return jax.jit(jax.grad(lambda w, v: jnp.sum(jnp.square(decode(w, v, indices) - target)), argnums=(0, 1)))

    ours = loss(linear.native_sparse_decode)(w_dec, values)
    reference = loss(lambda w, v, i: jnp.einsum("bk,bkd->bd", v, w[i]))(w_dec, values)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    again = loss(linear.native_sparse_decode)(w_dec, values)
    for a, b in zip(ours, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # deterministic


def test_turned_off_or_without_a_compiler_it_says_why_and_top_k_still_works(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "off")
    assert native.load.__wrapped__() == f"{native.DISABLE_ENV}=off"
    monkeypatch.delenv(native.DISABLE_ENV)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert native.compiler() is None and "no C++ compiler" in native.load.__wrapped__()
    monkeypatch.setattr(native, "available", lambda: False)
    x = awkward_rows((16, 512))
    for a, b in zip(jax.jit(lambda x: selection.top_k(x, 4))(x), jax.lax.top_k(x, 4)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_compiler
def test_a_failing_build_is_reported_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that exits 1
    reason = native.load.__wrapped__()
    assert reason.startswith("RuntimeError") and "failed on native.cc" in reason
    assert list(tmp_path.iterdir()) == []


@needs_compiler
def test_the_library_is_built_into_the_cache_once_keyed_by_its_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    cxx = native.compiler()
    path = native.library_path(cxx)
    assert path.parent == tmp_path and not path.exists()
    native.build(cxx, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.setattr(native, "compile_flags", lambda: ["-O0", "-shared", "-fPIC"])
    assert native.library_path(cxx) != path  # other flags, another library
