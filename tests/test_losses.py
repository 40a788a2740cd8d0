"""Defining properties of saejax.losses, checked against numpy and hand-derived formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saejax import losses as L
from saejax.config import base_config
from saejax.errors import ConfigError
from saejax.sae import SAEOutput, make_sae

D_IN, D_SAE, B = 4, 8, 6


def _x(seed=0, batch=B, d=D_IN):
    return jax.random.normal(jax.random.key(seed), (batch, d), jnp.float32)


def _apply(term, params, x, out, state=None, step=0, sae=None):
    if state is None:
        state = term.init(sae)
    return term.apply(params, x, out, state, jnp.asarray(step))


def _perturbed(sae, seed=1, scale=0.5):
    """sae.init params with every array nudged randomly (non-zero biases, non-unit decoder rows)."""
    params = sae.init(jax.random.key(seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _np(a):
    return np.asarray(a, np.float64)


# ---------------------------------------------------------------------------------------------
# as_schedule / chain / total


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("nan"), float("inf"), float("-inf")])
def test_as_schedule_rejects_negative_and_non_finite(bad):
    with pytest.raises(ConfigError, match=r"loss\.foo"):
        L.as_schedule(bad, "loss.foo")


@pytest.mark.parametrize("factory", [L.mse, L.matryoshka_mse, L.l1, L.tanh_penalty, L.kl_sparsity,
                                     L.gated_sparsity, L.activation_balance])
def test_terms_reject_negative_coefficients(factory):
    with pytest.raises(ConfigError, match=r"loss\."):
        factory(-0.5)


def test_as_schedule_constants_and_callables():
    assert float(L.as_schedule(2.5, "loss.x")(jnp.asarray(7))) == 2.5
    assert float(L.as_schedule(0, "loss.x")(0)) == 0.0
    fn = optax.linear_schedule(0.0, 1.0, 10)
    assert L.as_schedule(fn, "loss.x") is fn


def test_warmup_schedule_scales_the_term_by_step():
    sae = make_sae("relu", D_IN, D_SAE)
    params = _perturbed(sae)
    x = _x()
    out = sae.forward(params, x)
    base = float(_apply(L.l1(1.0), params, x, out, sae=sae)[0]["l1"])
    assert base > 0
    warm = L.l1(optax.linear_schedule(0.0, 4.0, 10))
    for step, factor in [(0, 0.0), (5, 2.0), (10, 4.0), (50, 4.0)]:
        value = float(_apply(warm, params, x, out, sae=sae, step=step)[0]["l1"])
        assert value == pytest.approx(factor * base, rel=1e-6, abs=1e-12)


def _counted(out, counters):
    """out with the train step's dead-latent counter in its aux, as the loss terms are given it."""
    return out._replace(aux={**out.aux, "steps_since_fired": counters})


def test_chain_merges_terms_and_keeps_state_per_term():
    sae = make_sae("topk", D_IN, D_SAE, k=2)
    params = _perturbed(sae)
    x = _x()
    out = _counted(sae.forward(params, x), jnp.zeros(D_SAE, jnp.int32))
    parts = [L.mse(), L.kl_sparsity(0.1, rho=0.2), L.l1(0.3), L.auxk(1.0, k_aux=2, dead_steps=3)]
    loss = L.chain(*parts)
    state = loss.init(sae)
    assert isinstance(state, tuple) and len(state) == 4
    assert state[0] == () and state[2] == () and state[3] == ()
    np.testing.assert_array_equal(np.asarray(state[1]), np.full(D_SAE, 0.2, np.float32))

    terms, new_state = loss.apply(params, x, out, state, jnp.asarray(0))
    assert set(terms) == {"mse", "kl", "l1", "auxk"}
    assert isinstance(new_state, tuple) and len(new_state) == 4
    for part, s, ns in zip(parts, state, new_state):
        alone, alone_state = part.apply(params, x, out, s, jnp.asarray(0))
        for name, value in alone.items():
            assert float(terms[name]) == float(value)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                               ns, alone_state)
    assert float(L.total(terms)) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)


def test_chain_rejects_duplicated_term_names():
    sae = make_sae("gated", D_IN, D_SAE)
    params = _perturbed(sae)
    x = _x()
    out = sae.forward(params, x)
    for loss in (L.chain(L.mse(), L.mse(2.0)), L.chain(L.l1(1.0), L.gated_sparsity(1.0))):
        with pytest.raises(ConfigError, match="l1|mse"):
            loss.apply(params, x, out, loss.init(sae), jnp.asarray(0))


def test_total_is_the_sum():
    terms = {"a": jnp.asarray(1.5), "b": jnp.asarray(-0.25), "c": jnp.asarray(2.0)}
    assert float(L.total(terms)) == 3.25
    assert float(L.total({})) == 0.0
    assert L.total(terms).shape == ()


# ---------------------------------------------------------------------------------------------
# Reconstruction


def _fake_out(x_hat, z=None, pre_acts=None, aux=None):
    z = jnp.zeros((x_hat.shape[0], D_SAE)) if z is None else z
    return SAEOutput(x_hat, z, z if pre_acts is None else pre_acts, aux or {})


def test_mse_is_mean_over_rows_of_row_sums():
    x, x_hat = _x(0), _x(1)
    ref = np.mean(np.sum((_np(x) - _np(x_hat)) ** 2, axis=-1))
    value = float(_apply(L.mse(), None, x, _fake_out(x_hat), state=())[0]["mse"])
    assert value == pytest.approx(ref, rel=1e-6)
    value = float(_apply(L.mse(3.0), None, x, _fake_out(x_hat), state=())[0]["mse"])
    assert value == pytest.approx(3.0 * ref, rel=1e-6)


def test_normalized_mse_is_fvu_against_the_batch_mean():
    x, x_hat = _x(0) + 3.0, _x(1)  # an offset: the denominator must centre on the batch mean
    xn, xh = _np(x), _np(x_hat)
    ref = np.sum((xn - xh) ** 2) / np.sum((xn - xn.mean(0)) ** 2)
    term = L.mse(normalized=True)
    assert float(_apply(term, None, x, _fake_out(x_hat), state=())[0]["mse"]) == pytest.approx(ref, rel=1e-5)
    mean = jnp.broadcast_to(x.mean(0), x.shape)
    assert float(_apply(term, None, x, _fake_out(mean), state=())[0]["mse"]) == pytest.approx(1.0, rel=1e-5)


def test_matryoshka_mse_sums_prefix_errors():
    prefixes = (2, 5, 8)
    sae = make_sae("matryoshka", D_IN, D_SAE, k=2, matryoshka_prefixes=prefixes)
    params = _perturbed(sae)
    x = _x()
    out = sae.forward(params, x)
    z, w, b, xn = _np(out.z), _np(params["W_dec"]), _np(params["b_dec"]), _np(x)
    assert len(out.aux["prefix_x_hats"]) == len(prefixes)
    ref = 0.0
    for m, x_hat_m in zip(prefixes, out.aux["prefix_x_hats"]):
        recon = z[:, :m] @ w[:m] + b
        np.testing.assert_allclose(_np(x_hat_m), recon, rtol=1e-5, atol=1e-5)
        ref += np.mean(np.sum((xn - recon) ** 2, axis=-1))
    np.testing.assert_allclose(np.asarray(out.aux["prefix_x_hats"][-1]), np.asarray(out.x_hat), rtol=1e-6, atol=1e-6)
    value = float(_apply(L.matryoshka_mse(), params, x, out, state=())[0]["mse"])
    assert value == pytest.approx(ref, rel=1e-5)
    # strictly more than the full reconstruction's error alone (the shorter prefixes add error)
    assert value > float(L.squared_error(x, out.x_hat))


# ---------------------------------------------------------------------------------------------
# Sparsity penalties


def _z_and_params(seed=3):
    z = jax.random.normal(jax.random.key(seed), (B, D_SAE), jnp.float32)  # signed, e.g. leaky
    w_dec = jax.random.normal(jax.random.key(seed + 1), (D_SAE, D_IN), jnp.float32) * jnp.arange(1, D_SAE + 1)[:, None]
    return z, {"W_dec": w_dec, "b_dec": jnp.zeros(D_IN)}


def test_l1_plain_and_decoder_weighted():
    z, params = _z_and_params()
    norms = np.linalg.norm(_np(params["W_dec"]), axis=-1)
    assert np.ptp(norms) > 1.0  # rows of clearly different norms
    out = _fake_out(jnp.zeros((B, D_IN)), z=z)
    plain = float(_apply(L.l1(0.7), params, None, out, state=())[0]["l1"])
    assert plain == pytest.approx(0.7 * np.mean(np.sum(np.abs(_np(z)), -1)), rel=1e-5)
    weighted = float(_apply(L.l1(0.7, decoder_weighted=True), params, None, out, state=())[0]["l1"])
    assert weighted == pytest.approx(0.7 * np.mean(np.sum(np.abs(_np(z)) * norms, -1)), rel=1e-5)


def test_tanh_penalty_formula():
    z, params = _z_and_params()
    norms = np.linalg.norm(_np(params["W_dec"]), axis=-1)
    out = _fake_out(jnp.zeros((B, D_IN)), z=z * 0.05)
    value = float(_apply(L.tanh_penalty(2.0, scale=0.3), params, None, out, state=())[0]["tanh"])
    ref = 2.0 * np.mean(np.sum(np.tanh(0.3 * np.abs(_np(z) * 0.05) * norms), -1))
    assert value == pytest.approx(ref, rel=1e-5)


class _Sae:
    d_sae = D_SAE


def _bernoulli_kl(rho, rho_hat):
    return rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))


def test_kl_is_exactly_zero_at_the_target_density():
    rho = 0.25
    z = np.zeros((8, D_SAE), np.float32)
    z[:4] = 0.5  # every latent's batch mean is exactly 0.25
    term = L.kl_sparsity(1.0, rho=rho)
    terms, state = _apply(term, None, None, _fake_out(jnp.zeros((8, D_IN)), z=jnp.asarray(z)), sae=_Sae)
    assert float(terms["kl"]) == 0.0
    np.testing.assert_array_equal(np.asarray(state), np.full(D_SAE, rho, np.float32))


def test_kl_matches_the_bernoulli_formula():
    rho = 0.1
    z = jax.random.uniform(jax.random.key(4), (B, D_SAE), jnp.float32, 0.0, 0.6)
    rho_hat = _np(z).mean(0)
    terms, state = _apply(L.kl_sparsity(0.5, rho=rho), None, None, _fake_out(jnp.zeros((B, D_IN)), z=z), sae=_Sae)
    ref = 0.5 * _bernoulli_kl(rho, rho_hat).sum()
    assert ref > 0
    assert float(terms["kl"]) == pytest.approx(ref, rel=1e-4)
    np.testing.assert_allclose(_np(state), rho_hat, rtol=1e-6)


def test_kl_clips_dead_latents_to_a_finite_value():
    z = jnp.zeros((B, D_SAE))
    terms, _ = _apply(L.kl_sparsity(1.0, rho=0.05, eps=1e-6), None, None, _fake_out(jnp.zeros((B, D_IN)), z=z), sae=_Sae)
    assert float(terms["kl"]) == pytest.approx(D_SAE * _bernoulli_kl(0.05, 1e-6), rel=1e-4)


def test_kl_ema_state_update_and_gradient_through_the_batch_part_only():
    rho, decay, coeff = 0.1, 0.75, 0.5
    prev = jax.random.uniform(jax.random.key(5), (D_SAE,), jnp.float32, 0.05, 0.3)
    z = jax.random.uniform(jax.random.key(6), (B, D_SAE), jnp.float32, 0.0, 0.6)
    ema = L.kl_sparsity(coeff, rho=rho, ema_decay=decay)
    batch_only = L.kl_sparsity(coeff, rho=rho)
    zeros = jnp.zeros((B, D_IN))

    def kl(term, zz, state):
        return term.apply(None, None, _fake_out(zeros, z=zz), state, jnp.asarray(0))[0]["kl"]

    rho_hat = decay * _np(prev) + (1 - decay) * _np(z).mean(0)
    terms, new_state = ema.apply(None, None, _fake_out(zeros, z=z), prev, jnp.asarray(0))
    np.testing.assert_allclose(_np(new_state), rho_hat, rtol=1e-6)
    assert float(terms["kl"]) == pytest.approx(coeff * _bernoulli_kl(rho, rho_hat).sum(), rel=1e-4)

    grad_ema = _np(jax.grad(lambda zz: kl(ema, zz, prev))(z))
    # hand formula: d/dz_bi = λ (1 - decay) / B · (-(ρ/ρ̂_i) + (1 - ρ)/(1 - ρ̂_i))
    hand = coeff * (1 - decay) / B * (-(rho / rho_hat) + (1 - rho) / (1 - rho_hat))
    np.testing.assert_allclose(grad_ema, np.broadcast_to(hand, (B, D_SAE)), rtol=1e-4)
    # = (1 - decay) × the batch-only gradient at a batch whose mean is the same ρ̂
    z_same_mean = decay * prev + (1 - decay) * z
    grad_batch = _np(jax.grad(lambda zz: kl(batch_only, zz, jnp.full(D_SAE, rho)))(z_same_mean))
    np.testing.assert_allclose(grad_ema, (1 - decay) * grad_batch, rtol=1e-4)
    # the carried state holds no gradient
    grad_state = jax.grad(lambda zz: ema.apply(None, None, _fake_out(zeros, z=zz), prev, 0)[1].sum())(z)
    assert not np.asarray(grad_state).any()


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_kl_rejects_rho_outside_unit_interval(rho):
    with pytest.raises(ConfigError, match=r"loss\.rho"):
        L.kl_sparsity(1.0, rho=rho)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 2.0])
def test_kl_rejects_bad_ema_decay(decay):
    with pytest.raises(ConfigError, match=r"loss\.kl_ema"):
        L.kl_sparsity(1.0, ema_decay=decay)


# ---------------------------------------------------------------------------------------------
# JumpReLU L0 terms

BW = 0.1


def _jumprelu_setup():
    """A JumpReLU SAE whose thresholds put row 0's pre-acts inside the STE window for even
    latents and outside it for odd ones; no pre-act lies near a window edge."""
    sae = make_sae("jumprelu", D_IN, D_SAE, jumprelu_bandwidth=BW)
    params = _perturbed(sae)
    x = _x(7)
    pre = _np(sae.forward(params, x).pre_acts)
    offset = np.where(np.arange(D_SAE) % 2 == 0, -0.02, 0.3)
    params["threshold"] = jnp.asarray(pre[0] + offset, jnp.float32)
    u = (pre - _np(params["threshold"])) / BW
    assert np.all(np.abs(np.abs(u) - 0.5) > 0.02)
    assert _rect(u).sum() >= D_SAE // 2
    return sae, params, x, pre, u


def _rect(u):
    return (np.abs(u) < 0.5).astype(np.float64)


def test_jumprelu_l0_value_and_threshold_gradient():
    sae, params, x, pre, u = _jumprelu_setup()
    coeff = 0.3
    term = L.jumprelu_l0(coeff, BW)

    def value(p):
        return term.apply(p, x, sae.forward(p, x), (), jnp.asarray(0))[0]["l0"]

    theta = _np(params["threshold"])
    assert float(value(params)) == pytest.approx(coeff * np.mean(np.sum(pre > theta, -1)), rel=1e-6)
    grads = jax.grad(value)(params)
    # step STE: d/dθ_i = λ · mean_b -(1/ε) K((pre_bi - θ_i)/ε)
    np.testing.assert_allclose(_np(grads["threshold"]), coeff * -(_rect(u).sum(0)) / BW / B, rtol=1e-5)
    assert np.asarray(grads["threshold"]).any()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert not np.asarray(grads[name]).any(), name


def test_target_l0_is_zero_on_target_and_quadratic_elsewhere():
    sae, params, x, pre, u = _jumprelu_setup()
    out = sae.forward(params, x)
    l0 = float(np.mean(np.sum(pre > _np(params["threshold"]), -1)))
    assert float(_apply(L.target_l0(2.0, l0, BW), params, x, out, state=())[0]["target_l0"]) == 0.0
    target = l0 + 1.5
    term = L.target_l0(2.0, target, BW)
    d_in = x.shape[-1]  # the penalty is on the summed squared error's scale
    assert float(_apply(term, params, x, out, state=())[0]["target_l0"]) == pytest.approx(
        2.0 * d_in * (l0 / target - 1) ** 2, rel=1e-5)
    grad = jax.grad(lambda p: term.apply(p, x, sae.forward(p, x), (), 0)[0]["target_l0"])(params)
    d_l0 = -(_rect(u).sum(0)) / BW / B
    np.testing.assert_allclose(_np(grad["threshold"]), 2.0 * d_in * 2 * (l0 / target - 1) / target * d_l0,
                               rtol=1e-4)
    with pytest.raises(ConfigError, match=r"loss\.target_l0"):
        L.target_l0(1.0, 0.0, BW)


def test_pre_act_loss_pulls_only_dead_latents_up_to_their_thresholds():
    sae, params, x, pre, _ = _jumprelu_setup()
    out = sae.forward(params, x)
    term = L.pre_act(0.5, dead_steps=3, dead_only=True)  # SAELens' form
    steps_since_fired = jnp.asarray(np.where(np.arange(D_SAE) < D_SAE // 2, 5, 0), jnp.int32)  # first half dead
    assert term.init(sae) == ()  # it reads the train step's counter
    terms, new_state = term.apply(params, x, _counted(out, steps_since_fired), (), jnp.asarray(0))
    theta, norms = _np(params["threshold"]), np.linalg.norm(_np(params["W_dec"]), axis=-1)
    dead = np.arange(D_SAE) < D_SAE // 2
    expected = 0.5 * np.mean(np.sum(np.maximum(theta - pre, 0) * norms * dead, -1))
    assert float(terms["pre_act"]) == pytest.approx(expected, rel=1e-5) and new_state == ()
    grad = jax.grad(lambda p: term.apply(p, x, _counted(sae.forward(p, x), steps_since_fired), (), 0)[0]["pre_act"])(
        params)
    assert not _np(grad["b_enc"])[~dead].any() and (_np(grad["b_enc"])[dead] <= 0).all()  # raises pre-acts
    assert _np(grad["b_enc"])[dead].any()
    every = L.pre_act(0.5)  # Anthropic's form: every latent, no window, no state
    assert every.init(sae) == ()
    assert float(every.apply(params, x, out, (), jnp.asarray(0))[0]["pre_act"]) == pytest.approx(
        0.5 * np.mean(np.sum(np.maximum(theta - pre, 0) * norms, -1)), rel=1e-5)
    with pytest.raises(ConfigError, match=r"loss\.pre_act"):
        L.pre_act(-1.0)
    with pytest.raises(ConfigError, match=r"loss\.dead_steps"):
        L.pre_act(1.0, 0, dead_only=True)


# ---------------------------------------------------------------------------------------------
# Gated


def _gated_setup():
    sae = make_sae("gated", D_IN, D_SAE)
    params = _perturbed(sae, scale=0.4)
    x = _x(8)
    return sae, params, x


def test_gated_sparsity_l1_part():
    sae, params, x = _gated_setup()
    out = sae.forward(params, x)
    gate = np.maximum(_np(out.aux["gate_pre"]), 0)
    assert 0 < (gate > 0).mean() < 1
    norms = np.linalg.norm(_np(params["W_dec"]), axis=-1)
    terms, _ = _apply(L.gated_sparsity(0.4), params, x, out, state=())
    assert set(terms) == {"l1", "gated_aux"}
    assert float(terms["l1"]) == pytest.approx(0.4 * np.mean(np.sum(gate * norms, -1)), rel=1e-5)
    recon = gate @ _np(params["W_dec"]) + _np(params["b_dec"])
    assert float(terms["gated_aux"]) == pytest.approx(np.mean(np.sum((_np(x) - recon) ** 2, -1)), rel=1e-5)


def test_gated_aux_gradient_skips_the_frozen_decoder():
    sae, params, x = _gated_setup()

    def aux(p):
        return L.gated_sparsity(0.4).apply(p, x, sae.forward(p, x), (), 0)[0]["gated_aux"]

    grads = jax.grad(aux)(params)
    assert not np.asarray(grads["W_dec"]).any()
    assert not np.asarray(grads["b_mag"]).any() and not np.asarray(grads["r_mag"]).any()
    assert np.abs(_np(grads["W_enc"])).max() > 0 and np.abs(_np(grads["b_gate"])).max() > 0

    # hand gradient: π = (x - b_dec) W_enc + b_gate, x̂ = relu(π) sg(W_dec) + sg(b_dec)
    w_enc, w_dec, b_dec, b_gate = (_np(params[k]) for k in ("W_enc", "W_dec", "b_dec", "b_gate"))
    xc = _np(x) - b_dec
    pi = xc @ w_enc + b_gate
    resid = _np(x) - (np.maximum(pi, 0) @ w_dec + b_dec)
    d_pi = (-2.0 / B) * (resid @ w_dec.T) * (pi > 0)
    np.testing.assert_allclose(_np(grads["b_gate"]), d_pi.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(grads["W_enc"]), xc.T @ d_pi, rtol=1e-4, atol=1e-6)
    # b_dec: only the encoder's input centring (x - b_dec) contributes, never the frozen decoder
    # bias (which would add -2/B Σ_b resid_b)
    np.testing.assert_allclose(_np(grads["b_dec"]), -(d_pi.sum(0) @ w_enc.T), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Activation balance


def _balance(z, coeff=1.0):
    return float(_apply(L.activation_balance(coeff), None, None, _fake_out(jnp.zeros((z.shape[0], D_IN)), z=z),
                        state=())[0]["balance"])


def test_activation_balance_zero_when_uniform_positive_when_concentrated():
    assert _balance(jnp.full((B, D_SAE), 0.7)) == pytest.approx(0.0, abs=1e-6)
    assert _balance(jnp.tile(jnp.eye(D_SAE) * 2.0, (2, 1))) == pytest.approx(0.0, abs=1e-6)  # one-hot, round robin
    concentrated = jnp.zeros((B, D_SAE)).at[:, 0].set(1.0)
    assert _balance(concentrated) == pytest.approx(D_SAE - 1.0, rel=1e-6)
    skewed = jnp.zeros((B, D_SAE)).at[:, 0].set(1.0).at[0, 1].set(1.0)
    assert _balance(skewed) > 0


def test_activation_balance_formula_and_stop_gradient_on_firing_shares():
    z = jax.nn.relu(jax.random.normal(jax.random.key(9), (B, D_SAE)))
    zn = _np(z)
    fires = (zn != 0).mean(0)
    f = fires / fires.sum()
    share = (np.abs(zn) / np.abs(zn).sum(-1, keepdims=True)).mean(0)
    assert _balance(z, 1.5) == pytest.approx(1.5 * (D_SAE * np.sum(f * share) - 1.0), rel=1e-5)
    f_const = jnp.asarray(f, jnp.float32)

    def ref(zz):
        m = jnp.abs(zz)
        return D_SAE * jnp.sum(f_const * jnp.mean(m / jnp.sum(m, -1, keepdims=True), 0))

    got = jax.grad(lambda zz: L.activation_balance(1.0).apply(None, None, _fake_out(jnp.zeros((B, D_IN)), z=zz), (), 0)
                   [0]["balance"])(z)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.grad(ref)(z)), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# AuxK

K_AUX, DEAD_STEPS = 3, 5


def _auxk_setup():
    sae = make_sae("topk", D_IN, D_SAE, k=2)
    params = _perturbed(sae, scale=0.3)
    x = _x(10)
    return sae, params, x


def _auxk_reference(params, x, out, dead):
    pre, w = _np(out.pre_acts), _np(params["W_dec"])
    k = K_AUX
    z_aux = np.zeros_like(pre)
    for b in range(pre.shape[0]):
        idx = np.flatnonzero(dead)
        top = idx[np.argsort(-pre[b, idx], kind="stable")[:k]]
        z_aux[b, top] = np.maximum(pre[b, top], 0)
    resid = _np(x) - _np(out.x_hat)
    recon = z_aux @ w  # no b_dec
    scale = min(1.0, dead.sum() / K_AUX)
    return scale * np.mean(np.sum((resid - recon) ** 2, -1)), z_aux, resid, recon, scale


def test_auxk_zero_without_dead_latents_and_keeps_no_counter_of_its_own():
    sae, params, x = _auxk_setup()
    out = sae.forward(params, x)
    fired = (_np(out.z) != 0).any(0)
    assert fired.any() and not fired.all()
    counters = jnp.asarray([0, 1, 2, 3, 4, 0, 1, 4], jnp.int32)  # all < DEAD_STEPS
    term = L.auxk(1.0, K_AUX, DEAD_STEPS)
    assert term.init(sae) == ()
    terms, new = term.apply(params, x, _counted(out, counters), (), jnp.asarray(0))
    assert float(terms["auxk"]) == 0.0 and new == ()
    grads = jax.grad(lambda p: term.apply(p, x, _counted(sae.forward(p, x), counters), (), 0)[0]["auxk"])(params)
    assert all(not np.asarray(g).any() for g in jax.tree_util.tree_leaves(grads))
    with pytest.raises(ConfigError, match="steps_since_fired"):  # the counter is the train step's
        term.apply(params, x, out, (), 0)


@pytest.mark.parametrize("counters", [[0, 7, 2, 5, 9, 0, 6, 1], [9, 0, 0, 0, 0, 5, 0, 0]], ids=["4dead", "2dead"])
def test_auxk_matches_hand_computation(counters):
    sae, params, x = _auxk_setup()
    out = sae.forward(params, x)
    counters = jnp.asarray(counters, jnp.int32)
    dead = np.asarray(counters) >= DEAD_STEPS
    ref, z_aux, *_ , scale = _auxk_reference(params, x, out, dead)
    assert (z_aux > 0).any() and scale == min(1.0, dead.sum() / K_AUX)
    term = L.auxk(0.25, K_AUX, DEAD_STEPS)
    terms, _ = term.apply(params, x, _counted(out, counters), (), jnp.asarray(0))
    assert float(terms["auxk"]) == pytest.approx(0.25 * ref, rel=1e-5)
    jitted, _ = jax.jit(term.apply)(params, x, _counted(out, counters), (), jnp.asarray(0))
    assert float(jitted["auxk"]) == pytest.approx(0.25 * ref, rel=1e-5)


def test_auxk_gradient_reaches_only_dead_decoder_rows():
    sae, params, x = _auxk_setup()
    counters = jnp.asarray([0, 7, 2, 5, 9, 0, 6, 1], jnp.int32)
    dead = np.asarray(counters) >= DEAD_STEPS
    term = L.auxk(1.0, K_AUX, DEAD_STEPS)

    def value(p):
        return term.apply(p, x, _counted(sae.forward(p, x), counters), (), 0)[0]["auxk"]

    grad_w = _np(jax.grad(value)(params)["W_dec"])
    out = sae.forward(params, x)
    _, z_aux, resid, recon, scale = _auxk_reference(params, x, out, dead)
    assert not grad_w[~dead].any()  # residual is stop-gradient: live latents' rows get nothing
    assert np.abs(grad_w[dead]).max() > 0
    # d/dW_dec[i] = scale · (-2/B) Σ_b z_aux[b, i] (resid_b - recon_b)
    np.testing.assert_allclose(grad_w, scale * (-2.0 / B) * z_aux.T @ (resid - recon), rtol=1e-4, atol=1e-6)


def _auxk_dense_reference(sae, k_aux, dead):
    """AuxK written the plain way: every latent encoded, the live ones masked, a dense decode."""

    def value(params, x):
        out = sae.forward(params, x)
        pre = jnp.where(dead, sae.pre_acts_of(params, x, None), -jnp.inf)
        z_aux = jnp.zeros_like(pre)
        values, indices = jax.lax.top_k(pre, min(k_aux, sae.d_sae))
        z_aux = z_aux.at[jnp.arange(pre.shape[0])[:, None], indices].set(jax.nn.relu(values))
        z_aux = jnp.where(jnp.isfinite(z_aux), z_aux, 0.0)
        residual = jax.lax.stop_gradient(x - out.x_hat)
        scale = jnp.minimum(1.0, jnp.sum(dead) / min(k_aux, sae.d_sae))
        return scale * jnp.mean(jnp.sum(jnp.square(residual - z_aux @ params["W_dec"]), -1))

    return value


@pytest.mark.slow
@pytest.mark.parametrize("arch,tied", [("topk", False), ("topk", True), ("gated", False)])
def test_auxk_over_the_dead_sub_dictionary_matches_the_dense_formula(arch, tied):
    """d_sae 8192 has sub-dictionaries of 512, 2048 and 4096 latents besides the whole: 100, 1000,
    3000 and 5000 dead latents take one each; the loss and every gradient equal the plain formula's."""
    d_in, d_sae, k_aux = 8, 8192, 24
    assert L.auxk_capacities(d_sae) == (512, 2048, 4096, 8192)
    sae = make_sae(arch, d_in, d_sae, k=8, tied=tied, sparse=False)
    params = _perturbed(sae, scale=0.2)
    x = _x(3, batch=16, d=d_in)
    term = L.auxk(1.0, k_aux, DEAD_STEPS, sae.pre_acts_of)

    @jax.jit
    def ours(p, counters):
        return jax.value_and_grad(lambda p: term.apply(p, x, _counted(sae.forward(p, x), counters), (), 0)[0]["auxk"])(p)

    @jax.jit
    def reference(p, counters):
        return jax.value_and_grad(_auxk_dense_reference(sae, k_aux, counters >= DEAD_STEPS))(p, x)

    for n_dead in (0, 100, 1000, 3000, 5000, d_sae):
        dead_ids = np.random.default_rng(n_dead).permutation(d_sae)[:n_dead]
        counters = jnp.zeros(d_sae, jnp.int32).at[dead_ids].set(DEAD_STEPS)
        (got, grads), (want, want_grads) = ours(params, counters), reference(params, counters)
        assert (float(want) > 0) == (n_dead > 0), n_dead
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str(n_dead))
        for name in want_grads:
            scale = float(jnp.abs(want_grads[name]).max())
            np.testing.assert_allclose(grads[name], want_grads[name], rtol=0, atol=1e-5 * max(scale, 1e-6),
                                       err_msg=f"{name}, {n_dead} dead")
        live = np.setdiff1d(np.arange(d_sae), dead_ids)
        assert not np.asarray(grads["W_dec"])[live].any(), n_dead  # only dead latents' rows move


def test_auxk_default_encoder_is_linear_and_says_so():
    gated = make_sae("gated", D_IN, D_SAE)
    params = _perturbed(gated)
    x = _x()
    counters = jnp.full(D_SAE, DEAD_STEPS, jnp.int32)
    with pytest.raises(ConfigError, match="pre_acts_of=sae.pre_acts_of"):
        L.auxk(1.0, K_AUX, DEAD_STEPS).apply(params, x, _counted(gated.forward(params, x), counters), (), 0)
    terms, _ = L.auxk(1.0, K_AUX, DEAD_STEPS, gated.pre_acts_of).apply(
        params, x, _counted(gated.forward(params, x), counters), (), 0)
    assert float(terms["auxk"]) > 0


def test_auxk_rejects_bad_sizes():
    with pytest.raises(ConfigError, match=r"loss\.auxk_k"):
        L.auxk(1.0, 0, 10)
    with pytest.raises(ConfigError, match=r"loss\.dead_steps"):
        L.auxk(1.0, 4, 0)


# ---------------------------------------------------------------------------------------------
# loss_from_config


def _cfg(**overrides):
    c = base_config().loss
    c.dead_steps = 1000  # what saejax.defaults.resolve derives from loss.dead_tokens and the batch size
    for k, v in overrides.items():
        c[k] = v
    return c


def _sae(arch):
    kw = {"k": 2} if arch in ("topk", "batchtopk", "matryoshka") else {}
    if arch == "matryoshka":
        kw["matryoshka_prefixes"] = (2, 5, 8)
    return make_sae(arch, D_IN, D_SAE, **kw)


@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "batchtopk"])
def test_config_l0_needs_jumprelu(arch):
    with pytest.raises(ConfigError, match="jumprelu"):
        L.loss_from_config(_cfg(l0=0.1), _sae(arch))
    with pytest.raises(ConfigError, match="jumprelu"):
        L.loss_from_config(_cfg(target_l0=4.0), _sae(arch))


@pytest.mark.parametrize("field", ["mse", "l1", "tanh", "kl", "auxk", "balance", "target_l0_coeff", "pre_act"])
@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_config_rejects_bad_coefficients_naming_the_field(field, bad):
    with pytest.raises(ConfigError, match=rf"loss\.{field}"):
        L.loss_from_config(_cfg(**{field: bad}), _sae("relu"))


def test_config_pre_act_needs_jumprelu():
    terms, *_ = _config_terms(_cfg(pre_act=1e-3), "jumprelu")
    assert "pre_act" in terms
    with pytest.raises(ConfigError, match=r"loss\.pre_act needs one of sae\.arch='jumprelu', 'jumprelu_skip'"):
        L.loss_from_config(_cfg(pre_act=1e-3), _sae("relu"))


def test_config_rejects_negative_l0_on_jumprelu():
    with pytest.raises(ConfigError, match=r"loss\.l0"):
        L.loss_from_config(_cfg(l0=-1.0), _sae("jumprelu"))


def _config_terms(cfg, arch, step=0):
    sae = _sae(arch)
    params = _perturbed(sae)
    x = _x()
    out = _counted(sae.forward(params, x), jnp.zeros(sae.d_sae, jnp.int32))  # as the train step gives it
    loss = L.loss_from_config(cfg, sae)
    return loss.apply(params, x, out, loss.init(sae), jnp.asarray(step))[0], params, x, out


def test_config_gated_uses_gated_sparsity():
    terms, params, x, out = _config_terms(_cfg(l1=0.5), "gated")
    assert set(terms) == {"mse", "l1", "gated_aux"}
    ref, _ = L.gated_sparsity(0.5).apply(params, x, out, (), 0)
    assert float(terms["l1"]) == float(ref["l1"]) and float(terms["gated_aux"]) == float(ref["gated_aux"])
    terms, *_ = _config_terms(_cfg(l1=0.0), "gated")  # the gate's aux loss is always there
    assert "gated_aux" in terms


def test_config_matryoshka_uses_matryoshka_mse():
    terms, params, x, out = _config_terms(_cfg(auxk=0.0), "matryoshka")  # AuxK (on by default) aside
    assert set(terms) == {"mse"}
    ref = float(L.matryoshka_mse().apply(params, x, out, (), 0)[0]["mse"])
    assert float(terms["mse"]) == pytest.approx(ref, rel=1e-6)
    assert ref > float(L.squared_error(x, out.x_hat))


def test_config_builds_each_requested_term():
    cfg = _cfg(l1=0.2, tanh=0.1, kl=0.3, auxk=0.05, auxk_k=2, balance=0.01)
    terms, *_ = _config_terms(cfg, "topk")
    assert set(terms) == {"mse", "l1", "tanh", "kl", "auxk", "balance"}
    terms, *_ = _config_terms(_cfg(l0=0.1, target_l0=3.0), "jumprelu")
    assert set(terms) == {"mse", "l0", "target_l0", "pre_act"}  # pre_act: JumpReLU's default
    terms, *_ = _config_terms(_cfg(l0=0.1, target_l0=3.0, pre_act=0.0), "jumprelu")
    assert set(terms) == {"mse", "l0", "target_l0"}
    with pytest.raises(ConfigError, match="mlp"):
        L.loss_from_config(_cfg(auxk=0.1), make_sae("mlp", D_IN, D_SAE, mlp_hidden=(4,)))


def test_config_auxk_k_zero_means_half_of_d_in(monkeypatch):
    seen = []
    real = L.auxk
    monkeypatch.setattr(L, "auxk", lambda coeff, k_aux, dead_steps, *rest:
                        seen.append(k_aux) or real(coeff, k_aux, dead_steps, *rest))
    L.loss_from_config(_cfg(auxk=0.1, auxk_k=0), make_sae("topk", D_IN, D_SAE, k=2))
    L.loss_from_config(_cfg(auxk=0.1, auxk_k=3), make_sae("topk", D_IN, D_SAE, k=2))
    assert seen == [max(1, D_IN // 2), 3]


def test_config_l1_warmup():
    cfg = _cfg(l1=2.0, l1_warmup_steps=10)
    at0, *_ = _config_terms(cfg, "relu", step=0)
    at5, *_ = _config_terms(cfg, "relu", step=5)
    at20, *_ = _config_terms(cfg, "relu", step=20)
    assert float(at0["l1"]) == 0.0
    assert float(at5["l1"]) == pytest.approx(0.5 * float(at20["l1"]), rel=1e-6)
    assert float(at20["l1"]) > 0


# ---------------------------------------------------------------------------------------------
# Every term jits and is finite


def _every_term():
    dead = jnp.asarray([0, 7, 2, 5, 9, 0, 6, 1], jnp.int32)
    return [
        ("mse", "relu", L.mse(), None),
        ("mse_normalized", "relu", L.mse(normalized=True), None),
        ("matryoshka_mse", "matryoshka", L.matryoshka_mse(), None),
        ("l1", "relu", L.l1(0.1), None),
        ("l1_weighted", "relu", L.l1(0.1, decoder_weighted=True), None),
        ("tanh", "relu", L.tanh_penalty(0.1, 2.0), None),
        ("kl", "relu", L.kl_sparsity(0.1), None),
        ("kl_ema", "relu", L.kl_sparsity(0.1, ema_decay=0.9), None),
        ("jumprelu_l0", "jumprelu", L.jumprelu_l0(0.1, 0.001), None),
        ("target_l0", "jumprelu", L.target_l0(0.1, 3.0, 0.001), None),
        ("gated_sparsity", "gated", L.gated_sparsity(0.1), None),
        ("balance", "relu", L.activation_balance(0.1), None),
        ("auxk_none_dead", "topk", L.auxk(0.1, K_AUX, DEAD_STEPS), None),
        ("auxk_dead", "topk", L.auxk(0.1, K_AUX, DEAD_STEPS), dead),
        ("auxk_batchtopk", "batchtopk", L.auxk(0.1, K_AUX, DEAD_STEPS), dead),
        ("chain", "topk", L.chain(L.mse(), L.l1(0.1), L.kl_sparsity(0.1, ema_decay=0.5),
                                  L.auxk(0.1, K_AUX, DEAD_STEPS)), None),
    ]


@pytest.mark.parametrize("name,arch,term,counters", _every_term(), ids=[t[0] for t in _every_term()])
def test_every_term_jits_and_is_finite(name, arch, term, counters):
    sae = _sae(arch)
    params = _perturbed(sae, scale=0.2)
    x = _x()
    counters = jnp.zeros(sae.d_sae, jnp.int32) if counters is None else counters  # the train step's dead counter
    out = _counted(sae.forward(params, x), counters)
    state = term.init(sae)
    eager, _ = term.apply(params, x, out, state, jnp.asarray(3))
    jitted, new_state = jax.jit(term.apply)(params, x, out, state, jnp.asarray(3))
    assert set(jitted) == set(eager) and jitted
    for key, value in jitted.items():
        assert value.shape == () and np.isfinite(float(value)), key
        assert float(value) == pytest.approx(float(eager[key]), rel=1e-5, abs=1e-6), key
    # and the gradient of the jitted total is finite
    grads = jax.jit(jax.grad(lambda p: L.total(term.apply(p, x, _counted(sae.forward(p, x), counters), state, 3)[0])))(
        params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
