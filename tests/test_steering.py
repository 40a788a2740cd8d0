"""Steering (saejax.steering) on a tiny random Gemma-3: a direction added at the last block raises the
probability of the token it promotes and lowers it when subtracted; reports, generation and errors."""

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from saejax import steering  # noqa: E402
from saejax.errors import ConfigError  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402
from test_stream import tiny_bert, tiny_gemma  # noqa: E402

TEXTS = ["the cat sat", "a dog", "sparse code of jax", "on the mat"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return load_text_model(str(tiny_gemma(tmp_path_factory.mktemp("models") / "gemma")))


def test_steering_moves_the_promoted_token_in_the_direction_of_the_latent(gemma):
    direction = np.random.default_rng(0).standard_normal(gemma.d_model).astype(np.float32)
    promoted = np.array(gemma.unembed(direction))
    promoted[:4] = -np.inf  # pad, eos, bos, unk: a real token
    target = int(np.argmax(promoted))
    layer = gemma.n_layers - 1
    clean, up, down = (steering.log_probs(gemma, TEXTS, layer, "resid_post", direction, s)[:, target]
                       for s in (0.0, 3.0, -3.0))
    assert (up > clean).all() and (down < clean).all()
    report = steering.next_token_shift(gemma, TEXTS, layer, "resid_post", direction, strengths=(-3.0, 3.0),
                                       target=[target], batch_size=3)
    assert report[3.0]["target"][0] > 0 > report[-3.0]["target"][0]
    assert report[3.0]["kl"] > 0 and len(report[3.0]["promoted"]) == 10
    assert report[3.0]["promoted"][0][1] >= report[3.0]["promoted"][-1][1] > report[3.0]["suppressed"][0][1]
    np.testing.assert_allclose(steering.log_probs(gemma, TEXTS[:1], 1, "resid_post", direction, 0.0),
                               steering.log_probs(gemma, TEXTS[:1], 1, "resid_post", 0 * direction, 5.0), atol=1e-6)
    clean_text = steering.generate(gemma, "the cat", layer, "resid_post", direction, 0.0, n_tokens=4)
    steered = steering.generate(gemma, "the cat", layer, "resid_post", direction, 50.0, n_tokens=4)
    strongest = int(np.argmax(gemma.unembed(direction)))  # what a large push makes the model say, again and again
    assert clean_text.startswith("the cat") and steered == "the cat" + gemma.token_strings([strongest])[0] * 4


def test_steering_needs_a_causal_model_and_a_direction_of_its_width(gemma, tmp_path):
    with pytest.raises(ConfigError, match="not a causal LM"):
        bert = load_text_model(str(tiny_bert(tmp_path / "bert")))
        steering.log_probs(bert, TEXTS, 1, "resid_post", np.zeros(16), 1.0)
    with pytest.raises(ConfigError, match=r"a steering direction has shape \(7,\)"):
        steering.log_probs(gemma, TEXTS, 1, "resid_post", np.zeros(7), 1.0)
    with pytest.raises(ConfigError, match="layer 9"):
        steering.log_probs(gemma, TEXTS, 9, "resid_post", np.zeros(gemma.d_model), 1.0)
