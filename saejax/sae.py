"""SAE architectures: parameter init plus pure encode/decode functions over a params dict.

Params are a plain dict, named and oriented like SAELens:

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    threshold [d_sae] (jumprelu) or [] (batchtopk, matryoshka: the learned inference threshold)
    b_gate, b_mag, r_mag [d_sae] (gated, which has no b_enc)

Tied SAEs have no W_enc (W_enc = W_dec.T). The deep `mlp` SAE keeps its Flax MLP params under
"encoder" / "decoder" beside b_dec. Every encoder subtracts b_dec from its input first.

An `SAE` is a NamedTuple of pure functions built by `make_sae`; nothing is hidden in objects:

    sae = make_sae("topk", d_in=512, d_sae=8192, k=32)
    params = sae.init(jax.random.key(0))
    out = sae.forward(params, x)              # SAEOutput(x_hat, z, pre_acts, aux)
    z = sae.encode(params, x)                 # inference latents [B, d_sae]
    x_hat = sae.decode(params, z)             # [B, d_in]

Sparse TopK (``make_sae("topk", ..., sparse=True)``, chosen by default when d_sae ≥ SPARSE_MIN_RATIO·k):
the training forward decodes from the k selected rows of W_dec by gather instead of a dense
[B, d_sae] x [d_sae, d_in] matmul, and the backward touches only the selected latents' rows of W_dec
and columns of W_enc (scatter-adds), so only the encoder's forward matmul stays dense, and it runs
over chunks of rows that are selected from as they are made (`linear_top_k`). Loss and gradients
equal the dense path's up to float rounding (tests/test_sparse_topk.py). Its `pre_acts` carry no
gradient and are computed only where something reads them. With ``screen`` (chosen by default on CPUs
with bf16 dot instructions at d_sae ≥ screening.MIN_WIDTH_PER_K·k, for batches of screening.MIN_ROWS
rows and more) the encoder product is screened in bfloat16 and the selection certified to be
float32's (`saejax.screening`).

`sae.pre_acts_of(params, x, latents)` computes the pre-activations of a subset of the latents only,
with their gradient: AuxK encodes just the dead latents with it (`saejax.losses.auxk`).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from saejax import activations, defaults, latent_axis, layout, screening, selection
from saejax.errors import ConfigError, DataError

Params = dict[str, Any]

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka", "mlp")
# sparse="auto" picks the sparse TopK path when d_sae >= SPARSE_MIN_RATIO * k: on this project's CPU it
# is 1.36x faster than the dense step at 64 * k and slower at 32 * k (`python -m benchmarks.topk_crossover`).
SPARSE_MIN_RATIO = 64
TIEABLE = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
# The running mean of BatchTopK's smallest selected activation becomes an EMA after this many steps.
THRESHOLD_WINDOW = 100


class SAEOutput(NamedTuple):
    """What a forward pass returns; loss transforms read it.

    x_hat: [B, d_in] reconstruction.  z: [B, d_sae] latents.
    pre_acts: [B, d_sae] encoder pre-activations (gated: the magnitude path).
    aux: architecture extras: gated "gate_pre" [B, d_sae]; batchtopk/matryoshka "min_selected" [];
      matryoshka "prefix_x_hats" (one [B, d_in] reconstruction per nested prefix); sparse topk
      "values" [B, k] (the ReLU'd selected activations) and "indices" [B, k] int32.
    """

    x_hat: jax.Array
    z: jax.Array
    pre_acts: jax.Array
    aux: dict


class SAE(NamedTuple):
    """An architecture as pure functions over a params dict (see module docstring).

    init(key) -> params.  forward(params, x [B, d_in], train=True) -> SAEOutput.
    encode(params, x) -> z [B, d_sae] (inference mode).  decode(params, z) -> x_hat [B, d_in].
    latent_axes: for each param key, the axis indexing latents (None: no latent axis).
    buffers: param keys not trained by the optimizer but set by update_buffers(params, out, step).
    hparams: the options the SAE was built with (k, bandwidth, prefixes, sparse, ...).
    pre_acts_of: (params, x [B, d_in], latents [n] int or None) -> the pre-activations
      (`SAEOutput.pre_acts`) of those latents only, [B, n] (None: all, [B, d_sae]), differentiable
      in params; None for the mlp SAE.
    """

    arch: str
    d_in: int
    d_sae: int
    hparams: Mapping[str, Any]
    init: Callable[[jax.Array], Params]
    forward: Callable[..., SAEOutput]
    encode: Callable[[Params, jax.Array], jax.Array]
    decode: Callable[[Params, jax.Array], jax.Array]
    latent_axes: Mapping[str, int | None]
    buffers: tuple[str, ...]
    update_buffers: Callable[[Params, SAEOutput, jax.Array], Params]
    pre_acts_of: Callable[..., jax.Array] | None = None


# ---------------------------------------------------------------------------------------------
# Linear building blocks.


def matmul(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
    """a @ b computed in `dtype` with float32 accumulation and a float32 result."""
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def centered_matmul(x: jax.Array, b: jax.Array, w: jax.Array, dtype: str) -> jax.Array:
    """(x - b) @ w: [B, d], [d], [d, F] -> [B, F] float32.

    Its gradient for b is -w @ (Σ_batch g), a [d, F]x[F] product, where autodiff would form the
    [B, F]x[F, d] product g @ wᵀ and then sum it: this saves a fifth of a dense SAE step's FLOPs.
    The x cotangent (unused for data) is dead code that XLA removes under jit.
    """
    return matmul(x - b, w, dtype)


def _centered_matmul_fwd(x, b, w, dtype):
    centered = x - b
    return matmul(centered, w, dtype), (centered, w)


def _centered_matmul_bwd(dtype, residuals, g):
    centered, w = residuals
    d_centered = matmul(g, w.T, dtype)
    d_b = -matmul(w, g.sum(0), "float32")  # [d, F] x [F]: no transposed copy of w
    d_w = matmul(centered.T, g, dtype)
    return d_centered.astype(centered.dtype), d_b.astype(centered.dtype), d_w


centered_matmul.defvjp(_centered_matmul_fwd, _centered_matmul_bwd)


def encoder_weight(params: Params) -> jax.Array:
    """W_enc [d_in, d_sae], or W_dec.T for a tied SAE."""
    return params["W_enc"] if "W_enc" in params else params["W_dec"].T


def linear_pre_acts(params: Params, x: jax.Array, dtype: str) -> jax.Array:
    """(x - b_dec) @ W_enc, without any encoder bias. [B, d_in] -> [B, d_sae]."""
    return centered_matmul(x, params["b_dec"], encoder_weight(params), dtype)


def linear_pre_acts_of(params: Params, x: jax.Array, latents: jax.Array | None, dtype: str) -> jax.Array:
    """(x - b_dec) @ W_enc[:, latents] + b_enc[latents]: [B, d_in], latents [n] -> [B, n] (None: all).
    Gathering n columns first costs B·d_in·n multiply-adds instead of B·d_in·d_sae."""
    if latents is None:
        return linear_pre_acts(params, x, dtype) + params["b_enc"]
    w = params["W_enc"][:, latents] if "W_enc" in params else params["W_dec"][latents].T
    return centered_matmul(x, params["b_dec"], w, dtype) + params["b_enc"][latents]


def gated_magnitude(params: Params, shared: jax.Array, latents=slice(None)) -> jax.Array:
    """The gated SAE's magnitude path from the shared (x - b_dec) @ W_enc[:, latents] [B, n]:
    rescaled by exp(r_mag) and shifted by b_mag, per latent. -> [B, n]"""
    return shared * jnp.exp(params["r_mag"][latents]) + params["b_mag"][latents]


def gated_pre_acts_of(params: Params, x: jax.Array, latents: jax.Array | None, dtype: str) -> jax.Array:
    """The gated SAE's magnitude pre-activations of `latents` [n] (None: all): [B, d_in] -> [B, n]."""
    every = slice(None) if latents is None else latents
    return gated_magnitude(params, centered_matmul(x, params["b_dec"], params["W_enc"][:, every], dtype), every)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def decoder_matmul(z: jax.Array, w: jax.Array, dtype: str) -> jax.Array:
    """z @ w: [B, F], [F, d] -> [B, d] float32, as `matmul`.

    Its gradient for w, zᵀ g [F, d], is computed as (gᵀ z)ᵀ: XLA-CPU runs the [d, B] x [B, F]
    product ~10 % faster than the [F, B] x [B, d] one autodiff forms (0.19 vs 0.22 s at batch 4096,
    d 512, F 8192, the same bits), and `layout.transpose` lays the result out as w is.
    """
    return matmul(z, w, dtype)


def _decoder_matmul_fwd(z, w, dtype):
    return matmul(z, w, dtype), (z, w)


def _decoder_matmul_bwd(dtype, residuals, g):
    z, w = residuals
    d_z = matmul(g, w.T, dtype)
    d_w = layout.transpose(matmul(g.T, z, dtype))
    return d_z.astype(z.dtype), d_w.astype(w.dtype)


decoder_matmul.defvjp(_decoder_matmul_fwd, _decoder_matmul_bwd)


def linear_decode(params: Params, z: jax.Array, dtype: str) -> jax.Array:
    """z @ W_dec + b_dec. [B, d_sae] -> [B, d_in]."""
    return decoder_matmul(z, params["W_dec"], dtype) + params["b_dec"]


# ---------------------------------------------------------------------------------------------
# Sparse TopK building blocks: only the k selected latents of each row are touched.


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def selected_pre_acts(x: jax.Array, b_dec: jax.Array, w: jax.Array, b_enc: jax.Array, selected: jax.Array,
                      indices: jax.Array, latent_major: bool = False) -> jax.Array:
    """((x - b_dec) @ W_enc + b_enc) at `indices`, given as the already computed `selected` values.

    x [B, d], b_dec [d], w: W_enc [d, F], or its transpose [F, d] when latent_major (a tied SAE's
    W_dec), b_enc [F], selected [B, n] (those pre-activations, computed without gradient; none flows
    into them), indices [B, n] int -> selected [B, n]. The backward is sparse: with g [B, n],
    dW_enc[:, i] = Σ_{(b, j): indices[b, j] = i} g[b, j] (x_b - b_dec), db_enc the same sum of g,
    db_dec = -W_enc @ db_enc: scatter-adds of B·n rows instead of a [d, B] x [B, F] matmul. w's
    gradient comes in w's own layout.
    """
    return selected


def _selected_pre_acts_fwd(x, b_dec, w, b_enc, selected, indices, latent_major):
    return selected, (x - b_dec, w, indices)


def _selected_pre_acts_bwd(latent_major, residuals, g):
    centered, w, indices = residuals
    flat = indices.reshape(-1)
    w_rows = w if latent_major else w.T  # [F, d]
    d_b_enc = jnp.zeros(w_rows.shape[0], g.dtype).at[flat].add(g.reshape(-1))
    rows = (g[:, :, None] * centered[:, None, :]).reshape(flat.shape[0], -1)  # [B·n, d]
    d_rows = jnp.zeros(w_rows.shape, g.dtype).at[flat].add(rows)  # scatter whole rows into [F, d]
    d_w = d_rows if latent_major else layout.transpose(d_rows)  # once, not in every optimizer pass
    d_b_dec = -(d_b_enc @ w) if latent_major else -(w @ d_b_enc)
    d_x = jnp.einsum("bn,bnd->bd", g, w_rows[indices])  # dead code under jit when x is data
    return d_x, d_b_dec, d_w, d_b_enc, jnp.zeros_like(g), None  # `selected` carries no gradient


selected_pre_acts.defvjp(_selected_pre_acts_fwd, _selected_pre_acts_bwd)


def linear_top_k(params: Params, x: jax.Array, k: int, dtype: str,
                 screen: bool = False) -> tuple[jax.Array, jax.Array]:
    """The k largest pre-activations of each row of a linear encoder (W_enc, or a tied SAE's
    W_dec.T) and their latents, with the sparse gradient of `selected_pre_acts`:
    x [B, d_in] -> values [B, k], indices [B, k]. The [B, d_sae] pre-activations are never held
    whole (`selection.chunked_top_k`); with `screen` (float32 only) they are screened in bfloat16 and
    the selection certified (`screening.screened_top_k`)."""
    frozen = jax.lax.stop_gradient(params)
    tied = "W_enc" not in params
    if screen:
        centered = jax.lax.stop_gradient(x) - frozen["b_dec"]
        selected, indices = screening.screened_top_k(centered, encoder_weight(frozen),
                                                     frozen["W_dec"] if tied else None, frozen["b_enc"], k)
    else:
        selected, indices = selection.chunked_top_k(lambda rows: linear_pre_acts(frozen, rows, dtype),
                                                    jax.lax.stop_gradient(x), k, params["b_enc"].shape[0],
                                                    offset=frozen["b_enc"])
    w = params["W_dec"] if tied else params["W_enc"]
    return selected_pre_acts(x, params["b_dec"], w, params["b_enc"], selected, indices, tied), indices


def sparse_decode(params: Params, values: jax.Array, indices: jax.Array, dtype: str) -> jax.Array:
    """Σ_j values[b, j] · W_dec[indices[b, j]] + b_dec by gathering k rows of W_dec per row:
    values [B, k], indices [B, k] -> [B, d_in]. Autodiff turns the gather into a scatter-add of
    B·k rows for dW_dec."""
    rows = params["W_dec"][indices]  # [B, k, d_in]
    out = jnp.einsum("bk,bkd->bd", values.astype(dtype), rows.astype(dtype), preferred_element_type=jnp.float32)
    return out + params["b_dec"]


def scatter_rows(values: jax.Array, indices: jax.Array, width: int) -> jax.Array:
    """Dense [B, width] with values [B, k] at indices [B, k], zeros elsewhere (differentiable in values)."""
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], width), values.dtype).at[rows, indices].set(values)


def random_unit_rows(key: jax.Array, rows: int, cols: int) -> jax.Array:
    """[rows, cols] with i.i.d. random directions as unit-norm rows."""
    w = jax.random.normal(key, (rows, cols), jnp.float32)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def init_linear(key, d_in, d_sae, *, tied, dec_init_norm, unit_norm_decoder) -> Params:
    """W_dec rows: random directions (unit norm if constrained, else dec_init_norm);
    W_enc = dec_init_norm · directionsᵀ (Conerly et al. 2024); biases zero."""
    directions = random_unit_rows(key, d_sae, d_in)
    params = {
        "W_dec": directions * (1.0 if unit_norm_decoder else dec_init_norm),
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }
    if not tied:
        params["W_enc"] = directions.T * dec_init_norm
    return params


# ---------------------------------------------------------------------------------------------
# Encoders per architecture: (params, x, train) -> (z, pre_acts, aux).


def _encode_relu(params, x, train, *, dtype, leak):
    pre = linear_pre_acts_of(params, x, None, dtype)
    z = activations.leaky_relu(pre, leak) if leak else activations.relu(pre)
    return z, pre, {}


def _encode_topk(params, x, train, *, dtype, k):
    pre = linear_pre_acts_of(params, x, None, dtype)
    return activations.topk(pre, k), pre, {}


def _encode_topk_sparse(params, x, train, *, dtype, k, screen):
    """TopK with the selection read off pre-activations that carry no gradient; the selected values
    get theirs through `selected_pre_acts` (sparse). aux holds the values and indices for decoding."""
    selected, indices = linear_top_k(params, x, k, dtype, screening.screens(screen, x.shape[0]))
    values = jax.nn.relu(selected)
    pre = jax.lax.stop_gradient(linear_pre_acts_of(params, x, None, dtype))  # only computed if read
    return scatter_rows(values, indices, pre.shape[1]), pre, {"values": values, "indices": indices}


def _encode_batchtopk(params, x, train, *, dtype, k):
    """Training: BatchTopK over the batch. Inference: JumpReLU at the learned scalar threshold."""
    pre = linear_pre_acts_of(params, x, None, dtype)
    if not train:
        return activations.relu(pre) * (pre > params["threshold"]), pre, {}
    z, min_selected = activations.batchtopk(pre, k)
    return z, pre, {"min_selected": min_selected}


def _encode_jumprelu(params, x, train, *, dtype, bandwidth):
    pre = linear_pre_acts_of(params, x, None, dtype)
    return activations.jumprelu(pre, params["threshold"], bandwidth), pre, {}


def _encode_gated(params, x, train, *, dtype):
    """Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude
    path sharing W_enc (rescaled by exp(r_mag)) decides how much."""
    shared = linear_pre_acts(params, x, dtype)
    gate_pre = shared + params["b_gate"]
    mag_pre = gated_magnitude(params, shared)
    z = (gate_pre > 0) * activations.relu(mag_pre)
    return z, mag_pre, {"gate_pre": gate_pre}


# ---------------------------------------------------------------------------------------------
# Deep MLP encoder/decoder (Flax modules; their params sit in the same dict).


def _mlp_modules(d_in, d_sae, hidden, dtype):
    from saejax.mlp import MLP  # noqa: PLC0415 (Flax is imported by MLP SAEs only: 0.15 s of start-up)

    encoder = MLP(tuple(hidden) + (d_sae,), final_bias=True, dtype=dtype)
    decoder = MLP(tuple(reversed(hidden)) + (d_in,), final_bias=False, dtype=dtype)
    return encoder, decoder


def _init_mlp(key, d_in, d_sae, hidden, dtype) -> Params:
    encoder, decoder = _mlp_modules(d_in, d_sae, hidden, dtype)
    k_enc, k_dec = jax.random.split(key)
    return {
        "encoder": encoder.init(k_enc, jnp.zeros((1, d_in)))["params"],
        "decoder": decoder.init(k_dec, jnp.zeros((1, d_sae)))["params"],
        "b_dec": jnp.zeros((d_in,), jnp.float32),
    }


# ---------------------------------------------------------------------------------------------
# Assembly.


def _check_width(x: jax.Array, d_in: int) -> None:
    if x.ndim != 2 or x.shape[-1] != d_in:
        raise DataError(f"input of shape {tuple(x.shape)} does not fit the SAE: expected [batch, {d_in}]")


def _no_buffers(params, out, step):
    return params


def _update_running_threshold(params, out, step):
    """threshold <- running mean of each batch's smallest selected activation (EMA after
    THRESHOLD_WINDOW steps); Bussmann et al. 2024's inference threshold for BatchTopK."""
    if "min_selected" not in out.aux:
        return params
    count = jnp.minimum(step + 1, THRESHOLD_WINDOW).astype(jnp.float32)
    theta = params["threshold"]
    return {**params, "threshold": theta + (out.aux["min_selected"] - theta) / count}


def _forward(encode_fn, decode_fn, params, x, train=True):
    z, pre, aux = encode_fn(params, x, train)
    return SAEOutput(decode_fn(params, z), z, pre, aux)


def _forward_sparse(encode_fn, dtype, params, x, train=True):
    """TopK forward decoding from the k selected rows of W_dec (aux "values"/"indices")."""
    z, pre, aux = encode_fn(params, x, train)
    return SAEOutput(sparse_decode(params, aux["values"], aux["indices"], dtype), z, pre, aux)


def _forward_matryoshka(encode_fn, dtype, prefixes, params, x, train=True):
    """Decode prefix by prefix: aux["prefix_x_hats"][i] uses latents [0, prefixes[i]) only."""
    z, pre, aux = encode_fn(params, x, train)
    x_hat = jnp.broadcast_to(params["b_dec"], x.shape)
    prefix_x_hats = []
    for start, stop in zip((0,) + tuple(prefixes[:-1]), prefixes):
        x_hat = x_hat + matmul(z[:, start:stop], params["W_dec"][start:stop], dtype)
        prefix_x_hats.append(x_hat)
    return SAEOutput(x_hat, z, pre, {**aux, "prefix_x_hats": prefix_x_hats})


def _validate(arch, d_in, d_sae, k, tied, prefixes, dtype, bandwidth, init_threshold):
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown SAE architecture sae.arch={arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if d_in <= 0 or d_sae <= 0:
        raise ConfigError(f"SAE sizes must be positive: d_in={d_in}, sae.d_sae={d_sae}")
    if arch in ("topk", "batchtopk", "matryoshka") and not 0 < k <= d_sae:
        raise ConfigError(f"sae.k={k} must be in [1, sae.d_sae={d_sae}] for sae.arch={arch!r}")
    if tied and arch not in TIEABLE:
        raise ConfigError(f"sae.tied=True is not supported for sae.arch={arch!r} (only {', '.join(TIEABLE)})")
    if arch == "jumprelu" and not (bandwidth > 0 and (init_threshold is None or init_threshold > 0)):
        raise ConfigError(
            f"sae.jumprelu_bandwidth={bandwidth} and sae.jumprelu_init_threshold={init_threshold} must be > 0"
        )
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"sae.dtype={dtype!r} must be 'float32' or 'bfloat16'")
    if arch == "matryoshka":
        if list(prefixes) != sorted(set(prefixes)) or prefixes[0] <= 0 or prefixes[-1] != d_sae:
            raise ConfigError(
                f"sae.matryoshka_prefixes={list(prefixes)} must be strictly increasing, positive, and end at d_sae={d_sae}"
            )


def default_prefixes(d_sae: int) -> tuple[int, ...]:
    """Nested Matryoshka prefixes d_sae/16, d_sae/4, d_sae (deduplicated, at least 1)."""
    return tuple(sorted({max(1, d_sae // 16), max(1, d_sae // 4), d_sae}))


def make_sae(
    arch: str,
    d_in: int,
    d_sae: int,
    *,
    k: int = 32,
    leak: float = 0.0,
    tied: bool = False,
    jumprelu_init_threshold: float | None = None,
    jumprelu_bandwidth: float = 0.05,
    matryoshka_prefixes: Sequence[int] | None = None,
    mlp_hidden: Sequence[int] = (256,),
    dec_init_norm: float = 0.1,
    unit_norm_decoder: bool = True,
    dtype: str = "float32",
    sparse: bool | str = "auto",
    screen: bool | str = "auto",
) -> SAE:
    """Build an architecture (see module docstring). Raises ConfigError on bad options.

    jumprelu_init_threshold: every JumpReLU threshold's initial value; None leaves them at 0 for
    `train.init_train_state` to set from the data (`initializers.jumprelu_thresholds`).

    sparse: topk only: True decodes and back-propagates through the k selected latents only,
    False uses dense matmuls, "auto" picks sparse when d_sae >= SPARSE_MIN_RATIO · k.
    screen: sparse float32 topk only: True screens the encoder's pre-activations in bfloat16 and
    certifies the selection (`screening`; the same latents, faster where bf16 dots are), "auto" does
    where `screening.worth_screening` says it pays, for batches of screening.MIN_ROWS rows and more.
    """
    prefixes = tuple(matryoshka_prefixes) if matryoshka_prefixes else default_prefixes(d_sae)
    _validate(arch, d_in, d_sae, k, tied, prefixes, dtype, jumprelu_bandwidth, jumprelu_init_threshold)
    sparse = _resolve_sparse(sparse, arch, d_sae, k)
    screen = _resolve_screen(screen, sparse, dtype, d_sae, k)
    hparams = dict(k=k, leak=leak, tied=tied, bandwidth=jumprelu_bandwidth, dtype=dtype, sparse=sparse,
                   screen=screen)

    linear_init = functools.partial(
        init_linear, d_in=d_in, d_sae=d_sae, tied=tied, dec_init_norm=dec_init_norm,
        unit_norm_decoder=unit_norm_decoder,
    )
    zeros = jnp.zeros((d_sae,), jnp.float32)

    def init(key):
        if arch == "mlp":
            return _init_mlp(key, d_in, d_sae, mlp_hidden, dtype)
        params = linear_init(key)
        if arch == "gated":
            return {**params, "b_gate": zeros, "b_mag": zeros, "r_mag": zeros}
        params["b_enc"] = zeros
        if arch == "jumprelu":
            params["threshold"] = jnp.full((d_sae,), jumprelu_init_threshold or 0.0, jnp.float32)
        if arch in ("batchtopk", "matryoshka"):
            params["threshold"] = jnp.zeros((), jnp.float32)
        return params

    encode_fn = {
        "relu": functools.partial(_encode_relu, dtype=dtype, leak=leak),
        "topk": functools.partial(_encode_topk, dtype=dtype, k=k),
        "batchtopk": functools.partial(_encode_batchtopk, dtype=dtype, k=k),
        "matryoshka": functools.partial(_encode_batchtopk, dtype=dtype, k=k),
        "jumprelu": functools.partial(_encode_jumprelu, dtype=dtype, bandwidth=jumprelu_bandwidth),
        "gated": functools.partial(_encode_gated, dtype=dtype),
    }.get(arch)
    decode_fn = functools.partial(linear_decode, dtype=dtype)
    latent_axes = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "b_dec": None, "b_gate": 0, "b_mag": 0, "r_mag": 0,
                   "threshold": None if arch in ("batchtopk", "matryoshka") else 0}

    if arch == "mlp":
        encoder, decoder = _mlp_modules(d_in, d_sae, mlp_hidden, dtype)
        hparams["mlp_hidden"] = tuple(mlp_hidden)

        def encode_fn(params, x, train):
            pre = encoder.apply({"params": params["encoder"]}, x - params["b_dec"])
            z = activations.leaky_relu(pre, leak) if leak else activations.relu(pre)
            return z, pre, {}

        def decode_fn(params, z):
            return decoder.apply({"params": params["decoder"]}, z) + params["b_dec"]

        latent_axes = {"b_dec": None}

    dense_forward = functools.partial(_forward, encode_fn, decode_fn)
    if arch == "matryoshka":
        hparams["prefixes"] = prefixes
        forward_impl = functools.partial(_forward_matryoshka, encode_fn, dtype, prefixes)
    elif sparse:
        encode_sparse = functools.partial(_encode_topk_sparse, dtype=dtype, k=k, screen=screen)
        sparse_forward = functools.partial(_forward_sparse, encode_sparse, dtype)

        def forward_impl(params, x, train=True):  # dense when the latents are split over a mesh
            return (dense_forward if latent_axis.sharded_mesh() is not None else sparse_forward)(params, x, train)
    else:
        forward_impl = dense_forward

    def forward(params, x, train=True):
        _check_width(x, d_in)
        return forward_impl(params, x, train)

    def encode(params, x):
        _check_width(x, d_in)
        return encode_fn(params, x, False)[0]

    buffers = ("threshold",) if arch in ("batchtopk", "matryoshka") else ()
    update = _update_running_threshold if buffers else _no_buffers
    pre_acts_of = None if arch == "mlp" else functools.partial(
        gated_pre_acts_of if arch == "gated" else linear_pre_acts_of, dtype=dtype)
    return SAE(arch, d_in, d_sae, hparams, init, forward, encode, decode_fn, latent_axes, buffers, update,
               pre_acts_of)


def _resolve_sparse(sparse: bool | str, arch: str, d_sae: int, k: int) -> bool:
    """sparse=True/False/"auto" -> whether this SAE takes the sparse TopK path."""
    if sparse == "auto":
        return arch == "topk" and d_sae >= SPARSE_MIN_RATIO * k
    if not isinstance(sparse, bool):
        raise ConfigError(f"sae.sparse={sparse!r} must be True, False or 'auto'")
    if sparse and arch != "topk":
        raise ConfigError(f"sae.sparse=True is for sae.arch='topk', not {arch!r}")
    return sparse


def _resolve_screen(screen: bool | str, sparse: bool, dtype: str, d_sae: int, k: int) -> bool | str:
    """screen=True/False/"auto" -> True, False, or "auto" where it may pay (`screening.worth_screening`;
    whether a batch is screened then depends on its rows, `screening.screens`)."""
    if screen == "auto":
        worth = sparse and jnp.dtype(dtype) == jnp.float32 and screening.worth_screening(d_sae, k)
        return "auto" if worth else False
    if not isinstance(screen, bool):
        raise ConfigError(f"sae.screen={screen!r} must be True, False or 'auto'")
    if screen and not (sparse and jnp.dtype(dtype) == jnp.float32):
        raise ConfigError("sae.screen=True needs the sparse float32 TopK path (sae.arch='topk', sae.sparse "
                          f"not false, sae.dtype='float32'); this SAE has sparse={sparse}, dtype={dtype!r}")
    return screen


def _int_list(text: str, field: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{field}={text!r} must be comma-separated integers, e.g. '64,256,1024'") from None


def _sparse_setting(text, field: str) -> bool | str:
    """sae.sparse or sae.screen from a config: "auto" | "true" | "false" (booleans accepted too)."""
    if isinstance(text, bool):
        return text
    setting = {"auto": "auto", "true": True, "false": False}.get(str(text).lower())
    if setting is None:
        raise ConfigError(f"{field}={text!r} must be 'auto', 'true' or 'false'")
    return setting


def sae_from_config(sae_config, d_in: int, unit_norm_decoder: bool = True) -> SAE:
    """Build the SAE that the `sae` section of a run's config describes."""
    return make_sae(
        sae_config.arch,
        d_in,
        sae_config.d_sae,
        k=sae_config.k,
        leak=sae_config.leak,
        tied=sae_config.tied,
        jumprelu_init_threshold=sae_config.jumprelu_init_threshold,
        jumprelu_bandwidth=sae_config.jumprelu_bandwidth,
        matryoshka_prefixes=_int_list(sae_config.matryoshka_prefixes, "sae.matryoshka_prefixes") or None,
        mlp_hidden=_int_list(sae_config.mlp_hidden, "sae.mlp_hidden"),
        dec_init_norm=defaults.encoder_init_scale(sae_config.arch, sae_config.dec_init_norm),
        unit_norm_decoder=unit_norm_decoder,
        dtype=sae_config.dtype,
        sparse=_sparse_setting(sae_config.get("sparse", "auto"), "sae.sparse"),
        screen=_sparse_setting(sae_config.get("screen", "auto"), "sae.screen"),
    )
