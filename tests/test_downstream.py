"""Downstream evaluations (ROC-AUC, PCA baseline, linear probe, per-task evaluation) and the
notebook analysis helpers, on small arrays with known answers."""

import itertools

import ml_collections
import numpy as np
import pytest

import saejax
from saejax import analysis, downstream
from saejax.data.table import TableSource
from saejax.errors import DataError


def brute_force_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    labels = (rng.random(80) < 0.3).astype(int)
    assert downstream.roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert downstream.roc_auc(np.arange(10.0), np.r_[np.zeros(5), np.ones(5)]) == 1.0
    assert downstream.roc_auc(-np.arange(10.0), np.r_[np.zeros(5), np.ones(5)]) == 0.0
    with pytest.raises(DataError, match="both classes"):
        downstream.roc_auc(np.ones(3), np.zeros(3))
    fpr, tpr = downstream.roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and np.all(np.diff(fpr) >= 0)


def test_pca_reconstruction_error_falls_to_zero_at_full_rank():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    test = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    errors = [analysis.pca_fvu(train, train, n) for n in range(7)]
    assert errors[0] == pytest.approx(1.0) and errors[-1] == pytest.approx(0.0, abs=1e-10)
    assert all(a >= b for a, b in zip(errors, errors[1:]))
    assert analysis.pca_fvu(train, test, 6) == pytest.approx(0.0, abs=1e-10)  # a full basis reconstructs anything


def test_an_exact_reconstruction_has_an_fvu_of_zero_not_round_off():
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(200, 6)), rng.normal(size=(50, 6))
    # more components than dimensions (an SAE's L0 above d_in): exact, so 0.0 and not ~1e-30
    assert [analysis.pca_fvu(train, test, n) for n in (6, 9)] == [0.0, 0.0]
    assert 0 < downstream.fvu(test, test * (1 + 1e-5)) < 1e-9  # a small real error stays


def test_linear_probe_separates_blobs_and_not_noise():
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=4.0, size=(3, 5))
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(size=(300, 5))
    assert downstream.linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    noise = rng.normal(size=(300, 5))
    assert downstream.linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.6


def test_evaluate_task_anomaly_and_classification(tmp_path):
    rng = np.random.default_rng(3)
    normal = rng.normal(size=(300, 4)) * [1, 1, 0.01, 0.01]  # lives in a 2-d subspace
    anomalies = rng.normal(size=(40, 4))
    test = np.concatenate([normal[200:], anomalies]).astype(np.float32)
    labels = np.r_[np.zeros(100), np.ones(40)].astype(int)
    source = TableSource("t", normal[:200], 0, test_table=test, test_labels=labels, task="anomaly")
    projection = np.diag([1.0, 1.0, 0.0, 0.0]).astype(np.float32)  # an "SAE" that keeps the normal subspace
    result = downstream.evaluate_task(source, lambda x: x @ projection, lambda z: z, tmp_path)
    assert result["anomaly_roc_auc"] > 0.95
    assert (tmp_path / "anomaly_scores.png").stat().st_size > 0 and (tmp_path / "roc.png").stat().st_size > 0

    y = rng.integers(0, 2, 300)
    x = (rng.normal(size=(300, 4)) + 3.0 * y[:, None]).astype(np.float32)
    source = TableSource("c", x[:200], 0, labels=y[:200], test_table=x[200:], test_labels=y[200:],
                         task="classification")
    result = downstream.evaluate_task(source, lambda rows: np.maximum(rows, 0), lambda z: z)
    assert set(result) == {"test_l0", "test_fvu", "pca_fvu_at_l0", "probe_accuracy_codes", "probe_accuracy_raw"}
    assert result["probe_accuracy_raw"] > 0.9 and 0 < result["test_l0"] <= 4
    assert downstream.evaluate_task(TableSource("none", x, 0), None, None) == {}


def test_analysis_helpers_encode_density_top_activating():
    config = saejax.base_config()
    config.sae.arch, config.sae.d_sae = "relu", 16
    config.norm_scale = 1.0
    sae = saejax.sae_from_config(config.sae, 8)
    import jax

    params = jax.tree.map(np.asarray, sae.init(jax.random.key(0)))
    x = np.random.default_rng(4).normal(size=(100, 8)).astype(np.float32)
    codes = analysis.encode(params, ml_collections.ConfigDict(config), x, batch_size=32)  # batched: 4 pieces
    np.testing.assert_allclose(codes, np.asarray(sae.encode(params, x)), rtol=1e-6, atol=1e-6)
    x_hat = analysis.reconstruct(params, config, x, batch_size=32)
    np.testing.assert_allclose(x_hat, np.asarray(sae.decode(params, sae.encode(params, x))), rtol=1e-5, atol=1e-5)

    codes = np.zeros((5, 3))
    codes[[0, 3, 4], 0] = [1.0, 3.0, 2.0]
    codes[1, 2] = 0.5
    np.testing.assert_allclose(analysis.feature_density(codes), [0.6, 0.0, 0.2])
    np.testing.assert_array_equal(analysis.dead_latents(codes), [1])
    rows, values = analysis.top_activating(codes, n=2)
    np.testing.assert_array_equal(rows[0], [3, 4])
    np.testing.assert_allclose(values[0], [3.0, 2.0])
    assert rows.shape == values.shape == (3, 2) and values[2, 0] == 0.5
