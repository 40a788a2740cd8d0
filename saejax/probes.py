"""Linear probes on activations or on an SAE's latents: logistic regression fitted by full-batch
Adam on standardised features, and k-sparse probes (Gurnee et al. 2023, as SAEBench runs them) on the
k latents whose mean activation differs most between a concept's positive and negative rows.

    probe = fit(train_x, train_y)                     # train_x [n, f], train_y int [n]
    accuracy = np.mean(probe.predict(test_x) == test_y)
    runs = k_sparse(z_fit, y_fit, z_eval, y_eval, ks=(1, 2, 5, 20))  # y bool: a concept's rows
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Probe(NamedTuple):
    """A fitted multinomial logistic regression on raw features (the standardisation folded in).

    Attributes:
        weights: float32 [f, C].
        bias: float32 [C].
    """

    weights: np.ndarray
    bias: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, C] of rows x [n, f]."""
        return np.asarray(x, np.float32) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most likely class of each row of x [n, f], int64 [n]."""
        return np.argmax(self.scores(x), axis=-1)

    def direction(self) -> np.ndarray:
        """A two-class probe's direction in feature space, float32 [f]: the positive class's logit minus
        the negative's grows along it (the ground-truth direction of a concept)."""
        return self.weights[:, 1] - self.weights[:, 0]

    def margin(self, x: np.ndarray) -> np.ndarray:
        """A two-class probe's positive-minus-negative logit of each row, float32 [n] (> 0: positive)."""
        scores = self.scores(x)
        return scores[:, 1] - scores[:, 0]


def fit(x: np.ndarray, y: np.ndarray, *, n_classes: int | None = None, steps: int = 500, learning_rate: float = 0.05,
        l2: float = 1e-4, balanced: bool = False) -> Probe:
    """Logistic regression of labels y (int [n], classes 0 .. C-1) on rows x [n, f] (standardised with
    their own statistics, then folded back): full-batch Adam on the mean cross-entropy plus l2·|W|²;
    `balanced` weighs each class's rows by 1 / its share (a rare concept's probe then does not just
    say no)."""
    x, y = np.asarray(x, np.float32), np.asarray(y).astype(np.int32)
    n_classes = n_classes or int(y.max()) + 1
    mean, std = x.mean(0), x.std(0) + 1e-6
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    row_weight = (y.size / (n_classes * np.maximum(counts, 1)))[y] if balanced else np.ones(y.size, np.float32)
    w = _fit(jnp.asarray((x - mean) / std), jnp.asarray(y), jnp.asarray(row_weight, jnp.float32), n_classes, steps,
             learning_rate, l2)
    weights = np.asarray(w["W"]) / std[:, None]
    bias = np.asarray(w["b"]) - (mean / std) @ np.asarray(w["W"])
    return Probe(weights.astype(np.float32), bias.astype(np.float32))


@functools.partial(jax.jit, static_argnames=("n_classes", "steps"))
def _fit(xs, labels, row_weight, n_classes: int, steps: int, learning_rate: float, l2: float) -> dict:
    """Full-batch Adam on the weighted cross-entropy plus l2·|W|², compiled once per shape."""
    optimizer = optax.adam(learning_rate)

    def loss(w):
        losses = optax.softmax_cross_entropy_with_integer_labels(xs @ w["W"] + w["b"], labels)
        return jnp.sum(losses * row_weight) / jnp.sum(row_weight) + l2 * jnp.sum(w["W"] ** 2)

    def step(carry, _):
        w, opt = carry
        updates, opt = optimizer.update(jax.grad(loss)(w), opt, w)
        return (optax.apply_updates(w, updates), opt), None

    w = {"W": jnp.zeros((xs.shape[1], n_classes)), "b": jnp.zeros((n_classes,))}
    (w, _), _ = jax.lax.scan(step, (w, optimizer.init(w)), None, length=steps)
    return w


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 of boolean predictions [n] against boolean labels [n] (0 when nothing is predicted or true)."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    hits = float(np.sum(predicted & labels))
    return 2 * hits / max(float(predicted.sum() + labels.sum()), 1.0)


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of boolean predictions [n] with the positive and negative rows weighted equally: the mean
    of the two classes' recalls, as on a balanced set (SAEBench scores one class against an equal sample
    of the rest). 0.5 is chance, whatever the classes' shares."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    recalls = [np.mean(predicted[labels == side] == side) for side in (True, False) if np.any(labels == side)]
    return float(np.mean(recalls))


def latents_by_mean_difference(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Latent ids, int64 [F], by how much more they fire on the positive rows (y True) than on the
    others: mean(z[y]) - mean(z[~y]), largest first."""
    z, y = np.asarray(z, np.float32), np.asarray(y, bool)
    return np.argsort(-(z[y].mean(0) - z[~y].mean(0)), kind="stable")


class SparseProbe(NamedTuple):
    """A k-sparse probe: the k latents it reads, the probe on them, and its scores on the eval rows (F1 of
    the positive class; `balanced_accuracy`)."""

    k: int
    latents: np.ndarray
    probe: Probe
    f1: float
    accuracy: float


def k_sparse(z_fit: np.ndarray, y_fit: np.ndarray, z_eval: np.ndarray, y_eval: np.ndarray,
             ks: Sequence[int] = (1, 2, 5, 20), **fit_options) -> list[SparseProbe]:
    """For each k of `ks`: a balanced two-class probe of the concept y (bool) on the k latents of
    `latents_by_mean_difference` (on the fit rows), scored on the eval rows."""
    order = latents_by_mean_difference(z_fit, y_fit)
    runs = []
    for k in ks:
        latents = order[:k]
        probe = fit(np.asarray(z_fit)[:, latents], np.asarray(y_fit, np.int32), n_classes=2, balanced=True,
                    **fit_options)
        predicted = probe.margin(np.asarray(z_eval)[:, latents]) > 0
        runs.append(SparseProbe(k, latents, probe, f1_score(predicted, y_eval), balanced_accuracy(predicted, y_eval)))
    return runs
