"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download): the design
documents' image example. Pixels 0…16 are scaled to [0, 1]; each row is a flattened 8×8 image
(``d_in = 64``), the digit is kept as a label for probes. A seeded ``data.test_fraction`` of the
images (default 20 %) is held out of training for the probe and PCA comparisons.

scikit-learn is an optional dependency (``pip install 'saejax[digits]'``), imported only here.
"""

import numpy as np

from saejax.data.table import TableSource, split_rows
from saejax.errors import ConfigError


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [1797, 64] in [0, 1], labels int64 [1797])."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ConfigError("data.source='digits' needs scikit-learn: pip install 'saejax[digits]'") from None
    bunch = sklearn_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def digits_source(seed: int, test_fraction: float = 0.2) -> TableSource:
    """Training images and a held-out `test_fraction` of them (for probes and the PCA baseline)."""
    images, labels = load_digits()
    train, test = split_rows(len(images), seed, test_fraction)
    return TableSource("digits", images[train], seed, labels=labels[train], image_shape=(8, 8),
                       test_table=images[test], test_labels=labels[test], task="classification")
