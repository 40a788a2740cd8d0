"""Architectures: param layout, forward shapes, defining properties, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax import sae as sae_lib
from saejax.sae import linear, topk
from saejax.errors import ConfigError, DataError

D_IN, D_SAE, K = 16, 48, 4

EXPECTED_KEYS = {
    "relu": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "batchtopk": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "gated": {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"},
    "matryoshka": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "mlp": {"encoder", "decoder", "b_dec"},
}


def _x(n=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, D_IN)) + 0.5


def _make(arch, **kw):
    kw.setdefault("k", K)
    kw.setdefault("mlp_hidden", (8,))
    return sae_lib.make_sae(arch, D_IN, D_SAE, **kw)


def _perturbed(params, seed=1):
    """Params with non-zero biases, so tests see every term."""
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    out = dict(params)
    for name in ("b_enc", "b_dec", "b_gate", "b_mag", "r_mag"):
        if name in out:
            out[name] = 0.1 * jax.random.normal(next(keys), out[name].shape)
    return out


@pytest.mark.parametrize("arch", sae_lib.ARCHITECTURES)
def test_param_layout_and_shapes(arch):
    sae = _make(arch)
    params = sae.init(jax.random.key(0))
    assert set(params) == EXPECTED_KEYS[arch]
    if arch != "mlp":
        assert params["W_dec"].shape == (D_SAE, D_IN)
        assert params["W_enc"].shape == (D_IN, D_SAE)
        assert params["b_dec"].shape == (D_IN,)
    out = sae.forward(params, _x())
    assert out.x_hat.shape == (32, D_IN) and out.z.shape == (32, D_SAE) and out.pre_acts.shape == (32, D_SAE)
    assert sae.encode(params, _x()).shape == (32, D_SAE)
    assert sae.decode(params, out.z).shape == (32, D_IN)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated", "mlp"])
def test_forward_is_decode_of_encode(arch):
    sae = _make(arch)
    params = _perturbed(sae.init(jax.random.key(0)))
    x = _x()
    out = sae.forward(params, x, train=False)
    np.testing.assert_allclose(out.z, sae.encode(params, x), atol=1e-6)
    np.testing.assert_allclose(out.x_hat, sae.decode(params, out.z), atol=1e-5)


def test_init_encoder_is_scaled_decoder_transpose_and_rows_unit():
    sae = _make("relu", dec_init_norm=0.1)
    params = sae.init(jax.random.key(0))
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(params["W_enc"], 0.1 * params["W_dec"].T, rtol=1e-5)
    unconstrained = _make("relu", dec_init_norm=0.1, unit_norm_decoder=False).init(jax.random.key(0))
    np.testing.assert_allclose(np.linalg.norm(unconstrained["W_dec"], axis=1), 0.1, rtol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated", "mlp"])
def test_b_dec_is_subtracted_before_encoding(arch):
    sae = _make(arch)
    params = _perturbed(sae.init(jax.random.key(0)))
    shift = jax.random.normal(jax.random.key(5), (D_IN,))
    x = _x()
    shifted = {**params, "b_dec": params["b_dec"] + shift}
    np.testing.assert_allclose(sae.encode(shifted, x + shift), sae.encode(params, x), atol=1e-5)
    out, out_shifted = sae.forward(params, x), sae.forward(shifted, x + shift)
    np.testing.assert_allclose(out_shifted.x_hat, out.x_hat + shift, atol=1e-5)


def test_relu_forward_matches_formula_and_leak():
    params = _perturbed(_make("relu").init(jax.random.key(0)))
    x = _x()
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    np.testing.assert_allclose(_make("relu").encode(params, x), np.maximum(pre, 0), atol=1e-5)
    leaky = _make("relu", leak=0.01).encode(params, x)
    np.testing.assert_allclose(leaky, np.where(pre > 0, pre, 0.01 * pre), atol=1e-5)


def test_topk_keeps_exactly_k():
    sae = _make("topk")
    params = _perturbed(sae.init(jax.random.key(0)))
    out = sae.forward(params, _x())
    assert (np.count_nonzero(out.z, axis=1) <= K).all()
    top = np.sort(np.asarray(out.pre_acts), axis=1)[:, -K:]
    np.testing.assert_allclose(np.sort(out.z, axis=1)[:, -K:], np.maximum(top, 0), atol=1e-6)


def test_tied_sae_uses_decoder_transpose():
    tied = _make("relu", tied=True)
    params = _perturbed(tied.init(jax.random.key(0)))
    assert "W_enc" not in params
    untied = {**params, "W_enc": params["W_dec"].T}
    np.testing.assert_allclose(tied.encode(params, _x()), _make("relu").encode(untied, _x()), atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(tied.forward(p, _x()).x_hat ** 2))(params)
    assert set(grads) == set(params)


def test_gated_fires_only_where_gate_open_with_relu_magnitude():
    sae = _make("gated")
    params = _perturbed(sae.init(jax.random.key(0)))
    out = sae.forward(params, _x())
    gate = np.asarray(out.aux["gate_pre"])
    np.testing.assert_allclose(out.z, np.where(gate > 0, np.maximum(out.pre_acts, 0), 0), atol=1e-6)
    shared = (_x() - params["b_dec"]) @ params["W_enc"]
    np.testing.assert_allclose(out.pre_acts, shared * np.exp(params["r_mag"]) + params["b_mag"], atol=1e-5)


def test_jumprelu_threshold_is_float32_and_gates():
    sae = _make("jumprelu", jumprelu_init_threshold=0.05, dtype="bfloat16")
    params = sae.init(jax.random.key(0))
    assert params["threshold"].dtype == jnp.float32
    out = sae.forward(params, _x())
    assert out.pre_acts.dtype == jnp.float32
    assert (np.asarray(out.z)[np.asarray(out.pre_acts) <= 0.05] == 0).all()


def test_batchtopk_train_vs_inference_threshold():
    sae = _make("batchtopk")
    params = _perturbed(sae.init(jax.random.key(0)))
    x = _x()
    out = sae.forward(params, x, train=True)
    assert np.count_nonzero(out.z) <= K * x.shape[0]
    # the running threshold starts from the first batch's smallest selected activation
    updated = sae.update_buffers(params, out, jnp.asarray(0))
    np.testing.assert_allclose(updated["threshold"], out.aux["min_selected"], rtol=1e-6)
    z = sae.encode(updated, x)
    pre = np.asarray(out.pre_acts)
    np.testing.assert_allclose(z, np.where(pre > updated["threshold"], np.maximum(pre, 0), 0), atol=1e-6)
    later = sae.update_buffers(updated, out._replace(aux={"min_selected": jnp.asarray(1.0)}), jnp.asarray(10**6))
    expected = updated["threshold"] + (1.0 - updated["threshold"]) / topk.THRESHOLD_WINDOW
    np.testing.assert_allclose(later["threshold"], expected, rtol=1e-6)


def test_matryoshka_prefix_reconstructions_use_only_their_prefix():
    sae = _make("matryoshka", matryoshka_prefixes=(8, 24, D_SAE))
    params = _perturbed(sae.init(jax.random.key(0)))
    out = sae.forward(params, _x())
    z = np.asarray(out.z)
    for m, x_hat_m in zip((8, 24, D_SAE), out.aux["prefix_x_hats"]):
        np.testing.assert_allclose(x_hat_m, z[:, :m] @ params["W_dec"][:m] + params["b_dec"], atol=1e-5)
    np.testing.assert_allclose(out.x_hat, out.aux["prefix_x_hats"][-1])


def test_centered_matmul_gradients_match_autodiff():
    x, b = _x(), jax.random.normal(jax.random.key(2), (D_IN,))
    w = jax.random.normal(jax.random.key(3), (D_IN, D_SAE))
    g = jax.random.normal(jax.random.key(4), (32, D_SAE))

    def ours(x, b, w):
        return jnp.sum(linear.centered_matmul(x, b, w, "float32") * g)

    def plain(x, b, w):
        return jnp.sum(((x - b) @ w) * g)

    for got, want in zip(jax.grad(ours, (0, 1, 2))(x, b, w), jax.grad(plain, (0, 1, 2))(x, b, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_matmul_gradients_match_autodiff(dtype):
    z = jax.nn.relu(jax.random.normal(jax.random.key(2), (32, D_SAE)))
    w = jax.random.normal(jax.random.key(3), (D_SAE, D_IN))
    g = jax.random.normal(jax.random.key(4), (32, D_IN))

    def ours(z, w):
        return jnp.sum(linear.decoder_matmul(z, w, dtype) * g)

    def plain(z, w):
        return jnp.sum(linear.matmul(z, w, dtype) * g)

    def exact(z, w):
        return jnp.sum(jnp.matmul(z, w, precision="highest") * g)

    np.testing.assert_allclose(ours(z, w), plain(z, w), rtol=1e-6)
    ours_grads, plain_grads = jax.jit(jax.grad(ours, (0, 1)))(z, w), jax.jit(jax.grad(plain, (0, 1)))(z, w)
    for got, want, best in zip(ours_grads, plain_grads, jax.grad(exact, (0, 1))(z, w)):
        assert got.dtype == want.dtype == jnp.float32
        if dtype == "float32":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:  # bf16 products, float32 sums; autodiff also rounds the gradient itself to bfloat16
            assert float(jnp.abs(got - best).max()) <= float(jnp.abs(want - best).max())
            np.testing.assert_allclose(got, best, rtol=0.02, atol=0.05)


def test_bfloat16_compute_is_close_to_float32():
    params = _perturbed(_make("relu").init(jax.random.key(0)))
    f32 = _make("relu").forward(params, _x())
    bf16 = _make("relu", dtype="bfloat16").forward(params, _x())
    assert bf16.x_hat.dtype == jnp.float32
    np.testing.assert_allclose(bf16.x_hat, f32.x_hat, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch="resnet"), "unknown SAE architecture sae.arch='resnet'"),
        (dict(arch="topk", k=49), r"sae.k=49 must be in \[1, sae.d_sae=48\]"),
        (dict(arch="batchtopk", k=0), r"sae.k=0"),
        (dict(arch="gated", tied=True), "sae.tied=True is not supported"),
        (dict(arch="relu", dtype="float16"), "sae.dtype='float16'"),
        (dict(arch="jumprelu", jumprelu_bandwidth=0.0), "sae.jumprelu_bandwidth=0.0"),
        (dict(arch="jumprelu", jumprelu_init_threshold=-1.0), "sae.jumprelu_init_threshold=-1.0"),
        (dict(arch="matryoshka", matryoshka_prefixes=(24, 8, 48)), "strictly increasing"),
        (dict(arch="matryoshka", matryoshka_prefixes=(8, 24)), "end at d_sae=48"),
    ],
)
def test_bad_options_raise_one_clear_error(kwargs, match):
    arch = kwargs.pop("arch")
    with pytest.raises(ConfigError, match=match):
        sae_lib.make_sae(arch, D_IN, D_SAE, **kwargs)


def test_wrong_input_width_raises():
    sae = _make("relu")
    params = sae.init(jax.random.key(0))
    with pytest.raises(DataError, match=r"shape \(4, 15\).*expected \[batch, 16\]"):
        sae.forward(params, jnp.zeros((4, D_IN - 1)))


def test_sae_from_config_reads_every_field():
    from saejax.config import base_config

    c = base_config().sae
    c.arch, c.d_sae, c.k, c.matryoshka_prefixes = "matryoshka", 64, 4, "16, 64"
    sae = sae_lib.sae_from_config(c, D_IN)
    assert (sae.arch, sae.d_in, sae.d_sae, sae.hparams["prefixes"]) == ("matryoshka", D_IN, 64, (16, 64))
    c.matryoshka_prefixes = "16,sixty-four"
    with pytest.raises(ConfigError, match="sae.matryoshka_prefixes"):
        sae_lib.sae_from_config(c, D_IN)
