"""Shared test fixtures."""

import numpy as np
import pytest

import saejax


def _exact_sae(d: int):
    """(sae, params): a ReLU SAE of width 2d with latents [x, -x]; relu(x) - relu(-x) = x, so it
    reconstructs every input exactly and every latent fires on some input."""
    sae = saejax.make_sae("relu", d, 2 * d)
    eye = np.eye(d, dtype=np.float32)
    params = {"W_enc": np.concatenate([eye, -eye], 1), "b_enc": np.zeros(2 * d, np.float32),
              "W_dec": np.concatenate([eye, -eye], 0), "b_dec": np.zeros(d, np.float32)}
    return sae, params


@pytest.fixture(scope="session")
def exact_sae():
    """The `_exact_sae(d)` factory."""
    return _exact_sae
