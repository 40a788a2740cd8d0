"""Shared test fixtures, and helpers the test modules import (`from conftest import ...`)."""

import jax
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


def params_with_some_latents_on(sae, seed: int = 0) -> dict[str, np.ndarray]:
    """`sae`'s initial params (numpy) with random biases and thresholds that leave some latents on
    and some off on typical inputs."""
    params = jax.tree.map(np.asarray, sae.init(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    for key in ("b_enc", "b_gate", "b_mag", "b_dec"):
        if key in params:
            params[key] = rng.normal(scale=0.1, size=params[key].shape).astype(np.float32)
    if "threshold" in params:
        params["threshold"] = np.abs(rng.normal(scale=0.05, size=params["threshold"].shape)).astype(np.float32)
    return params
