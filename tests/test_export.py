"""SAELens export: round trips, norm-scale folding, cfg fields, errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from saejax.errors import DataError, SaejaxError
from saejax import normalization
from saejax.export import (
    SAELENS_ARCH,
    SAELENS_WEIGHTS,
    decode_saelens,
    encode_saelens,
    export_saelens,
    load_saelens,
)

D_IN, D_SAE, K, SCALE = 6, 10, 3, 2.5

# (our arch, tied) for every exportable case.
CASES = [
    ("relu", False), ("relu", True),
    ("topk", False), ("topk", True),
    ("jumprelu", False), ("jumprelu", True),
    ("gated", False),
    ("batchtopk", False), ("batchtopk", True),
    ("matryoshka", False),
]
CASE_IDS = [f"{arch}{'-tied' if tied else ''}" for arch, tied in CASES]

# Fields of SAELens >= 6 inference configs (sae_lens/saes/sae.py SAEConfig;
# sae_lens/saes/topk_sae.py TopKSAEConfig), plus "architecture".
SAELENS_BASE_FIELDS = {
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "metadata",
}
SAELENS_TOPK_FIELDS = SAELENS_BASE_FIELDS | {"k", "rescale_acts_by_decoder_norm"}


def random_params(arch: str, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random params of `arch` in our layout (thresholds >= 0, as training keeps them)."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    params = {"W_dec": normal(D_SAE, D_IN), "b_dec": normal(D_IN) * 0.3}
    if not tied:
        params["W_enc"] = normal(D_IN, D_SAE)
    if arch == "gated":
        params.update(b_gate=normal(D_SAE), r_mag=normal(D_SAE) * 0.3,
                      b_mag=normal(D_SAE))
        return params
    params["b_enc"] = normal(D_SAE) * 0.3
    if arch == "jumprelu":
        params["threshold"] = rng.uniform(0.0, 1.5, D_SAE).astype(np.float32)
    if arch in ("batchtopk", "matryoshka"):
        params["threshold"] = np.array(0.7, np.float32)
    return params


def as_saelens(params: dict, arch: str) -> dict[str, np.ndarray]:
    """Our unfolded params seen as SAELens tensors (untied, threshold broadcast)."""
    out = {key: np.asarray(value) for key, value in params.items()}
    out.setdefault("W_enc", out["W_dec"].T)
    if arch in ("batchtopk", "matryoshka"):
        out["threshold"] = np.full(D_SAE, out["threshold"], np.float32)
    return out


def export_case(tmp_path, arch: str, tied: bool, **kwargs):
    """Export random params of a case; return (params, loaded params, loaded cfg)."""
    params = random_params(arch, tied)
    out = export_saelens(tmp_path / arch, params, arch=arch, d_in=D_IN, d_sae=D_SAE,
                         k=K, **kwargs)
    return (params, *load_saelens(out))


@pytest.mark.parametrize("arch,tied", CASES, ids=CASE_IDS)
def test_round_trip(tmp_path, arch, tied):
    params, loaded, cfg = export_case(tmp_path, arch, tied, norm_scale=SCALE)
    sae_arch = SAELENS_ARCH[arch]
    assert cfg["architecture"] == sae_arch
    assert set(loaded) == set(SAELENS_WEIGHTS[sae_arch])
    assert all(v.dtype == np.float32 for v in loaded.values())
    expected = as_saelens(normalization.fold(params, SCALE), arch)
    for key, value in loaded.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
    assert loaded["W_enc"].shape == (D_IN, D_SAE)
    assert loaded["W_dec"].shape == (D_SAE, D_IN)
    if arch in ("batchtopk", "matryoshka"):
        np.testing.assert_array_equal(loaded["threshold"], np.full(D_SAE, 0.7, np.float32))
    if tied:
        np.testing.assert_allclose(loaded["W_enc"], params["W_dec"].T * SCALE)


@pytest.mark.parametrize("arch,tied", CASES, ids=CASE_IDS)
def test_export_reproduces_outputs_on_raw_inputs(tmp_path, arch, tied):
    params, loaded, cfg = export_case(tmp_path, arch, tied, norm_scale=SCALE)
    x_raw = np.random.default_rng(1).normal(size=(16, D_IN)).astype(np.float32)
    original = as_saelens(params, arch)
    z_ref = encode_saelens(original, cfg, SCALE * x_raw)
    z = encode_saelens(loaded, cfg, x_raw)
    assert (z_ref != 0).any() and (z_ref == 0).any()  # the test exercises sparsity
    np.testing.assert_array_equal(z != 0, z_ref != 0)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    x_hat = decode_saelens(loaded, cfg, z)
    x_hat_ref = decode_saelens(original, cfg, z_ref) / SCALE
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=1e-5, atol=1e-5)


def test_fold_norm_scale_algebra_and_jax_arrays():
    params = random_params("gated", tied=False)
    folded = normalization.fold({k: jnp.asarray(v) for k, v in params.items()}, 4.0)
    assert isinstance(folded["W_enc"], jnp.ndarray)
    np.testing.assert_allclose(folded["W_enc"], params["W_enc"] * 4.0)
    np.testing.assert_allclose(folded["W_dec"], params["W_dec"] / 4.0)
    np.testing.assert_allclose(folded["b_dec"], params["b_dec"] / 4.0)
    for key in ("b_gate", "r_mag", "b_mag"):
        np.testing.assert_array_equal(folded[key], params[key])
    same = normalization.fold(params, 1.0)
    assert set(same) == set(params)
    tied = normalization.fold(random_params("relu", tied=True), 1.0)
    np.testing.assert_array_equal(tied["W_enc"], tied["W_dec"].T)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_fold_rejects_bad_scale(scale):
    with pytest.raises(SaejaxError, match="norm scale"):
        normalization.fold(random_params("relu", False), scale)


def test_fold_rejects_unknown_keys():
    with pytest.raises(SaejaxError, match="layers"):
        normalization.fold({"W_dec": np.ones((2, 2)), "b_dec": np.ones(2),
                         "layers": np.ones(1)}, 2.0)


def test_cfg_has_the_fields_saelens_reads(tmp_path):
    _, _, cfg = export_case(tmp_path, "topk", False, norm_scale=SCALE,
                            metadata={"hook_name": "blocks.3.hook_resid_post"})
    assert set(cfg) == SAELENS_TOPK_FIELDS
    assert cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D_IN, D_SAE, "float32")
    assert cfg["device"] == "cpu" and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    # >= 6.0.0 keeps SAELens' loader on its v6 path (handle_config_defaulting)
    assert tuple(int(p) for p in meta["sae_lens_version"].split(".")) >= (6, 0, 0)
    assert meta["hook_name"] == "blocks.3.hook_resid_post"
    assert meta["saejax"] == {"arch": "topk", "k": K, "tied": False,
                              "norm_scale_folded": SCALE}
    for arch in ("relu", "jumprelu", "gated", "batchtopk"):
        _, _, cfg = export_case(tmp_path, arch, False)
        assert set(cfg) == SAELENS_BASE_FIELDS


def test_cfg_json_is_plain_json(tmp_path):
    out = export_saelens(tmp_path / "sae", random_params("relu", False), arch="relu",
                         d_in=D_IN, d_sae=D_SAE)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json",
                                                     "sae_weights.safetensors"]
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "standard"


def test_encode_saelens_small_cases():
    eye = np.eye(4, dtype=np.float32)
    base = {"W_enc": eye, "W_dec": eye, "b_enc": np.zeros(4, np.float32),
            "b_dec": np.zeros(4, np.float32)}
    x = np.array([[3.0, -1.0, 2.0, 0.5]], np.float32)
    cfg = {"architecture": "topk", "k": 2}
    np.testing.assert_array_equal(encode_saelens(base, cfg, x), [[3, 0, 2, 0]])
    np.testing.assert_array_equal(encode_saelens(base, {**cfg, "k": 1}, -x),
                                  [[0, 1, 0, 0]])
    np.testing.assert_array_equal(
        encode_saelens(base, {"architecture": "standard"}, x), [[3, 0, 2, 0.5]])
    jump = {**base, "threshold": np.full(4, 1.0, np.float32)}
    np.testing.assert_array_equal(
        encode_saelens(jump, {"architecture": "jumprelu"}, x), [[3, 0, 2, 0]])
    gated = {"W_enc": eye, "W_dec": eye, "b_dec": np.ones(4, np.float32),
             "b_gate": np.array([0, 0, -5, 0], np.float32),
             "r_mag": np.array([0, 0, 0, np.log(2)], np.float32),
             "b_mag": np.array([1, 0, 0, 0], np.float32)}
    # sae_in = x - 1 = [2, -2, 1, -0.5]; gate open on 0 and (2 - 5 < 0) closed on 2
    z = encode_saelens(gated, {"architecture": "gated"}, x)
    np.testing.assert_allclose(z, [[3, 0, 0, 0]])
    np.testing.assert_allclose(decode_saelens(gated, {}, z), [[4, 1, 1, 1]])


def test_mlp_and_unknown_arch_are_not_exportable(tmp_path):
    with pytest.raises(SaejaxError, match="mlp.*not exportable"):
        export_saelens(tmp_path, {}, arch="mlp", d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(SaejaxError, match="'banana'"):
        export_saelens(tmp_path, {}, arch="banana", d_in=D_IN, d_sae=D_SAE)


def test_export_input_errors_name_the_culprit(tmp_path):
    with pytest.raises(SaejaxError, match="k >= 1"):
        export_saelens(tmp_path, random_params("topk", False), arch="topk",
                       d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(SaejaxError, match=r"'W_enc' has shape \(6, 10\)"):
        export_saelens(tmp_path, random_params("relu", False), arch="relu",
                       d_in=D_IN + 1, d_sae=D_SAE)
    with pytest.raises(SaejaxError, match="'threshold'"):
        export_saelens(tmp_path, random_params("relu", False), arch="jumprelu",
                       d_in=D_IN, d_sae=D_SAE)
    params = random_params("batchtopk", False)
    params["threshold"] = np.ones(D_SAE, np.float32)
    with pytest.raises(SaejaxError, match="batchtopk threshold must be a scalar"):
        export_saelens(tmp_path, params, arch="batchtopk", d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(SaejaxError, match="JSON"):
        export_saelens(tmp_path, random_params("relu", False), arch="relu",
                       d_in=D_IN, d_sae=D_SAE, metadata={"bad": object()})


def test_load_missing_files_names_the_dir(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}.*cfg.json"):
        load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(DataError, match="sae_weights.safetensors"):
        load_saelens(tmp_path)
