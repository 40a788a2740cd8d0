"""The architecture registry: every architecture is one spec; a new one trains with no edit elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import saejax
from saejax import defaults, from_config, losses, optimizers
from saejax import step as step_lib
from saejax.config import base_config
from saejax.errors import ConfigError
from saejax.sae import linear, registry, relu

D_IN, D_SAE = 8, 32


def _encode_relu6(params, x, train, opts):
    """ReLU clipped at 6: x [B, d_in] -> (z, pre_acts [B, d_sae], {})."""
    pre = linear.pre_acts(params, x, opts)
    return jnp.clip(pre, 0.0, 6.0), pre, {}


# A new architecture, declared in this one place: the ReLU SAE's parameters and decoder with a
# clipped activation, L1 sparsity. Everything else (defaults, loss, optimizer, run loop) reads the spec.
RELU6 = registry.Architecture(
    name="relu6", init=relu.init, encode=_encode_relu6, decode=linear.decode, forward=saejax.sae.dense_forward,
    pre_acts_of=linear.linear_pre_acts_of, tieable=True, penalties=("l1",),
)


def _init_transcoder(key, opts):
    """W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out] (unit rows), b_dec [d_out]."""
    k_enc, k_dec = jax.random.split(key)
    return {"W_enc": linear.random_unit_rows(k_enc, opts.d_sae, opts.d_in).T * opts.dec_init_norm,
            "b_enc": jnp.zeros((opts.d_sae,), jnp.float32),
            "W_dec": linear.random_unit_rows(k_dec, opts.d_sae, opts.d_out),
            "b_dec": jnp.zeros((opts.d_out,), jnp.float32)}


def _encode_transcoder(params, x, train, opts):
    """ReLU(x @ W_enc + b_enc): its input is not centred on b_dec, which lives in the output space."""
    pre = linear.matmul(x, params["W_enc"], opts.dtype) + params["b_enc"]
    return jax.nn.relu(pre), pre, {}


# A toy transcoder: reconstructs a target of another width (d_out) from its input.
TRANSCODER = registry.Architecture(
    name="toy_transcoder", init=_init_transcoder, encode=_encode_transcoder, decode=linear.decode,
    forward=saejax.sae.dense_forward, separate_output=True, penalties=("l1",),
)


@pytest.fixture
def registered():
    """Register RELU6 and TRANSCODER for one test."""
    for spec in (RELU6, TRANSCODER):
        registry.register(spec)
    yield
    for spec in (RELU6, TRANSCODER):
        registry.unregister(spec.name)


def _data(n=256, seed=0, width=D_IN):
    directions = np.random.default_rng(123).normal(size=(16, width))
    rng = np.random.default_rng(seed)
    codes = rng.uniform(size=(n, 16)) * (rng.uniform(size=(n, 16)) < 3 / 16)
    return (codes @ directions * 3 + 1).astype(np.float32)


@pytest.mark.parametrize("arch", registry.names())
def test_every_architecture_round_trips_init_forward_encode_decode(arch):
    spec = registry.get(arch)
    sae = saejax.make_sae(arch, D_IN, D_SAE, k=4, mlp_hidden=(8,), d_out=D_IN if spec.needs_target else None)
    params = sae.init(jax.random.key(0))
    x = jnp.asarray(_data(6))
    out = sae.forward(params, x)
    assert out.x_hat.shape == (6, D_IN) and out.z.shape == out.pre_acts.shape == (6, D_SAE)
    assert sae.encode(params, x).shape == (6, D_SAE)
    assert sae.decode(params, out.z).shape == (6, D_IN)
    assert sae.d_out == D_IN
    assert spec.has_linear_decoder == ("W_dec" in params)
    assert set(sae.buffers) <= set(params)
    for key, value in params.items():  # each latent axis has d_sae entries
        axis = sae.latent_axes.get(key)
        assert axis is None or value.shape[axis] == D_SAE
    if sae.pre_acts_of is not None:
        np.testing.assert_allclose(sae.pre_acts_of(params, x, jnp.array([1, 5])), out.pre_acts[:, [1, 5]],
                                   rtol=1e-5, atol=1e-5)


def test_unknown_and_repeated_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown SAE architecture sae.arch='nope'; choose one of relu, topk"):
        registry.get("nope")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(registry.get("relu"))


def test_a_new_architecture_is_one_spec_and_trains_from_a_config(registered):
    config = base_config()
    config.sae.arch, config.sae.d_sae = "relu6", D_SAE
    config.loss.l1 = 0.05
    config.loss.kl = 1.0  # not a penalty of relu6: switched off, with a note
    config.train.batch_size = 128
    config, notes = defaults.resolve(config)
    assert config.loss.kl == 0.0 and any("loss.kl" in note for note in notes)
    assert config.optim.lr == defaults.OTHER_LR and config.train.unit_norm_decoder

    sae, loss, optimizer = from_config.model_from_config(config, D_IN)
    assert sae.arch == "relu6"
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), _data(512, seed=1))
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer, dead_steps=config.loss.dead_steps))
    seen = []
    for i in range(30):
        state, metrics = step(state, _data(128, seed=i % 4))
        seen.append(float(metrics["loss"]))
    assert np.mean(seen[-5:]) < 0.8 * np.mean(seen[:5])
    assert float(jnp.max(sae.encode(state.params, jnp.asarray(_data(64)) * state.norm_scale))) <= 6.0
    np.testing.assert_allclose(np.linalg.norm(state.params["W_dec"], axis=1), 1.0, rtol=1e-5)


def test_the_reconstruction_target_may_differ_from_the_input(registered):
    d_out = 5
    with pytest.raises(ConfigError, match="'gated' reconstructs its input and cannot be a transcoder"):
        saejax.make_sae("gated", D_IN, D_SAE, d_out=d_out)
    with pytest.raises(ConfigError, match="'topk_skip' is a skip transcoder"):
        saejax.make_sae("topk_skip", D_IN, D_SAE)
    sae = saejax.make_sae("toy_transcoder", D_IN, D_SAE, d_out=d_out)
    params = sae.init(jax.random.key(0))
    assert sae.d_out == d_out and sae.forward(params, jnp.asarray(_data(4))).x_hat.shape == (4, d_out)

    mixing = np.random.default_rng(7).normal(size=(D_IN, d_out)).astype(np.float32)
    loss = losses.chain(losses.mse(), losses.l1(1e-3))
    optimizer = optimizers.make_optimizer(optax.adam(3e-3), sae)
    state = step_lib.state_at_step_zero(sae, loss, optimizer, params, 1.0)
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    seen = []
    for i in range(60):
        x = _data(128, seed=i % 4)
        state, metrics = step(state, (x, np.maximum(x @ mixing, 0.0)))
        seen.append(float(metrics["loss/mse"]))
    assert np.mean(seen[-5:]) < 0.5 * np.mean(seen[:5])
    x = _data(64, seed=9)
    out = sae.forward(state.params, jnp.asarray(x))
    terms, _ = loss.apply(state.params, jnp.asarray(x), out, loss.init(sae), 0, target=jnp.asarray(x @ mixing))
    expected = np.mean(np.sum(np.square(x @ mixing - np.asarray(out.x_hat)), axis=-1))
    np.testing.assert_allclose(float(terms["mse"]), expected, rtol=1e-4)
