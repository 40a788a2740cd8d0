"""Toy superposition data with known ground-truth features.

In the style of Sharkey, Braun & Millidge (2022), "Taking features out of superposition
with sparse autoencoders": ``n_features`` unit-norm directions in ``d`` dimensions
(Gaussian, normalised, fixed by the seed) form `dictionary` [n_features, d]. A sample is
``x = codes @ dictionary`` where ``codes[i] = active[i] * U[0, 1]``.

Firing probabilities (decay law). Feature i fires with marginal probability

    p_i = c * freq_ratio ** (-i / (n_features - 1)),   i = 0 .. n_features - 1,

a geometric decay from the most frequent feature (i = 0) to the least frequent
(i = n_features - 1), whose probabilities differ by exactly ``freq_ratio``; ``c`` is set so
that ``sum_i p_i = avg_active``, the mean number of active features per sample.
``freq_ratio = 1`` gives uniform probabilities. A ConfigError is raised if this would push
``p_0`` above 1.

Correlation:

- ``none``: features fire independently with probabilities ``p_i``.
- ``hierarchical``: the first ``n_parents = ceil(n_features / (1 + children_per_parent))``
  features (the most frequent ones) are parents (roots); every other feature
  ``j = n_parents + m`` is a child of parent ``m // children_per_parent``. A parent fires
  with probability ``p_parent``; a child fires only when its parent fires, and then with
  probability ``p_child / p_parent`` (<= 1, since parents precede their children and
  ``p`` decreases). The marginals are therefore the same ``p_i`` as for ``none``, so the
  mean number active is still exactly ``avg_active``; only the joint law changes
  (no child ever fires without its parent). `parent` holds each feature's parent index
  (-1 for roots).

Magnitudes are independent U[0, 1] for every active feature, in both cases.
"""

import math

import numpy as np

from saejax.data import (
    STREAM_BATCH,
    STREAM_DICTIONARY,
    STREAM_HELDOUT,
    STREAM_SAMPLE,
    check_batch_args,
    check_sample_size,
    rng,
)
from saejax.errors import ConfigError

CORRELATIONS = ("none", "hierarchical")


def firing_probs(n_features: int, avg_active: float, freq_ratio: float) -> np.ndarray:
    """Geometric firing probabilities, float64 [n_features], summing to avg_active."""
    if n_features == 1:
        return np.array([float(avg_active)])
    shape = float(freq_ratio) ** (-np.arange(n_features) / (n_features - 1))
    return shape * (avg_active / shape.sum())


def random_dictionary(gen: np.random.Generator, n_features: int, d: int) -> np.ndarray:
    """Gaussian directions normalised to unit rows, float32 [n_features, d]."""
    w = gen.standard_normal((n_features, d))
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def parent_index(n_features: int, children_per_parent: int) -> np.ndarray:
    """Parent of each feature, int64 [n_features]; -1 marks the roots (parents)."""
    n_parents = math.ceil(n_features / (1 + children_per_parent))
    parent = np.full(n_features, -1, dtype=np.int64)
    parent[n_parents:] = np.arange(n_features - n_parents) // children_per_parent
    return parent


def conditional_probs(probs: np.ndarray, parent: np.ndarray | None) -> np.ndarray:
    """Probability of firing given the parent fires (roots: the marginal), float64 [n]."""
    if parent is None:
        return probs
    child = parent >= 0
    cond = probs.copy()
    cond[child] = probs[child] / probs[parent[child]]
    return cond


def sample_codes(
    gen: np.random.Generator, cond_probs: np.ndarray, parent: np.ndarray | None, n: int
) -> np.ndarray:
    """Sparse non-negative codes, float32 [n, n_features].

    One uniform u per entry: the feature fires iff u < q (q = `cond_probs`), and then
    u / q is U[0, 1] and independent of the firing decision, so it is the magnitude.
    Children (which follow all the roots, see `parent_index`) are then zeroed wherever
    their parent is silent.
    """
    codes = gen.random((n, cond_probs.size)) / cond_probs
    codes[codes >= 1] = 0
    if parent is not None:
        n_roots = int(np.sum(parent < 0))
        fired = codes[:, :n_roots] > 0
        codes[:, n_roots:] *= np.take(fired, parent[n_roots:], axis=1)
    return codes.astype(np.float32)


def _check_config(
    d: int,
    n_features: int,
    avg_active: float,
    freq_ratio: float,
    correlation: str,
    children_per_parent: int,
) -> None:
    """Raise ConfigError naming the first bad `data.*` field."""
    if d < 1:
        raise ConfigError(f"data.d must be >= 1, got {d}")
    if n_features < 1:
        raise ConfigError(f"data.n_features must be >= 1, got {n_features}")
    if not 0 < avg_active <= n_features:
        raise ConfigError(
            f"data.avg_active must be in (0, data.n_features={n_features}], got {avg_active}"
        )
    if not freq_ratio >= 1:
        raise ConfigError(f"data.freq_ratio must be >= 1, got {freq_ratio}")
    if correlation not in CORRELATIONS:
        raise ConfigError(
            f"data.correlation: unknown {correlation!r}; valid: {', '.join(CORRELATIONS)}"
        )
    if children_per_parent < 1:
        raise ConfigError(f"data.children_per_parent must be >= 1, got {children_per_parent}")
    top = firing_probs(n_features, avg_active, freq_ratio)[0]
    if top > 1:
        raise ConfigError(
            f"data.avg_active={avg_active} is too large for data.n_features={n_features} "
            f"and data.freq_ratio={freq_ratio}: the most frequent feature would fire with "
            f"probability {top:.3g} > 1"
        )


class SyntheticSource:
    """Superposition of sparse, decaying-frequency features; see the module docstring.

    Attributes:
        name: ``'synthetic'``.
        d_in: ``d``.
        dictionary: float32 [n_features, d], unit-norm ground-truth feature directions.
        probs: float64 [n_features], marginal firing probability of each feature.
        parent: int64 [n_features] parent of each feature (-1 = root), or None when
            ``correlation == 'none'``.
        cond_probs: float64 [n_features], probability of firing given the parent fires
            (equal to `probs` for roots and when ``correlation == 'none'``).
    """

    name = "synthetic"
    heldout_rows = None  # held-out batches come from their own random stream, as many as asked for

    def __init__(
        self,
        seed: int,
        d: int = 256,
        n_features: int = 512,
        avg_active: float = 5.0,
        freq_ratio: float = 100.0,
        correlation: str = "none",
        children_per_parent: int = 3,
    ) -> None:
        _check_config(d, n_features, avg_active, freq_ratio, correlation, children_per_parent)
        self.seed = seed
        self.d_in = d
        self.correlation = correlation
        self.dictionary = random_dictionary(rng(seed, STREAM_DICTIONARY), n_features, d)
        self.probs = firing_probs(n_features, avg_active, freq_ratio)
        self.parent = (
            parent_index(n_features, children_per_parent)
            if correlation == "hierarchical"
            else None
        )
        self.cond_probs = conditional_probs(self.probs, self.parent)

    def codes(self, step: int, batch_size: int) -> np.ndarray:
        """Ground-truth codes of `batch(step, batch_size)`, float32 [batch_size, n_features]."""
        check_batch_args(step, batch_size)
        gen = rng(self.seed, STREAM_BATCH, step)
        return sample_codes(gen, self.cond_probs, self.parent, batch_size)

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d]: ``codes(step, batch_size) @ dictionary``."""
        return self.codes(step, batch_size) @ self.dictionary

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d] sample, independent of every batch."""
        check_sample_size(n)
        gen = rng(self.seed, STREAM_SAMPLE)
        return sample_codes(gen, self.cond_probs, self.parent, n) @ self.dictionary

    def heldout_codes(self, index: int, batch_size: int) -> np.ndarray:
        """Ground-truth codes of `heldout_batch(index, batch_size)`, float32 [batch_size, n_features]."""
        check_batch_args(index, batch_size)
        return sample_codes(rng(self.seed, STREAM_HELDOUT, index), self.cond_probs, self.parent, batch_size)

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d]: rows of the held-out stream (seed, index), which no training
        batch or sample draws from."""
        return self.heldout_codes(index, batch_size) @ self.dictionary
