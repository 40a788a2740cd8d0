"""Activation normalisation: a run trains on s·x, for one scalar s with E‖s·x‖² = d_in.

The scale is computed once at initialisation (`scale_of`) and carried in `TrainState.norm_scale`;
`normalize` applies it at the one boundary where raw rows enter the SAE's computations (the train
step, the held-out evaluation, resampling); `fold` moves it into the weights once, for everything
that acts on raw activations (the export, the splice and dashboards, `saejax.load`); `raw_codec`
gives encode/decode on raw rows for any architecture.
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


_FOLD_KEEP = ("b_enc", "threshold", "b_gate", "r_mag", "b_mag")
_FOLD_KEYS = frozenset(("W_enc", "W_dec", "b_dec") + _FOLD_KEEP)


def fold(params: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """Fold the input scale s (x_train = s * x_raw) into the weights.

    Returns params that act on raw x: W_enc' = s W_enc, b_dec' = b_dec / s,
    W_dec' = W_dec / s; b_enc, threshold, b_gate, b_mag, r_mag are unchanged. Every
    pre-activation is then identical to the original's on s * x_raw, so latents are
    identical and the reconstruction is the original's divided by s. Tied params (no
    W_enc key) come back untied, with W_enc = s * W_dec.T. Works on numpy or jax arrays
    of any supported architecture (not mlp).
    """
    if not np.isfinite(scale) or scale <= 0:
        raise SaejaxError(f"norm scale must be a positive finite number, got {scale}")
    unknown = sorted(set(params) - _FOLD_KEYS)
    if unknown:
        raise SaejaxError(f"cannot fold a norm scale into params with keys {unknown}")
    for key in ("W_dec", "b_dec"):
        if key not in params:
            raise SaejaxError(f"cannot fold a norm scale: params have no {key!r}")
    w_enc = params["W_enc"] if "W_enc" in params else params["W_dec"].T
    out = {key: params[key] for key in _FOLD_KEEP if key in params}
    out["W_enc"] = w_enc * scale
    out["W_dec"] = params["W_dec"] / scale
    out["b_dec"] = params["b_dec"] / scale
    return out


def raw_codec(sae, params, scale: float) -> tuple[Callable, Callable]:
    """(encode, decode), jitted, acting on raw rows: encode(x [n, d_in]) -> codes [n, d_sae],
    decode(codes) -> reconstructions in the raw rows' scale."""
    encode = jax.jit(lambda x: sae.encode(params, normalize(x, scale)))
    decode = jax.jit(lambda z: sae.decode(params, z) / scale)
    return encode, decode
