"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download): the design
documents' image example. Pixels 0…16 are scaled to [0, 1]; each row is a flattened 8×8 image
(``d_in = 64``), the digit is kept as a label for probes.

scikit-learn is an optional dependency (``pip install 'saejax[digits]'``), imported only here.
"""

import numpy as np

from saejax.data.table import TableSource
from saejax.errors import ConfigError


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [1797, 64] in [0, 1], labels int64 [1797])."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ConfigError("data.source='digits' needs scikit-learn: pip install 'saejax[digits]'") from None
    bunch = sklearn_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def digits_source(seed: int) -> TableSource:
    images, labels = load_digits()
    return TableSource("digits", images, seed, labels=labels, image_shape=(8, 8))
