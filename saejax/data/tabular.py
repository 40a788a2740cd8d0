"""Tabular data for anomaly detection: river's bundled Statlog Shuttle (49,097 rows, 9 sensor
readings; 3,511 anomalies, label 1), no download.

Features are standardised with the mean and standard deviation of the normal training rows. With
``data.tabular_rows='normal'`` (default) the SAE trains on normal rows only, the usual set-up for
scoring anomalies by reconstruction error, and the held-out split (`test_table`, `test_labels`)
is a seeded ``data.test_fraction`` of the normal rows plus every anomaly; ``'all'`` trains on
every row but a held-out fraction.

river is an optional dependency (``pip install 'saejax[tabular]'``), imported only here.
"""

import numpy as np

from saejax.data.table import TableSource, split_rows
from saejax.errors import ConfigError

DATASETS = ("shuttle",)
ROW_CHOICES = ("normal", "all")


def load_shuttle() -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [49097, 9], anomaly labels int64 [49097]) in river's order."""
    try:
        from river import datasets
    except ImportError:
        raise ConfigError("data.source='tabular' needs river: pip install 'saejax[tabular]'") from None
    rows, labels = [], []
    for x, y in datasets.Shuttle():
        rows.append([x[f"f{i}"] for i in range(1, 10)])
        labels.append(int(y))
    return np.asarray(rows, np.float64), np.asarray(labels, np.int64)


def standardise(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(features - mean) / std with the statistics of `reference` rows (std 0 -> 1). float32."""
    std = reference.std(axis=0)
    return ((features - reference.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def tabular_source(seed: int, dataset: str = "shuttle", rows: str = "normal", test_fraction: float = 0.2) -> TableSource:
    """Training rows and a held-out split for scoring: `test_fraction` of the normal rows plus
    every anomaly ('normal'), or `test_fraction` of all rows ('all')."""
    if dataset not in DATASETS:
        raise ConfigError(f"data.tabular_dataset: unknown {dataset!r}; valid: {', '.join(DATASETS)}")
    if rows not in ROW_CHOICES:
        raise ConfigError(f"data.tabular_rows: unknown {rows!r}; valid: {', '.join(ROW_CHOICES)}")
    features, labels = load_shuttle()
    if rows == "normal":
        normal = np.flatnonzero(labels == 0)
        train_at, test_at = split_rows(normal.size, seed, test_fraction)
        train, test = normal[train_at], np.sort(np.concatenate([normal[test_at], np.flatnonzero(labels == 1)]))
    else:
        train, test = split_rows(labels.size, seed, test_fraction)
    table = standardise(features, features[train][labels[train] == 0])
    return TableSource("tabular", table[train], seed, labels=labels[train], test_table=table[test],
                       test_labels=labels[test], task="anomaly")
