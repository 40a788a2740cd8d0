"""Activation normalisation: a run trains on s·x, for one scalar s with E‖s·x‖² = d_in.

The scale is computed once at initialisation (`scale_of`) and carried in `TrainState.norm_scale`;
`normalize` applies it at the one boundary where raw rows enter the SAE's computations (the train
step, the held-out evaluation, resampling); `fold` moves it into the weights once, for everything
that acts on raw activations (the export, the splice and dashboards, `saejax.load`); `raw_codec`
gives encode/decode on raw rows for any architecture.

A transcoder's input and target are different activations (e.g. an MLP's input and output), whose
norms may differ by orders of magnitude, so each gets its own scale: its norm scale is [2], (input
scale, target scale), each with E‖s·x‖² = width; an SAE's is one scalar []. `input_scale`,
`target_scale` and `scales` read either.
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import DataError, SaejaxError


def scale_of(sample: np.ndarray, mean_sq_norm: float | None = None) -> float:
    """The scalar s with E||s·x||² = d_in (SAELens' "expected_average_only_in"), from a data
    `sample` [n, d_in], or from the data's known `mean_sq_norm` E||x||² (a store's manifest
    statistics, computed over every row) when given.

    Training sees s·x; export folds s back into the weights so the SAE works on raw x.
    """
    if mean_sq_norm is None:
        mean_sq_norm = float(np.mean(np.sum(np.square(sample, dtype=np.float64), axis=-1)))
        what = "of the data sample"
    else:
        what = "in the store's manifest statistics"
    if not np.isfinite(mean_sq_norm) or mean_sq_norm <= 0:
        raise DataError(f"cannot normalise activations: the mean squared norm {what} is {mean_sq_norm}")
    return float(np.sqrt(sample.shape[-1] / mean_sq_norm))


def normalize(x: jax.Array, scale) -> jax.Array:
    """Raw rows x [..., d] as the SAE sees them: float32, times the run's scale."""
    return x.astype(jnp.float32) * scale


def input_scale(norm_scale):
    """The scale of the inputs: an SAE's norm scale [] itself, a transcoder's [2] first entry."""
    return norm_scale if jnp.ndim(norm_scale) == 0 else norm_scale[0]


def target_scale(norm_scale):
    """The scale of the reconstruction's target: an SAE's norm scale [] itself (its target is its
    input), a transcoder's [2] second entry."""
    return norm_scale if jnp.ndim(norm_scale) == 0 else norm_scale[-1]


def scales(norm_scale) -> tuple[float, float]:
    """(input scale, target scale) as Python floats from a norm scale [] or [2] (a host array)."""
    values = np.asarray(norm_scale, np.float64).reshape(-1)
    return float(values[0]), float(values[-1])


def scales_of(sample, mean_sq_norm: float | None = None):
    """The norm scale of a run from its data `sample`: `scale_of` for an SAE's rows [n, d_in]; for a
    transcoder's (inputs [n, d_in], targets [n, d_out]) the float32 pair [2] of their own scales (a
    store's statistics cover the pair's joined rows, so the sample decides)."""
    if isinstance(sample, tuple):
        return np.asarray([scale_of(part) for part in sample], np.float32)
    return scale_of(sample, mean_sq_norm)


def unit_scale(sae):
    """The norm scale of an unnormalised run: 1.0, or [1, 1] for a transcoder."""
    return np.ones(2, np.float32) if getattr(sae, "transcoder", False) else 1.0


_FOLD_KEEP = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag")
_FOLD_KEYS = frozenset(("W_enc", "W_dec", "b_dec", "W_skip") + _FOLD_KEEP)


def fold(params: Mapping[str, Any], scale: float, out_scale: float | None = None) -> dict[str, Any]:
    """Fold the input scale s (x_train = s * x_raw) into the weights, and a transcoder's target scale
    t (y_train = t * y_raw; None: t = s, an SAE's).

    Returns params that act on raw x: W_enc' = s W_enc, b_dec' = b_dec / t,
    W_dec' = W_dec / t, a skip transcoder's W_skip' = W_skip · s / t; b_enc, threshold, b_gate,
    b_mag, r_mag are unchanged. Every pre-activation is then identical to the original's on
    s * x_raw (an SAE's encoder subtracts b_dec' = b_dec / s from x_raw), so latents are
    identical and the reconstruction is the original's divided by t. Tied params (no
    W_enc key) come back untied, with W_enc = s * W_dec.T. Works on numpy or jax arrays
    of any supported architecture (not mlp).
    """
    out_scale = scale if out_scale is None else out_scale
    for value in (scale, out_scale):
        if not np.isfinite(value) or value <= 0:
            raise SaejaxError(f"norm scale must be a positive finite number, got {value}")
    unknown = sorted(set(params) - _FOLD_KEYS)
    if unknown:
        raise SaejaxError(f"cannot fold a norm scale into params with keys {unknown}")
    for key in ("W_dec", "b_dec"):
        if key not in params:
            raise SaejaxError(f"cannot fold a norm scale: params have no {key!r}")
    w_enc = params["W_enc"] if "W_enc" in params else params["W_dec"].T
    out = {key: params[key] for key in _FOLD_KEEP if key in params}
    out["W_enc"] = w_enc * scale
    out["W_dec"] = params["W_dec"] / out_scale
    out["b_dec"] = params["b_dec"] / out_scale
    if "W_skip" in params:
        out["W_skip"] = params["W_skip"] * (scale / out_scale)
    return out


def fold_norm(params: Mapping[str, Any], norm_scale) -> dict[str, Any]:
    """`fold` with a run's norm scale [] or [2] (`scales`): params acting on raw activations."""
    return fold(params, *scales(norm_scale))


def raw_codec(sae, params, scale: float) -> tuple[Callable, Callable]:
    """(encode, decode), jitted, acting on raw rows: encode(x [n, d_in]) -> codes [n, d_sae],
    decode(codes) -> reconstructions in the raw rows' scale."""
    encode = jax.jit(lambda x: sae.encode(params, normalize(x, scale)))
    decode = jax.jit(lambda z: sae.decode(params, z) / scale)
    return encode, decode
