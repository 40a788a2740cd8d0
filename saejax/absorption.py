"""Feature absorption (Chanin et al. 2024, "A is for Absorption"), measured as SAEBench measures it.

A concept (e.g. "the token starts with L", or a parent feature of a hierarchy) has a ground-truth
direction: a logistic probe on the activations. Its *main latents* are the SAE latents that stand
for it: the k latents of a k-sparse probe (`saejax.probes.k_sparse`), k grown from 1 while each
added latent lifts the probe's F1 by more than `f1_jump` (more than one latent = feature splitting).
On a row where the concept is present (the probe says so, and the label agrees) the main latents
should fire; *absorption* is another latent, aligned with the probe, carrying the concept instead.

For such a row x with latents z [F] and decoder rows W_dec [F, d], p̂ the unit probe direction:

- each latent's projection on the probe: c_j = z_j · (W_dec_j · p̂) (SAEBench's activation × cosine,
  for unit-norm decoder rows); the row's: x · p̂;
- *full absorption*: every main latent is off (< 1e-8), the latent of largest c_j has cosine ≥
  `full_cos` (0.025) with p̂, x · p̂ > 0 and that c_j ≥ `proportion` (0.4) of x · p̂;
- *absorption fraction*: the up to `max_absorbers` (3) largest c_j > 0 of latents that are not main
  and have cosine ≥ `fraction_cos` (0.1) are the absorbers; 0 if the main latents' Σ c_j already
  reaches x · p̂ or the absorbers carry less than `proportion` of it; 1 if the main latents' Σ c_j ≤ 0;
  else min(absorbers, x · p̂ − main) / (that + main).

The concept's *absorption rate* is (rows fully absorbed) / (probe true positives) and its *mean
absorption fraction* the fraction summed over those rows over the same count (SAEBench's
`full_absorption_rate` and `mean_absorption_fraction`).

    result = measure(x, labels, z, decoder)           # x [n, d], labels bool [n], z [n, F], decoder [F, d]
    result.rate, result.fraction, result.main_latents
"""

from typing import NamedTuple

import numpy as np

from saejax import probes

EPS = 1e-8


class Thresholds(NamedTuple):
    """SAEBench's settings (see the module docstring)."""

    full_cos: float = 0.025
    fraction_cos: float = 0.1
    proportion: float = 0.4
    max_absorbers: int = 3


class Absorption(NamedTuple):
    """One concept's absorption on the eval rows.

    Attributes:
        rate: full absorptions / probe true positives.
        fraction: mean absorption fraction over the probe true positives.
        main_latents: int64 [k], the latents standing for the concept.
        f1s: the k-sparse probes' F1 for k = 1 .. max_k.
        probe_f1: the ground-truth probe's F1 on the eval rows.
        true_positives: eval rows the concept is on and the probe finds.
        full: bool [true_positives], which of them are fully absorbed.
        fractions: float64 [true_positives], their absorption fractions.
    """

    rate: float
    fraction: float
    main_latents: np.ndarray
    f1s: list[float]
    probe_f1: float
    true_positives: int
    full: np.ndarray
    fractions: np.ndarray


def main_latents(z_fit, y_fit, z_eval, y_eval, max_k: int = 10, f1_jump: float = 0.03,
                 **fit_options) -> tuple[np.ndarray, list[float]]:
    """(the main latents int64 [k], the F1 of the k-sparse probes for k = 1 .. max_k): k is grown from 1 while
    the next latent lifts the F1 by more than `f1_jump` (SAEBench's feature-splitting rule)."""
    runs = probes.k_sparse(z_fit, y_fit, z_eval, y_eval, ks=range(1, max_k + 1), **fit_options)
    f1s = [run.f1 for run in runs]
    k = 1
    while k < max_k and f1s[k] - f1s[k - 1] > f1_jump:
        k += 1
    return runs[k - 1].latents, f1s


def row_absorption(projection: np.ndarray, contributions: np.ndarray, cosines: np.ndarray, z: np.ndarray,
                   main: np.ndarray, thresholds: Thresholds = Thresholds()) -> tuple[np.ndarray, np.ndarray]:
    """(full absorption bool [n], absorption fraction float64 [n]) of rows with probe projections
    `projection` [n] (x · p̂), latent projections `contributions` [n, F] (c_j), latent-probe cosines
    `cosines` [F] and activations z [n, F], for the main latents `main` (module docstring)."""
    t = thresholds
    projection = np.asarray(projection, np.float64)
    c = np.asarray(contributions, np.float64)
    is_main = np.zeros(c.shape[1], bool)
    is_main[np.asarray(main, np.int64)] = True
    main_sum = c[:, is_main].sum(1)
    candidates = np.where(~is_main & (cosines >= t.fraction_cos) & (c > 0), c, 0.0)
    absorbers = -np.sort(-candidates, axis=1)[:, :t.max_absorbers].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        carried = absorbers / projection
        absorbed = np.minimum(absorbers, projection - main_sum)
        partial = np.clip(absorbed / (absorbed + main_sum), 0.0, 1.0)
    none = (main_sum >= projection) | ~(carried >= t.proportion)
    fraction = np.where(none, 0.0, np.where(main_sum <= 0, 1.0, partial))
    top = np.argmax(c, axis=1)
    top_c = c[np.arange(c.shape[0]), top]
    with np.errstate(divide="ignore", invalid="ignore"):
        full = ((np.asarray(z)[:, is_main] < EPS).all(1) & (cosines[top] >= t.full_cos) & (projection > 0)
                & (top_c / projection >= t.proportion))
    return full, fraction


def measure(x: np.ndarray, labels: np.ndarray, z: np.ndarray, decoder: np.ndarray, *, fit_share: float = 0.5,
            probe: probes.Probe | None = None, main: np.ndarray | None = None, max_k: int = 10,
            f1_jump: float = 0.03, thresholds: Thresholds = Thresholds()) -> Absorption:
    """Absorption of the concept `labels` (bool [n]) on rows x [n, d] with latents z [n, F] and decoder
    rows `decoder` [F, d], all in the space the SAE reads and writes. The first `fit_share` of the rows
    fit the ground-truth probe (unless `probe` is given) and the k-sparse probes (unless the main
    latents `main` are given); the rest are measured."""
    x, z, labels = np.asarray(x, np.float32), np.asarray(z, np.float32), np.asarray(labels, bool)
    cut = int(fit_share * x.shape[0])
    if probe is None:
        probe = probes.fit(x[:cut], labels[:cut].astype(np.int32), n_classes=2, balanced=True)
    f1s: list[float] = []
    if main is None:
        main, f1s = main_latents(z[:cut], labels[:cut], z[cut:], labels[cut:], max_k, f1_jump)
    x_eval, z_eval, y_eval = x[cut:], z[cut:], labels[cut:]
    found = probe.margin(x_eval) > 0
    positives = y_eval & found
    direction = probe.direction().astype(np.float64)
    direction /= np.linalg.norm(direction)
    along = np.asarray(decoder, np.float64) @ direction  # W_dec_j · p̂
    cosines = along / np.maximum(np.linalg.norm(np.asarray(decoder, np.float64), axis=1), EPS)
    zp = z_eval[positives].astype(np.float64)
    full, fractions = row_absorption(x_eval[positives] @ direction, zp * along, cosines, zp, main, thresholds)
    count = int(positives.sum())
    return Absorption(rate=float(full.sum() / max(count, 1)), fraction=float(fractions.sum() / max(count, 1)),
                      main_latents=np.asarray(main, np.int64), f1s=f1s,
                      probe_f1=probes.f1_score(found, y_eval), true_positives=count, full=full, fractions=fractions)


def hierarchy(x: np.ndarray, codes: np.ndarray, parent: np.ndarray, z: np.ndarray, decoder: np.ndarray,
              max_parents: int = 16, min_probe_f1: float = 0.6) -> dict:
    """Absorption of the parents of a feature hierarchy (`saejax.data.synthetic`, correlation
    'hierarchical'), each a concept ("the parent fires", from the ground-truth `codes` [n, n_features]):
    `measure` for the `max_parents` most frequent features that have children, and the means over those
    whose probe reaches `min_probe_f1`: {"absorption_rate", "absorption_fraction", "parents" (measured),
    "scored"}. parent: int64 [n_features], each feature's parent (-1: a root)."""
    parents = np.unique(parent[parent >= 0])
    on = np.asarray(codes)[:, parents] > 0
    parents = parents[np.argsort(-on.mean(0), kind="stable")][:max_parents]
    found = [measure(x, np.asarray(codes)[:, p] > 0, z, decoder) for p in parents]
    scored = [f for f in found if f.probe_f1 >= min_probe_f1]
    return {"absorption_rate": float(np.mean([f.rate for f in scored])) if scored else float("nan"),
            "absorption_fraction": float(np.mean([f.fraction for f in scored])) if scored else float("nan"),
            "parents": len(found), "scored": len(scored)}
