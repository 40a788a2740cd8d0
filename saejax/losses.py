"""Penalties written as loss transforms, in the style of optax's gradient transformations.

A term is a `LossTerm(init, apply)` of pure functions:

    init(sae) -> state
    apply(params, x, out, state, step) -> (terms: dict[str, scalar], new_state)

where x [B, d_in] is the (normalised) input batch and out the SAE's `SAEOutput`. When the
reconstruction's target is not the input (an architecture with d_out != d_in, fed batches of
(inputs, targets)), terms are also given ``target=`` [B, d_out]: the reconstruction terms (`mse`,
`matryoshka_mse`, `auxk`'s residual) measure against it, the others ignore it; `chain` passes it
on only when there is one, so terms written without a `target` argument work for every SAE. `chain(*terms)`
combines terms into one; the loss is the sum of the returned dict's values, and the dict doubles
as metrics. Each coefficient is a constant >= 0 or an optax schedule of the step (warm-ups).
Stateful terms (KL's running mean) carry their state exactly like optimizer state. Terms that ask
which latents are dead (AuxK, the dead-only pre-activation loss) read the train state's one counter,
which the train step hands them as ``out.aux["steps_since_fired"]`` (`dead_counter`); resampling
resets it, so every user sees the same dead latents. A new penalty is one new function returning a
LossTerm, no edit elsewhere:

    loss = chain(mse(), l1(optax.linear_schedule(0.0, 5.0, 1000)))
    state = loss.init(sae)
    terms, state = loss.apply(params, x, sae.forward(params, x), state, step)
    total = sum(terms.values())

Reductions: per-row sums over d_in or d_sae, then the mean over the batch (as SAELens and the
literature write ||x - x̂||² + λ Σ_i |z_i|).
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from saejax import activations, batch_axis, defaults, latent_axis, metrics
from saejax.sae import linear, registry
from saejax.errors import ConfigError

Coefficient = float | Callable[[jax.Array], jax.Array]


class LossTerm(NamedTuple):
    """A penalty as a pair of pure functions (see module docstring)."""

    init: Callable[[Any], Any]
    apply: Callable[..., tuple[dict[str, jax.Array], Any]]


def as_schedule(coeff: Coefficient, name: str) -> optax.Schedule:
    """A constant >= 0 becomes a constant schedule; a callable is taken as a schedule of the step."""
    if callable(coeff):
        return coeff
    if not math.isfinite(coeff) or coeff < 0:
        raise ConfigError(f"loss coefficient {name}={coeff} must be a finite number >= 0")
    return optax.constant_schedule(float(coeff))


def stateless(term_fn: Callable[..., dict[str, jax.Array]]) -> LossTerm:
    """A LossTerm from a function (params, x, out, step) -> terms, with no state (it ignores `target`)."""

    def apply(params, x, out, state, step, target=None):
        return term_fn(params, x, out, step), state

    return LossTerm(lambda sae: (), apply)


def reconstruction_term(term_fn: Callable[..., dict[str, jax.Array]]) -> LossTerm:
    """A stateless LossTerm from a function (y, out, step) -> terms of the reconstruction target y
    [B, d_out]: the batch's `target` when it has one, else the input x."""

    def apply(params, x, out, state, step, target=None):
        return term_fn(x if target is None else target, out, step), state

    return LossTerm(lambda sae: (), apply)


def chain(*terms: LossTerm) -> LossTerm:
    """One LossTerm applying each of `terms`; their dicts are merged (names must not collide)."""

    def init(sae):
        return tuple(term.init(sae) for term in terms)

    def apply(params, x, out, state, step, target=None):
        given = {} if target is None else {"target": target}
        merged, new_state = {}, []
        for term, term_state in zip(terms, state):
            values, term_state = term.apply(params, x, out, term_state, step, **given)
            clash = merged.keys() & values.keys()
            if clash:
                raise ConfigError(f"two loss terms both produce {sorted(clash)}; each name may appear once")
            merged.update(values)
            new_state.append(term_state)
        return merged, tuple(new_state)

    return LossTerm(init, apply)


def total(terms: dict[str, jax.Array]) -> jax.Array:
    """The loss: the sum of all terms."""
    return sum(terms.values(), jnp.zeros((), jnp.float32))


def squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Mean over the batch of the per-row squared error ||x - x̂||². [B, d], [B, d] -> []."""
    return batch_axis.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))


def decoder_norms(params) -> jax.Array:
    """||W_dec[i]|| for every latent. -> [d_sae]"""
    return jnp.linalg.norm(params["W_dec"], axis=-1)


def dead_counter(out, term: str) -> jax.Array:
    """The steps since each latent last fired [d_sae] int32, as the train step hands it to the loss
    terms (``out.aux["steps_since_fired"]``, the train state's counter before this batch)."""
    if "steps_since_fired" not in out.aux:
        raise ConfigError(f"{term} reads the dead-latent counter out.aux['steps_since_fired'] [d_sae], which "
                          "saejax.train's step adds; called on its own, add it to the SAEOutput's aux")
    return out.aux["steps_since_fired"]


# ---------------------------------------------------------------------------------------------
# Reconstruction.


def mse(coeff: Coefficient = 1.0, normalized: bool = False) -> LossTerm:
    """Reconstruction: mean_b ||x - x̂||², or normalised by the batch's variance around its mean
    (Σ||x - x̂||² / Σ||x - mean(x)||², i.e. the fraction of variance unexplained). x: the target
    (`reconstruction_term`)."""
    schedule = as_schedule(coeff, "loss.mse")

    def term(x, out, step):
        err = metrics.fvu(x, out.x_hat) if normalized else squared_error(x, out.x_hat)
        return {"mse": schedule(step) * err}

    return reconstruction_term(term)


def matryoshka_mse(coeff: Coefficient = 1.0) -> LossTerm:
    """Matryoshka SAEs (Bussmann et al. 2025): Σ over nested prefixes m of ||x - x̂_{1:m}||²,
    each x̂_{1:m} decoded from latents [0, m) only (the SAE's aux["prefix_x_hats"])."""
    schedule = as_schedule(coeff, "loss.mse")

    def term(x, out, step):
        errors = [squared_error(x, x_hat) for x_hat in out.aux["prefix_x_hats"]]
        return {"mse": schedule(step) * sum(errors)}

    return reconstruction_term(term)


# ---------------------------------------------------------------------------------------------
# Sparsity penalties.


def l1(coeff: Coefficient, decoder_weighted: bool = False) -> LossTerm:
    """λ · mean_b Σ_i |z_i| (decoder_weighted: |z_i| · ||W_dec[i]||, Anthropic's April 2024 update)."""
    schedule = as_schedule(coeff, "loss.l1")

    def term(params, x, out, step):
        weighted = jnp.abs(out.z) * decoder_norms(params) if decoder_weighted else jnp.abs(out.z)
        return {"l1": schedule(step) * batch_axis.mean(jnp.sum(weighted, axis=-1))}

    return stateless(term)


def tanh_penalty(coeff: Coefficient, scale: float = 1.0) -> LossTerm:
    """λ · mean_b Σ_i tanh(scale · |z_i| · ||W_dec[i]||): a saturating L0 proxy (Anthropic, Feb 2024)."""
    schedule = as_schedule(coeff, "loss.tanh")

    def term(params, x, out, step):
        scaled = scale * jnp.abs(out.z) * decoder_norms(params)
        return {"tanh": schedule(step) * batch_axis.mean(jnp.sum(jnp.tanh(scaled), axis=-1))}

    return stateless(term)


def bernoulli_kl(rho: float, rho_hat: jax.Array) -> jax.Array:
    """KL(Bernoulli(ρ) || Bernoulli(ρ̂)) elementwise; zero where ρ̂ = ρ."""
    return rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat))


def kl_sparsity(coeff: Coefficient, rho: float = 0.05, ema_decay: float = 0.0, eps: float = 1e-6) -> LossTerm:
    """The classic average-activation penalty (Ng's sparse autoencoder): λ Σ_i KL(ρ || ρ̂_i).

    ρ̂_i is latent i's mean activation, by default over the current batch (ema_decay = 0, the exact
    gradient of the batch objective). With ema_decay in (0, 1) it is a running mean
    ρ̂ = decay · ρ̂_prev + (1 - decay) · mean_batch(z_i) over a window of about 1/(1 - decay) steps,
    whose gradient flows through the batch part only. KL needs ρ̂ in (0, 1), as for the sigmoid
    units of the original formulation: for unbounded (ReLU) latents ρ̂ is clipped to [eps, 1 - eps].
    """
    schedule = as_schedule(coeff, "loss.kl")
    if not 0 < rho < 1:
        raise ConfigError(f"loss.rho={rho} must be in (0, 1)")
    if not 0 <= ema_decay < 1:
        raise ConfigError(f"loss.kl_ema={ema_decay} must be in [0, 1)")

    def init(sae):
        return jnp.full((sae.d_sae,), rho, jnp.float32)

    def apply(params, x, out, running_mean, step, target=None):
        rho_hat = batch_axis.mean(out.z, axis=0)
        if ema_decay:
            rho_hat = ema_decay * running_mean + (1 - ema_decay) * rho_hat
        kl = jnp.sum(bernoulli_kl(rho, jnp.clip(rho_hat, eps, 1 - eps)))
        return {"kl": schedule(step) * kl}, jax.lax.stop_gradient(rho_hat)

    return LossTerm(init, apply)


def l0_estimate(params, out, bandwidth: float) -> jax.Array:
    """mean_b Σ_i H(pre_i - θ_i) with the step STE: the L0 norm, differentiable in θ."""
    return batch_axis.mean(jnp.sum(activations.step(out.pre_acts, params["threshold"], bandwidth), axis=-1))


def jumprelu_l0(coeff: Coefficient, bandwidth: float) -> LossTerm:
    """λ · L0 for JumpReLU SAEs (Rajamanoharan et al. 2024): gradient reaches θ through the STE."""
    schedule = as_schedule(coeff, "loss.l0")

    def term(params, x, out, step):
        return {"l0": schedule(step) * l0_estimate(params, out, bandwidth)}

    return stateless(term)


def target_l0(coeff: Coefficient, target: float, bandwidth: float) -> LossTerm:
    """λ · d_in · (L0 / target - 1)², L0 the batch's mean: steers a JumpReLU SAE towards a chosen
    L0 instead of trading off (Gemma Scope 2's target-L0 penalty, on the batch mean rather than
    on each row). d_in is the scale of the summed squared error on rows normalised to
    E||x||² = d_in, so that one λ keeps L0 near its target at every width: λ = 1 held a MiniLM
    SAE (d_in 384) within 2 % of it (BUILD_NOTES.md)."""
    schedule = as_schedule(coeff, "loss.target_l0_coeff")
    if target <= 0:
        raise ConfigError(f"loss.target_l0={target} must be > 0")

    def term(params, x, out, step):
        miss = l0_estimate(params, out, bandwidth) / target - 1
        return {"target_l0": schedule(step) * x.shape[-1] * jnp.square(miss)}

    return stateless(term)


def pre_act(coeff: Coefficient, dead_steps: int = 0, dead_only: bool = False) -> LossTerm:
    """Anthropic's pre-activation loss for JumpReLU SAEs (Conerly et al. 2025):
    λ · mean_b Σ_i w_i · ReLU(θ_i - pre_i) · ||W_dec[i]||, over every latent (w_i = 1, Anthropic's
    form) or, with `dead_only` (SAELens' form), over the latents silent for `dead_steps` steps
    (w_i = dead_i). It raises pre-activations towards their thresholds, so a latent pushed below
    its threshold for all rows (no reconstruction or straight-through gradient) comes back.
    No state; the dead-only form reads the train step's counter (`dead_counter`)."""
    schedule = as_schedule(coeff, "loss.pre_act")
    if dead_only and dead_steps <= 0:
        raise ConfigError(f"loss.dead_steps={dead_steps} must be > 0")

    def term(params, x, out, step):
        weight = decoder_norms(params)  # [d_sae]
        if dead_only:
            weight = jnp.where(dead_counter(out, "loss.pre_act_dead_only") >= dead_steps, weight, 0.0)
        gap = jax.nn.relu(params["threshold"] - out.pre_acts)  # [B, d_sae]
        return {"pre_act": schedule(step) * batch_axis.mean(jnp.sum(gap * weight, axis=-1))}

    return stateless(term)


def gated_sparsity(coeff: Coefficient) -> LossTerm:
    """Gated SAE penalties (Rajamanoharan et al. 2024): λ · Σ_i ReLU(π_gate,i) · ||W_dec[i]|| plus the
    auxiliary loss ||x - (ReLU(π_gate) @ sg(W_dec) + sg(b_dec))||² that trains the gate to reconstruct
    through a frozen decoder."""
    schedule = as_schedule(coeff, "loss.l1")

    def term(params, x, out, step):
        gate = jax.nn.relu(out.aux["gate_pre"])
        l1_gate = batch_axis.mean(jnp.sum(gate * decoder_norms(params), axis=-1))
        frozen = jax.lax.stop_gradient(params)
        x_hat_gate = gate @ frozen["W_dec"] + frozen["b_dec"]
        return {"l1": schedule(step) * l1_gate, "gated_aux": squared_error(x, x_hat_gate)}

    return stateless(term)


def activation_balance(coeff: Coefficient) -> LossTerm:
    """Load balancing across latents (Switch Transformer style): λ · (d_sae · Σ_i f_i p_i - 1), where
    f_i = latent i's share of all firings in the batch (no gradient) and p_i = its mean share of each
    row's activation mass. It is 0 when every latent carries the same load and grows as usage
    concentrates on few latents (rows with no active latent shift it down, which leaves its
    gradient unchanged); the gradient shifts mass away from over-used latents."""
    schedule = as_schedule(coeff, "loss.balance")

    def term(params, x, out, step):
        d_sae = out.z.shape[-1]
        fires = jax.lax.stop_gradient(metrics.feature_density(out.z))
        fires = fires / (jnp.sum(fires) + 1e-12)
        mass = jnp.abs(out.z)
        share = batch_axis.mean(mass / (jnp.sum(mass, axis=-1, keepdims=True) + 1e-12), axis=0)
        return {"balance": schedule(step) * (d_sae * jnp.sum(fires * share) - 1.0)}

    return stateless(term)


# AuxK encodes only the dead latents, gathered into a sub-dictionary of the smallest of these
# capacities (fractions of d_sae, none under AUXK_MIN_CAPACITY latents; d_sae itself always) that
# holds them all. See `auxk`.
AUXK_CAPACITY_FRACTIONS = (1 / 16, 1 / 4, 1 / 2)
AUXK_MIN_CAPACITY = 512  # smaller dictionaries run AuxK whole: cheap, and one branch less to compile


def auxk_capacities(d_sae: int) -> tuple[int, ...]:
    """The sub-dictionary sizes AuxK can take, ascending; the last is d_sae (every latent)."""
    if latent_axis.sharded_mesh() is not None:  # a gather across the latent shards undoes the split
        return (d_sae,)
    smaller = {int(d_sae * f) for f in AUXK_CAPACITY_FRACTIONS}
    return tuple(sorted(c for c in smaller if AUXK_MIN_CAPACITY <= c < d_sae)) + (d_sae,)


def switch_with_gradient(index: jax.Array, branches, params, *data) -> jax.Array:
    """``lax.switch(index, branches, params, *data)`` for scalar-valued branches, differentiable in
    params only (data gets no gradient). The branch taken computes its value and its params gradient
    together (``jax.value_and_grad``), so a step pays for that branch alone. Differentiating a plain
    `lax.switch` instead makes every branch also return the union of all branches' residuals: a
    skipped AuxK then still filled [B, d_sae] arrays of zeros on every step."""

    @jax.custom_vjp
    def switch(index, params, *data):
        return jax.lax.switch(index, branches, params, *data)

    def forward(index, params, *data):
        return jax.lax.switch(index, [jax.value_and_grad(b) for b in branches], params, *data)

    def backward(grads, g):
        return (None, jax.tree.map(lambda d: g * d, grads)) + (None,) * len(data)

    switch.defvjp(forward, backward)
    return switch(index, params, *data)


def auxk(coeff: Coefficient, k_aux: int, dead_steps: int, pre_acts_of=None) -> LossTerm:
    """AuxK (Gao et al. 2024): the k_aux largest pre-activations among dead latents (silent for
    `dead_steps` steps) reconstruct the main reconstruction's residual e = x - x̂:
    λ · mean_b ||e - ê||² · min(1, n_dead / k), k = min(k_aux, d_sae), zero when no latent is dead.

    Cost follows the number of dead latents: the term gathers them (padded to the smallest of
    `auxk_capacities(d_sae)` that holds them) into a sub-dictionary and encodes, selects and decodes
    over it alone, [B, d_in] x [d_in, n] instead of [B, d_in] x [d_in, d_sae]; with none dead it
    computes nothing. It never reads `SAEOutput.pre_acts`, so it works the same for dense and sparse
    TopK SAEs.
    pre_acts_of: the SAE's `pre_acts_of` (params, x, latents [n] or None) -> [B, n]; default: a
    linear encoder's (x - b_dec) @ W_enc[:, latents] + b_enc[latents] in float32.
    No state: the dead latents come from the train step's counter (`dead_counter`)."""
    schedule = as_schedule(coeff, "loss.auxk")
    if k_aux <= 0 or dead_steps <= 0:
        raise ConfigError(f"loss.auxk_k={k_aux} and loss.dead_steps={dead_steps} must be > 0")
    encode = pre_acts_of or functools.partial(linear.linear_pre_acts_of, dtype="float32")

    def init(sae):
        return ()

    def dead_latents_loss(capacity):
        """The AuxK loss over a sub-dictionary of `capacity` latents holding every dead one."""

        def loss(params, x, residual, dead):
            d_sae, n_dead = dead.shape[0], jnp.sum(dead)
            if capacity == d_sae:  # no gather: mask the live latents instead
                latents, usable = None, dead
            else:
                # the dead latents in index order, then live ones as padding (masked out below); a
                # TopK over the [d_sae] mask compiles far quicker than jnp.nonzero's cumsum and scatter
                latents = jax.lax.top_k(dead.astype(jnp.float32), capacity)[1]
                usable = jnp.arange(capacity) < n_dead
            pre = jnp.where(usable, encode(params, x, latents), -jnp.inf)
            z_aux = activations.topk(pre, min(k_aux, capacity))
            z_aux = jnp.where(jnp.isfinite(z_aux), z_aux, 0.0)
            w_dec = params["W_dec"] if latents is None else params["W_dec"][latents]
            scale = jnp.minimum(1.0, n_dead / min(k_aux, d_sae))
            return scale * squared_error(residual, z_aux @ w_dec)

        return loss

    def apply(params, x, out, state, step, target=None):
        if pre_acts_of is None and "b_enc" not in params:
            raise ConfigError("AuxK's default encoder is linear (W_enc, b_enc); build the term with "
                              "pre_acts_of=sae.pre_acts_of for this SAE (loss_from_config does)")
        dead = dead_counter(out, "loss.auxk") >= dead_steps
        capacities = auxk_capacities(dead.shape[0])
        n_dead = jnp.sum(dead)
        branch = jnp.where(n_dead == 0, 0, 1 + jnp.searchsorted(jnp.asarray(capacities), n_dead))
        branches = [lambda *_: jnp.zeros((), jnp.float32)] + [dead_latents_loss(c) for c in capacities]
        residual = jax.lax.stop_gradient((x if target is None else target) - out.x_hat)
        loss = switch_with_gradient(branch, branches, params, x, residual, dead)
        return {"auxk": schedule(step) * loss}, state

    return LossTerm(init, apply)


# ---------------------------------------------------------------------------------------------
# The loss a run's config asks for.


# The reconstruction term an architecture's spec names: (coeff, normalized) -> LossTerm.
RECONSTRUCTION_TERMS = {
    "mse": mse,
    "matryoshka_mse": lambda coeff, normalized: matryoshka_mse(coeff),
}


def _linear_warmup(coeff: float, warmup_steps: int, name: str) -> Coefficient:
    as_schedule(coeff, name)  # validates
    if warmup_steps > 0:
        return optax.linear_schedule(0.0, coeff, warmup_steps)
    return coeff


def _with(capability: str) -> str:
    """'sae.arch=NAME' (or 'one of sae.arch=A, B') for the registered architectures whose spec has `capability`."""
    having = [name for name in registry.names() if getattr(registry.get(name), capability)]
    return f"sae.arch={having[0]!r}" if len(having) == 1 else f"one of sae.arch={', '.join(map(repr, having))}"


def _dead_steps(loss_config) -> int:
    """loss.dead_steps, which `saejax.defaults.resolve` derives; a ConfigError when it is unset."""
    if loss_config.dead_steps is None:
        raise ConfigError("loss.dead_steps is unset; saejax.defaults.resolve(config) sets it from "
                          "loss.dead_tokens and train.batch_size")
    return loss_config.dead_steps


def loss_from_config(loss_config, sae) -> LossTerm:
    """The chain of terms the `loss` section of a run's config describes, checked against the SAE
    (what its architecture's spec, `saejax.sae.registry`, says it has)."""
    c = loss_config
    arch, spec = sae.arch, sae.spec
    reconstruction = RECONSTRUCTION_TERMS[spec.reconstruction]
    terms: list[LossTerm] = [reconstruction(c.mse, c.normalized_mse)]
    l1_coeff = _linear_warmup(c.l1, c.l1_warmup_steps, "loss.l1")
    if spec.l1_term == "gated_sparsity":
        terms.append(gated_sparsity(l1_coeff))
    elif c.l1:
        weighted = defaults.l1_decoder_weighted(arch, c.l1_decoder_weighted)
        if weighted and not spec.has_linear_decoder:
            raise ConfigError(f"loss.l1_decoder_weighted=True needs a linear decoder; sae.arch={arch!r} has none")
        terms.append(l1(l1_coeff, weighted))
    if c.tanh:
        if not spec.has_linear_decoder:
            raise ConfigError(f"loss.tanh weights latents by decoder norms; sae.arch={arch!r} has no linear decoder")
        terms.append(tanh_penalty(c.tanh, c.tanh_scale))
    if c.kl:
        terms.append(kl_sparsity(c.kl, c.rho, c.kl_ema))
    if c.l0 or c.target_l0:
        if not spec.learned_thresholds:
            raise ConfigError(f"loss.l0 / loss.target_l0 need {_with('learned_thresholds')}, got {arch!r}")
        bandwidth = sae.hparams["bandwidth"]
        if c.l0:
            terms.append(jumprelu_l0(c.l0, bandwidth))
        if c.target_l0:
            terms.append(target_l0(c.target_l0_coeff, c.target_l0, bandwidth))
    pre_act_coeff = defaults.pre_act_coeff(arch, c.get("pre_act"))
    if pre_act_coeff:
        if not spec.learned_thresholds:
            raise ConfigError(f"loss.pre_act needs {_with('learned_thresholds')} (its thresholds), got {arch!r}")
        dead_only = c.get("pre_act_dead_only", False)
        terms.append(pre_act(pre_act_coeff, _dead_steps(c) if dead_only else 0, dead_only))
    auxk_coeff = defaults.auxk_coeff(arch, c.auxk)
    if auxk_coeff:
        if not spec.has_linear_decoder:
            raise ConfigError(f"loss.auxk decodes through W_dec; sae.arch={arch!r} has none")
        as_schedule(auxk_coeff, "loss.auxk")  # a bad coefficient is named before anything else
        terms.append(auxk(auxk_coeff, c.auxk_k or max(1, sae.d_in // 2), _dead_steps(c), sae.pre_acts_of))
    if c.balance:
        terms.append(activation_balance(c.balance))
    for field in ("mse", "l1", "tanh", "kl", "l0", "balance", "target_l0_coeff"):
        as_schedule(c[field], f"loss.{field}")
    as_schedule(auxk_coeff, "loss.auxk")
    as_schedule(pre_act_coeff, "loss.pre_act")
    return chain(*terms)
