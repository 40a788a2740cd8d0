"""Interop: SAELens' own loader reads our exports and computes what we compute (needs the
`saelens` extra: sae-lens with torch==2.13.0, CPU), and SAEs trained elsewhere (SAELens folders,
Gemma Scope params.npz) load into saejax with identical outputs."""

import numpy as np
import pytest
from conftest import params_with_some_latents_on

import saejax
from saejax import analysis, export
from saejax.errors import DataError

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

ARCHS = ("relu", "topk", "jumprelu", "gated", "batchtopk")
D_IN, D_SAE, NORM_SCALE = 12, 40, 2.5


def trained_like_params(arch, seed=0):
    """Random params with biases that leave some latents active and some not."""
    sae = saejax.make_sae(arch, D_IN, D_SAE, k=5)
    return sae, params_with_some_latents_on(sae, seed)


def inputs(n=64):
    return np.random.default_rng(1).normal(size=(n, D_IN)).astype(np.float32)


@pytest.mark.saelens
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_our_export_and_matches_encode_decode(tmp_path, arch):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    sae, params = trained_like_params(arch)
    export.export_saelens(tmp_path, params, arch=arch, d_in=D_IN, d_sae=D_SAE, k=5, norm_scale=NORM_SCALE)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    raw = inputs()
    with torch.no_grad():
        z_theirs = theirs.encode(torch.from_numpy(raw)).numpy()
        x_theirs = theirs.decode(torch.from_numpy(z_theirs)).numpy()
    z_ours = np.asarray(sae.encode(params, raw * NORM_SCALE))  # ours was trained on scaled inputs
    x_ours = np.asarray(sae.decode(params, z_ours)) / NORM_SCALE
    assert (z_ours != 0).any() and (z_ours == 0).any()
    np.testing.assert_allclose(z_theirs, z_ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_theirs, x_ours, rtol=1e-5, atol=1e-5)
    # and back: SAELens' folder loads into saejax with the same outputs
    loaded, config = saejax.load(tmp_path)
    np.testing.assert_allclose(analysis.encode(loaded, config, raw), z_ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ("relu", "topk", "jumprelu", "gated"))
def test_import_of_a_saelens_folder_without_b_dec_on_the_input(tmp_path, arch):
    """apply_b_dec_to_input=false (pre = x @ W_enc + b_enc) folds into our biases exactly."""
    _, params = trained_like_params(arch, seed=2)
    export.export_saelens(tmp_path, params, arch=arch, d_in=D_IN, d_sae=D_SAE, k=5)
    tensors, cfg = export.load_saelens(tmp_path)
    cfg["apply_b_dec_to_input"] = False
    (tmp_path / export.CFG_FILENAME).write_text(__import__("json").dumps(cfg))
    raw = inputs()
    reference = dict(cfg, apply_b_dec_to_input=False)
    z_ref = export.encode_saelens(tensors, reference, raw)
    loaded, config = saejax.load(tmp_path)
    assert config.sae.arch == arch and config.sae.d_sae == D_SAE
    np.testing.assert_allclose(analysis.encode(loaded, config, raw), z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(analysis.reconstruct(loaded, config, raw), export.decode_saelens(tensors, cfg, z_ref),
                               rtol=1e-5, atol=1e-5)


def test_import_gemma_scope_params_npz(tmp_path):
    rng = np.random.default_rng(3)
    w_enc = rng.normal(scale=0.3, size=(D_IN, D_SAE)).astype(np.float32)
    gemma = {"W_enc": w_enc, "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
             "b_enc": rng.normal(scale=0.1, size=D_SAE).astype(np.float32),
             "b_dec": rng.normal(scale=0.5, size=D_IN).astype(np.float32),
             "threshold": np.abs(rng.normal(scale=0.2, size=D_SAE)).astype(np.float32)}
    np.savez(tmp_path / "params.npz", **gemma)
    raw = inputs()
    pre = raw @ gemma["W_enc"] + gemma["b_enc"]  # Gemma Scope's JumpReLU: no b_dec on the input
    z_ref = np.maximum(pre, 0) * (pre > gemma["threshold"])
    params, config = saejax.load(tmp_path / "params.npz")
    assert config.sae.arch == "jumprelu" and config.sae.d_sae == D_SAE
    z = analysis.encode(params, config, raw)
    assert (z != 0).any()
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(analysis.reconstruct(params, config, raw), z_ref @ gemma["W_dec"] + gemma["b_dec"],
                               rtol=1e-5, atol=1e-4)
    del gemma["threshold"]
    np.savez(tmp_path / "bad.npz", **gemma)
    with pytest.raises(DataError, match="missing \\['threshold'\\]"):
        saejax.load(tmp_path / "bad.npz")
