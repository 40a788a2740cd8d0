"""The train step: compiles once, reduces the loss, keeps its constraints; optimizer and init."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saejax import initializers, losses, normalization, optimizers
from saejax.evaluate import heldout
from saejax import step as step_lib
from saejax.config import base_config
from saejax.errors import ConfigError, DataError
from saejax.resampling import resample_dead_latents
from saejax.sae import ARCHITECTURES, make_sae

D_IN, D_SAE = 16, 48


def _data(n=256, seed=0):
    """Sparse combinations of 32 fixed directions (~3 active per row) around an offset."""
    directions = np.random.default_rng(123).normal(size=(32, D_IN))
    rng = np.random.default_rng(seed)
    codes = rng.uniform(size=(n, 32)) * (rng.uniform(size=(n, 32)) < 3 / 32)
    return (codes @ directions * 3 + 2).astype(np.float32)


def _setup(arch, optimizer=None, **loss_fields):
    sae = make_sae(arch, D_IN, D_SAE, k=4, mlp_hidden=(8,))
    loss_config = base_config().loss
    loss_config.dead_steps = 1000  # what saejax.defaults.resolve derives from loss.dead_tokens and the batch size
    defaults = {"relu": {"l1": 0.1}, "gated": {"l1": 0.1}, "mlp": {"l1": 0.1}, "jumprelu": {"l0": 0.01},
                "topk": {"auxk": 1 / 32}, "batchtopk": {"auxk": 1 / 32}, "matryoshka": {"auxk": 1 / 32}}
    loss_config.update({**defaults[arch], **loss_fields})
    loss = losses.loss_from_config(loss_config, sae)
    optimizer = optimizers.make_optimizer(optimizer or optax.adam(3e-3), sae, project_decoder=arch != "mlp")
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), _data(1024, seed=1))
    return sae, loss, optimizer, state


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_step_compiles_once_and_reduces_loss(arch):
    sae, loss, optimizer, state = _setup(arch)
    traces = []

    def counted(state, batch):
        traces.append(1)
        return step_lib.make_train_step(sae, loss, optimizer)(state, batch)

    step = step_lib.jit_train_step(counted)
    losses_seen = []
    for i in range(40):
        state, metrics = step(state, _data(seed=i % 4))
        losses_seen.append(float(metrics["loss"]))
    assert len(traces) == 1 and step._cache_size() == 1
    assert int(state.step) == 40
    assert np.mean(losses_seen[-5:]) < 0.8 * np.mean(losses_seen[:5])
    assert all(np.isfinite(losses_seen))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "gated"])
def test_decoder_rows_stay_unit_norm(arch):
    sae, loss, optimizer, state = _setup(arch)
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    for i in range(3):
        state, _ = step(state, _data(seed=i))
        np.testing.assert_allclose(np.linalg.norm(state.params["W_dec"], axis=1), 1.0, rtol=1e-5)


def test_gradient_projection_leaves_no_parallel_component():
    w = jax.random.normal(jax.random.key(0), (D_SAE, D_IN))
    g = jax.random.normal(jax.random.key(1), (D_SAE, D_IN)) + w  # strongly parallel to start with
    transform = optimizers.project_decoder_grads()
    projected, _ = transform.update({"W_dec": g, "b_dec": jnp.ones(D_IN)}, transform.init(None), {"W_dec": w})
    parallel = np.sum(np.asarray(projected["W_dec"]) * np.asarray(w), axis=1)
    np.testing.assert_allclose(parallel, 0.0, atol=1e-4)
    np.testing.assert_array_equal(projected["b_dec"], np.ones(D_IN))  # other params untouched
    # what is left is the orthogonal part: g minus its projection
    unit = np.asarray(w) / np.linalg.norm(w, axis=1, keepdims=True)
    expected = np.asarray(g) - np.sum(np.asarray(g) * unit, axis=1, keepdims=True) * unit
    np.testing.assert_allclose(projected["W_dec"], expected, atol=1e-5)


def test_buffers_are_not_moved_by_the_optimizer():
    sae, loss, optimizer, state = _setup("batchtopk", optimizer=optax.adamw(1e-2, weight_decay=0.5))
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    out = sae.forward(state.params, jnp.asarray(_data()) * state.norm_scale)
    new_state, _ = step(state, _data())  # donates `state`
    # the threshold follows the batches' smallest selected activation, weight decay is not applied
    np.testing.assert_allclose(new_state.params["threshold"], out.aux["min_selected"], rtol=1e-4)


def test_init_normalises_activations_and_sets_b_dec():
    sample = _data(4096)
    sae, loss, optimizer, state = _setup("relu")
    scale = normalization.scale_of(sample)
    np.testing.assert_allclose(np.mean(np.sum((sample * scale) ** 2, axis=1)), D_IN, rtol=1e-5)
    np.testing.assert_allclose(float(state.norm_scale), normalization.scale_of(_data(1024, seed=1)))
    with pytest.raises(DataError, match="cannot normalise"):
        normalization.scale_of(np.zeros((4, D_IN), np.float32))


def test_geometric_median_minimises_sum_of_distances_and_resists_outliers():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 3)).astype(np.float32)
    points[:20] += 100.0  # 10 % outliers drag the mean far away
    median = np.asarray(initializers.initial_b_dec(points, "geometric_median"))
    cost = lambda y: np.sum(np.linalg.norm(points - y, axis=1))  # noqa: E731
    for direction in np.eye(3):
        assert cost(median) <= min(cost(median + 1e-2 * direction), cost(median - 1e-2 * direction))
    assert np.linalg.norm(median) < 2.0 < np.linalg.norm(points.mean(0))
    np.testing.assert_allclose(initializers.initial_b_dec(points, "mean"), points.mean(0), rtol=1e-5)
    with pytest.raises(ConfigError, match="sae.init_b_dec='median'"):
        initializers.initial_b_dec(points, "median")


def test_jumprelu_thresholds_start_each_latent_at_the_asked_firing_rate():
    sample = _data(4096, seed=2)
    sae = make_sae("jumprelu", D_IN, D_SAE)
    loss = losses.loss_from_config(base_config().loss, sae)
    optimizer = optimizers.make_optimizer(optax.adam(1e-3), sae)
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), sample, threshold_rate=0.125)
    x = jnp.asarray(sample) * state.norm_scale
    firing = np.asarray(sae.encode(state.params, x) > 0).mean(axis=0)  # [d_sae]: each latent's share of rows
    threshold = np.asarray(state.params["threshold"])
    positive = threshold > 0  # latents with fewer positive pre-activations keep threshold 0 and fire less
    assert positive.mean() > 0.5 and np.all(threshold >= 0)
    np.testing.assert_allclose(firing[positive], 0.125, atol=2 / 4096)
    assert np.all(firing[~positive] <= 0.125 + 1e-6)
    constant = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), sample)  # sae.init's thresholds
    assert np.all(np.asarray(constant.params["threshold"]) == 0.0)
    with pytest.raises(ConfigError, match="firing rate 1.5"):
        initializers.jumprelu_thresholds(np.zeros((8, 4), np.float32), 1.5)


def test_thresholds_and_decoder_rows_can_take_larger_steps_than_the_rest():
    sae = make_sae("jumprelu", D_IN, D_SAE, jumprelu_init_threshold=0.5)
    params = sae.init(jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(**scales):
        optimizer = optimizers.make_optimizer(optax.sgd(0.1), sae, project_decoder=False, **scales)
        return optimizer.update(grads, optimizer.init(params), params)[0]

    plain, scaled = first_update(), first_update(threshold_lr_scale=30.0, decoder_lr_scale=2.0)
    np.testing.assert_allclose(scaled["threshold"], 30.0 * plain["threshold"], rtol=1e-6)
    np.testing.assert_allclose(scaled["W_dec"], 2.0 * plain["W_dec"], rtol=1e-6)
    for name in ("W_enc", "b_enc", "b_dec"):
        np.testing.assert_array_equal(scaled[name], plain[name])
    with pytest.raises(ConfigError, match="optim.threshold_lr_scale=0"):
        optimizers.make_optimizer(optax.sgd(0.1), sae, threshold_lr_scale=0.0)
    with pytest.raises(ConfigError, match="optim.decoder_lr_scale=-1"):
        optimizers.make_optimizer(optax.sgd(0.1), sae, decoder_lr_scale=-1.0)


def test_lr_schedule_warms_up_and_decays():
    schedule = optimizers.lr_schedule(1e-3, total_steps=100, warmup_steps=10, decay="linear")
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 0.0, atol=1e-9)
    with pytest.raises(ConfigError, match="optim.decay='step'"):
        optimizers.lr_schedule(1e-3, 100, decay="step")
    with pytest.raises(ConfigError, match="optim.lr=-1"):
        optimizers.lr_schedule(-1, 100)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_schedule_decays_over_the_last_decay_steps_only(decay):
    schedule = optimizers.lr_schedule(1e-3, total_steps=100, warmup_steps=10, decay=decay, decay_steps=20)
    np.testing.assert_allclose([float(schedule(s)) for s in (5, 10, 50, 80)], [5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-5)
    np.testing.assert_allclose(float(schedule(90)), 5e-4, rtol=1e-4)  # halfway (cosine too)
    np.testing.assert_allclose(float(schedule(100)), 0.0, atol=1e-9)
    # longer than the run after the warm-up: the whole run decays, as with decay_steps=0
    whole = optimizers.lr_schedule(1e-3, 100, 10, decay, decay_steps=0)
    longer = optimizers.lr_schedule(1e-3, 100, 10, decay, decay_steps=500)
    np.testing.assert_allclose([float(longer(s)) for s in range(101)], [float(whole(s)) for s in range(101)])
    with pytest.raises(ConfigError, match="optim.decay_steps=-1"):
        optimizers.lr_schedule(1e-3, 100, decay=decay, decay_steps=-1)


def test_any_optax_optimizer_by_name():
    sgd = optimizers.optax_optimizer("sgd", 0.1, b1=0.9)  # options it does not take are dropped
    params = {"w": jnp.ones(3)}
    updates, _ = sgd.update({"w": jnp.ones(3)}, sgd.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1)
    with pytest.raises(ConfigError, match="optim.name='adamm'"):
        optimizers.optax_optimizer("adamm", 0.1)


def test_bfloat16_compute_trains():
    sae = make_sae("relu", D_IN, D_SAE, dtype="bfloat16")
    loss = losses.chain(losses.mse(), losses.l1(0.1))
    optimizer = optimizers.make_optimizer(optax.adam(3e-3), sae)
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), _data(1024))
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    first = None
    for i in range(30):
        state, metrics = step(state, _data(seed=i % 4))
        first = first if first is not None else float(metrics["loss"])
    assert state.params["W_enc"].dtype == jnp.float32  # master params stay f32
    assert float(metrics["loss"]) < 0.8 * first


def test_auxk_sees_the_counter_that_resampling_resets():
    """One dead-latent counter: AuxK works on the latents the train state calls dead, so after
    resampling revives them it stops treating them as dead."""
    sae, loss, optimizer, state = _setup("topk")
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer, dead_steps=1000))
    assert jax.tree.leaves(state.loss_state) == []  # no counter of its own
    dead = np.zeros(D_SAE, bool)
    dead[:6] = True
    state = state._replace(steps_since_fired=jnp.where(dead, 10_000, 0))
    _, metrics = step(jax.tree.map(jnp.copy, state), _data(seed=3))  # the step donates its state
    assert float(metrics["loss/auxk"]) > 0  # the dead latents are AuxK's
    x = jnp.asarray(_data()) * state.norm_scale
    revived, n = jax.jit(lambda s, x, k: resample_dead_latents(sae, optimizer, s, x, k, dead_steps=1000))(
        state, x, jax.random.key(7))
    assert int(n) == 6
    _, metrics = step(revived, _data(seed=3))
    assert float(metrics["loss/auxk"]) == 0.0 and float(metrics["dead_fraction"]) == 0.0


def test_resampling_replaces_only_dead_latents_and_resets_their_moments():
    sae, loss, optimizer, state = _setup("relu")
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    for i in range(3):
        state, _ = step(state, _data(seed=i))
    dead = np.zeros(D_SAE, bool)
    dead[:5] = True
    state = state._replace(steps_since_fired=jnp.where(dead, 10_000, 0))
    x = jnp.asarray(_data()) * state.norm_scale
    new, n = jax.jit(lambda s, x, k: resample_dead_latents(sae, optimizer, s, x, k, dead_steps=1000))(
        state, x, jax.random.key(7))
    assert int(n) == 5
    old_p, new_p = state.params, new.params
    np.testing.assert_array_equal(new_p["W_dec"][~dead], old_p["W_dec"][~dead])
    np.testing.assert_array_equal(new_p["W_enc"][:, ~dead], old_p["W_enc"][:, ~dead])
    assert not np.allclose(new_p["W_dec"][dead], old_p["W_dec"][dead])
    np.testing.assert_array_equal(new_p["b_enc"][dead], 0.0)
    np.testing.assert_allclose(np.linalg.norm(new_p["W_dec"][dead], axis=1), 1.0, rtol=1e-5)
    # encoder columns point the same way as the new decoder rows
    cos = np.sum(np.asarray(new_p["W_enc"][:, dead]).T * np.asarray(new_p["W_dec"][dead]), axis=1)
    np.testing.assert_allclose(cos / np.linalg.norm(new_p["W_enc"][:, dead], axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(new.steps_since_fired[dead], 0)
    adam = [s for s in jax.tree.leaves(new.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]
    old_adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState)][0]
    np.testing.assert_array_equal(adam.mu["W_dec"][dead], 0.0)
    np.testing.assert_array_equal(adam.nu["W_enc"][:, dead], 0.0)
    np.testing.assert_array_equal(adam.mu["W_dec"][~dead], old_adam.mu["W_dec"][~dead])


def _plain_and_library_dots(step, state, batch):
    """(dots XLA runs itself, e.g. with Eigen; YNNPACK fusions that hold a dot) in the compiled step."""
    hlo = step.lower(state, batch).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    fused = {name for name, body in re.findall(r"^(%\S+) \([^\n]*\{\n(.*?)\n\}", hlo, flags=re.S | re.M)
             if " dot(" in body}
    plain = len(re.findall(r" dot\(", entry))
    ynn = sum(1 for line in entry.splitlines() if "__ynn_fusion" in line and any(f"calls={n}," in line for n in fused))
    return plain, ynn


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA-CPU's choice of dot library")
def test_dense_steps_run_their_dots_in_eigen_and_sparse_topk_keeps_xla_default(monkeypatch):
    """`make_train_step` attaches the XLA options `jit_train_step` compiles with: a dense float32
    step's dots leave YNNPACK (measured faster in Eigen on the benchmark CPU), a sparse TopK step and a
    bfloat16 step (YNNPACK has the bf16 kernels) keep XLA's default, SAEJAX_CPU_DOTS overrides both
    ways and rejects other values."""
    from saejax import step as step_lib
    from saejax.kernels import cpu

    monkeypatch.delenv(cpu.CPU_DOTS_ENV, raising=False)
    relu, loss, optimizer, state = _setup("relu")
    step = step_lib.make_train_step(relu, loss, optimizer)
    assert step.compiler_options == cpu.EIGEN_DOTS
    plain, ynn = _plain_and_library_dots(step_lib.jit_train_step(step), state, _data())
    assert plain >= 4 and ynn == 0, (plain, ynn)
    default_plain, default_ynn = _plain_and_library_dots(step_lib.jit_train_step(step, {}), state, _data())
    assert default_ynn >= 3, (default_plain, default_ynn)  # XLA's default: YNNPACK takes the forward dots

    topk = make_sae("topk", D_IN, 512, k=4, sparse=True)
    topk_loss = losses.chain(losses.mse())
    assert step_lib.make_train_step(topk, topk_loss, optimizer).compiler_options == {}
    relu_bf16 = make_sae("relu", D_IN, 512, dtype="bfloat16")
    assert step_lib.make_train_step(relu_bf16, loss, optimizer).compiler_options == {}
    monkeypatch.setenv(cpu.CPU_DOTS_ENV, "eigen")
    assert step_lib.make_train_step(relu_bf16, loss, optimizer).compiler_options == cpu.EIGEN_DOTS
    assert step_lib.make_train_step(topk, topk_loss, optimizer).compiler_options == cpu.EIGEN_DOTS
    monkeypatch.setenv(cpu.CPU_DOTS_ENV, "ynnpack")
    assert step_lib.make_train_step(relu, loss, optimizer).compiler_options == {}
    monkeypatch.setenv(cpu.CPU_DOTS_ENV, "mkl")
    with pytest.raises(ValueError, match="SAEJAX_CPU_DOTS='mkl'"):
        step_lib.make_train_step(relu, loss, optimizer)


def test_schedule_free_training_evaluates_the_averaged_params_and_keeps_buffers():
    c = base_config()
    c.sae.arch, c.optim.name, c.optim.lr, c.optim.schedule_free_momentum = "batchtopk", "sign_sgd", 1e-2, 0.9
    sae = make_sae("batchtopk", D_IN, D_SAE, k=4)
    optimizer = optimizers.optimizer_from_config(c.optim, c.train, sae)
    loss = losses.chain(losses.mse())
    state = step_lib.init_train_state(sae, loss, optimizer, jax.random.key(0), _data(512))
    assert step_lib.schedule_free_state(state.opt_state) is not None
    step = step_lib.jit_train_step(step_lib.make_train_step(sae, loss, optimizer))
    for i in range(5):
        state, _ = step(state, jnp.asarray(_data(256, seed=i + 2)))
    free = step_lib.schedule_free_state(state.opt_state)
    averaged = step_lib.eval_params(sae, state)
    np.testing.assert_allclose(averaged["W_enc"], (state.params["W_enc"] - 0.1 * free.z["W_enc"]) / 0.9,
                               rtol=1e-5, atol=1e-8)  # float32 rounding where y and (1 - b1) z nearly cancel
    assert not np.allclose(averaged["W_enc"], state.params["W_enc"])
    assert float(averaged["threshold"]) == float(state.params["threshold"]) > 0  # a buffer: as trained
    plain = optimizers.optimizer_from_config(base_config().optim, c.train, sae)
    plain_state = step_lib.init_train_state(sae, loss, plain, jax.random.key(0), _data(512))
    assert step_lib.eval_params(sae, plain_state) is plain_state.params
    c.optim.schedule_free_momentum = 1.5
    with pytest.raises(ConfigError, match="optim.schedule_free_momentum=1.5"):
        optimizers.optimizer_from_config(c.optim, c.train, sae)


@pytest.mark.parametrize("bad", [None, np.nan, np.inf])
def test_all_finite_reads_host_arrays_like_the_jitted_reduction(bad):
    tree = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4, jnp.bfloat16), "count": jnp.arange(3), "host": np.ones(2)}
    if bad is not None:
        tree["w"] = tree["w"].at[1, 2].set(bad)
    expected = bad is None
    assert step_lib.all_finite(tree) is expected
    assert bool(step_lib._all_finite(tree)) is expected  # the path for arrays outside this process's CPU memory


def test_evaluation_of_a_padded_last_batch_counts_only_its_rows():
    sae = make_sae("topk", d_in=8, d_sae=32, k=4)
    params = sae.init(jax.random.key(0))
    rows = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    scale = jnp.float32(1.0)
    exact = [heldout.evaluation_sums(sae, params, scale, rows[:32]), heldout.evaluation_sums(sae, params, scale, rows[32:])]
    padded_last = np.concatenate([rows[32:], np.full((14, 8), 7.0, np.float32)])  # 18 real rows + 14 of padding
    padded = [heldout.evaluation_sums(sae, params, scale, rows[:32], jnp.int32(32)),
              heldout.evaluation_sums(sae, params, scale, padded_last, jnp.int32(18))]
    (want, want_density), (got, got_density) = (heldout.combine_evaluation(jax.device_get(s)) for s in (exact, padded))
    assert got["rows"] == 50
    assert got == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(got_density, want_density)


@pytest.mark.parametrize("arch,options", [(arch, {}) for arch in ARCHITECTURES] + [("topk", {"sparse": True})])
def test_evaluation_measures_what_encode_then_decode_gives(arch, options):
    sae = make_sae(arch, d_in=8, d_sae=32, k=4, **options)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape, p.dtype),
                          sae.init(jax.random.key(0)))
    rows = jnp.asarray(np.random.default_rng(0).standard_normal((40, 8)), jnp.float32)
    sums = jax.device_get(jax.jit(lambda p, x: heldout.evaluation_sums(sae, p, jnp.float32(1.0), x))(params, rows))
    z = sae.encode(params, rows)
    x_hat = sae.decode(params, z)
    np.testing.assert_allclose(sums["sq_err"], float(jnp.sum(jnp.square(rows - x_hat))), rtol=1e-5)
    np.testing.assert_array_equal(sums["fired"], np.count_nonzero(np.asarray(z), axis=0))
    assert sums["l0"] == np.count_nonzero(np.asarray(z))
