"""Imports checked at the door: `saejax.load` on a damaged export, SAELens folder, Gemma Scope
params.npz or workdir checkpoint, and a damaged store manifest, is one DataError naming the file and
the tensor or field; valid exports of every exportable architecture still load and round-trip.
All in-process: each case builds a small valid input in tmp_path, damages it, and loads it."""

import json
import shutil
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import params_with_some_latents_on
from safetensors.numpy import load_file, save_file

import saejax
from saejax import analysis, checkpoint, export, from_config
from saejax import step as step_lib
from saejax.config import base_config
from saejax.data import store
from saejax.errors import DataError

D_IN, D_SAE, K, SCALE = 8, 16, 3, 2.5
CFG, WEIGHTS, RUN_CONFIG = export.CFG_FILENAME, export.WEIGHTS_FILENAME, export.SAEJAX_CONFIG_FILENAME
EXPORTABLE = tuple(name for name in saejax.ARCHITECTURES if export.saelens_export(name))


def run_config(arch: str, tied: bool = False):
    """The run config an export of `arch` is saved with."""
    config = base_config()
    config.sae.arch, config.sae.d_sae, config.sae.k, config.sae.tied = arch, D_SAE, K, tied
    return config


def write_export(folder: Path, arch: str = "relu", with_run_config: bool = True, tied: bool = False):
    """A saejax export of a fresh `arch` SAE in `folder` (with saejax_config.json, or as a plain
    SAELens folder without it); returns (sae, its unfolded params)."""
    config = run_config(arch, tied)
    sae = from_config.sae_of(config, D_IN)
    params = params_with_some_latents_on(sae)
    export.export_saelens(folder, params, arch=arch, d_in=D_IN, d_sae=D_SAE, k=K, norm_scale=SCALE)
    if with_run_config:
        (folder / RUN_CONFIG).write_text(config.to_json_best_effort(indent=2))
    return sae, params


def gemma_tensors(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(scale=0.3, size=(D_IN, D_SAE)).astype(np.float32),
            "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
            "b_enc": rng.normal(scale=0.1, size=D_SAE).astype(np.float32),
            "b_dec": rng.normal(scale=0.5, size=D_IN).astype(np.float32),
            "threshold": np.abs(rng.normal(scale=0.2, size=D_SAE)).astype(np.float32)}


def inputs(n: int = 32) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, D_IN)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Damage: each returns (the path to load, the damaged file).

def cfg_edit(arch="relu", run_config=True, **changes):
    """An export whose cfg.json has `changes` (None: the field removed)."""
    def make(tmp: Path):
        write_export(tmp, arch, run_config)
        cfg = json.loads((tmp / CFG).read_text())
        for field, value in changes.items():
            if value is None:
                cfg.pop(field, None)
            else:
                cfg[field] = value
        (tmp / CFG).write_text(json.dumps(cfg))
        return tmp, tmp / CFG
    return make


def metadata_edit(**changes):
    """An export whose cfg.json's metadata.saejax has `changes`."""
    def make(tmp: Path):
        write_export(tmp)
        cfg = json.loads((tmp / CFG).read_text())
        cfg["metadata"]["saejax"].update(changes)
        (tmp / CFG).write_text(json.dumps(cfg))
        return tmp, tmp / CFG
    return make


def file_text(name: str, data: bytes, arch="relu", run_config=True):
    """An export whose file `name` holds `data` instead."""
    def make(tmp: Path):
        write_export(tmp, arch, run_config)
        (tmp / name).write_bytes(data)
        return tmp, tmp / name
    return make


def truncated_weights(tmp: Path):
    write_export(tmp)
    raw = (tmp / WEIGHTS).read_bytes()
    (tmp / WEIGHTS).write_bytes(raw[:len(raw) - 40])
    return tmp, tmp / WEIGHTS


def tensor_edit(edit, arch="relu", run_config=True):
    """An export whose tensors are rewritten by edit(dict of arrays)."""
    def make(tmp: Path):
        write_export(tmp, arch, run_config)
        tensors = load_file(str(tmp / WEIGHTS))
        edit(tensors)
        save_file(tensors, str(tmp / WEIGHTS))
        return tmp, tmp / WEIGHTS
    return make


def run_config_edit(edit, arch="relu"):
    """An export whose saejax_config.json dict is rewritten by edit(dict)."""
    def make(tmp: Path):
        write_export(tmp, arch)
        config = json.loads((tmp / RUN_CONFIG).read_text())
        edit(config)
        (tmp / RUN_CONFIG).write_text(json.dumps(config))
        return tmp, tmp / RUN_CONFIG
    return make


def gemma_edit(edit=None, data: bytes | None = None):
    """A Gemma Scope params.npz whose arrays are rewritten by edit(dict), or that holds `data`."""
    def make(tmp: Path):
        path = tmp / "params.npz"
        if data is not None:
            path.write_bytes(data)
        else:
            tensors = gemma_tensors()
            edit(tensors)
            np.savez(path, **tensors)
        return path, path
    return make


def truncated_npz(tmp: Path):
    path = tmp / "params.npz"
    np.savez(path, **gemma_tensors())
    path.write_bytes(path.read_bytes()[:300])
    return path, path


def npy_as_npz(tmp: Path):
    np.save(tmp / "plain.npy", np.ones(3))
    path = tmp / "params.npz"
    (tmp / "plain.npy").rename(path)
    return path, path


def pop(*names):
    return lambda tensors: [tensors.pop(name) for name in names]


def put(**arrays):
    return lambda tensors: tensors.update(arrays)


def nan_at(name):
    def edit(tensors):
        tensors[name] = tensors[name].copy()
        tensors[name].flat[0] = np.nan
    return edit


def set_path(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config):
        node = config
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return edit


def blame(name: str, make):
    """`make`, with the file `name` of its folder as the one the message must name."""
    def blamed(tmp: Path):
        path, _ = make(tmp)
        return path, tmp / name
    return blamed


def huge_gated_fold(tmp: Path):
    """A gated SAELens folder with apply_b_dec_to_input=false whose b_dec folds into b_mag only as
    inf: b_dec @ W_enc * exp(r_mag) overflows float32."""
    path, _ = cfg_edit("gated", run_config=False, apply_b_dec_to_input=False)(tmp)
    tensors = load_file(str(tmp / WEIGHTS))
    tensors["r_mag"] = np.full(D_SAE, 88.0, F32)
    tensors["b_dec"] = np.full(D_IN, 1e3, F32)
    save_file(tensors, str(tmp / WEIGHTS))
    return path, tmp / WEIGHTS


F32 = np.float32
DEEP = b"[" * 100_000 + b"]" * 100_000

# id: (make, what the message must say after the file's name: the tensor or field at fault)
CASES = {
    # tensors against cfg.json and each other
    "W_dec_rows_against_W_enc": (tensor_edit(put(W_dec=np.ones((5, D_IN), F32))), "tensor W_dec has shape (5, 8)"),
    "W_enc_rank_1": (tensor_edit(put(W_enc=np.ones(D_IN, F32))), "tensor W_enc has shape (8,)"),
    "b_enc_too_long": (tensor_edit(put(b_enc=np.ones(D_SAE + 1, F32))), "tensor b_enc has shape (17,)"),
    "b_dec_scalar": (tensor_edit(put(b_dec=np.ones((), F32))), "tensor b_dec has shape ()"),
    "W_enc_integers": (tensor_edit(put(W_enc=np.ones((D_IN, D_SAE), np.int32))), "tensor W_enc has dtype int32"),
    "b_dec_nan": (tensor_edit(nan_at("b_dec")), "tensor b_dec holds 1 non-finite"),
    "W_enc_overflows_float32": (tensor_edit(put(W_enc=np.full((D_IN, D_SAE), 1e300))),
                                "tensor W_enc holds 128 non-finite"),
    "jumprelu_without_threshold": (tensor_edit(pop("threshold"), arch="jumprelu"), "missing ['threshold']"),
    "relu_with_threshold": (tensor_edit(put(threshold=np.zeros(D_SAE, F32))), "unexpected ['threshold']"),
    "gated_without_r_mag": (tensor_edit(pop("r_mag"), arch="gated", run_config=False), "missing ['r_mag']"),
    "unknown_tensor": (tensor_edit(put(extra=np.zeros(3, F32)), run_config=False), "unexpected ['extra']"),
    "cfg_d_sae_against_tensors": (blame(WEIGHTS, cfg_edit(d_sae=D_SAE + 1)),
                                  "tensor W_dec has shape (16, 8), expected [d_sae, d_in] = (17, 8)"),
    # the weights file itself
    "weights_truncated": (truncated_weights, "not a readable safetensors file"),
    "weights_not_safetensors": (file_text(WEIGHTS, b"hello, not tensors"), "not a readable safetensors file"),
    "weights_empty": (file_text(WEIGHTS, b""), "not a readable safetensors file"),
    # cfg.json's own types
    "cfg_is_a_list": (file_text(CFG, b"[1, 2, 3]"), "JSON object"),
    "cfg_is_null": (file_text(CFG, b"null", run_config=False), "JSON object"),
    "cfg_invalid_json": (file_text(CFG, b'{"d_in": 8,'), "JSON"),
    "cfg_not_utf8": (file_text(CFG, b'{"d_in": "\xff\xfe"}'), "UTF-8"),
    "cfg_nested_too_deeply": (file_text(CFG, DEEP), "nested"),
    "cfg_k_abc": (cfg_edit("topk", k="abc"), "k must be a positive integer, got 'abc'"),
    "cfg_k_missing_for_topk": (cfg_edit("topk", run_config=False, k=None), "k must be a positive integer, got None"),
    "cfg_k_above_d_sae": (cfg_edit("topk", k=D_SAE + 1), "k=17 exceeds d_sae=16"),
    "cfg_d_in_string": (cfg_edit(d_in="8"), "d_in must be a positive integer"),
    "cfg_d_in_missing": (cfg_edit(run_config=False, d_in=None), "d_in must be a positive integer"),
    "cfg_d_sae_boolean": (cfg_edit(d_sae=True), "d_sae must be a positive integer"),
    "cfg_architecture_unknown": (cfg_edit(architecture="banana"), "architecture"),
    "cfg_architecture_not_a_string": (cfg_edit(run_config=False, architecture=["standard"]), "architecture"),
    "cfg_apply_b_dec_to_input_string": (cfg_edit(apply_b_dec_to_input="yes"), "apply_b_dec_to_input"),
    "cfg_metadata_list": (cfg_edit(metadata=[1]), "metadata"),
    "cfg_norm_scale_negative": (metadata_edit(norm_scale_folded=-1.0), "norm_scale_folded"),
    "cfg_norm_scale_string": (metadata_edit(norm_scale_folded="x"), "norm_scale_folded"),
    # saejax_config.json against cfg.json and the tensors
    "claims_topk_next_to_relu_tensors": (run_config_edit(set_path("sae", "arch", "topk")), "sae.arch"),
    "claims_relu_next_to_jumprelu_tensors": (run_config_edit(set_path("sae", "arch", "relu"), "jumprelu"),
                                             "sae.arch"),
    "claims_an_unexportable_arch": (run_config_edit(set_path("sae", "arch", "mlp")), "sae.arch"),
    "claims_another_d_sae": (run_config_edit(set_path("sae", "d_sae", D_SAE * 2)), "sae.d_sae"),
    "claims_another_k": (run_config_edit(set_path("sae", "k", K + 1), "topk"), "sae.k"),
    "claims_another_arch_than_metadata": (run_config_edit(set_path("sae", "arch", "batchtopk"), "jumprelu"),
                                          "metadata.saejax.arch"),
    "run_config_no_sae": (run_config_edit(set_path("sae", None)), "sae must be an object"),
    "run_config_no_train": (run_config_edit(set_path("train", None)), "no field 'train'"),
    "run_config_bad_value": (run_config_edit(set_path("sae", "tied", True), "gated"), "sae.tied"),
    "run_config_is_a_list": (file_text(RUN_CONFIG, b"[]"), "JSON object"),
    "run_config_not_utf8": (file_text(RUN_CONFIG, b"\xff{}"), "UTF-8"),
    "fold_overflows": (huge_gated_fold, "tensor b_mag becomes non-finite"),
    # Gemma Scope params.npz
    "npz_not_a_zip": (gemma_edit(data=b"not a zip at all"), "not a .npz archive"),
    "npz_truncated": (truncated_npz, "not a .npz archive"),
    "npz_is_a_npy": (npy_as_npz, "not a .npz archive"),
    "npz_missing_threshold": (gemma_edit(pop("threshold")), "missing ['threshold']"),
    "npz_extra_tensor": (gemma_edit(put(b_gate=np.zeros(D_SAE, F32))), "unexpected ['b_gate']"),
    "npz_W_enc_rank_1": (gemma_edit(put(W_enc=np.ones(D_IN, F32))), "tensor W_enc has shape (8,)"),
    "npz_W_dec_mismatch": (gemma_edit(put(W_dec=np.ones((5, D_IN), F32))), "tensor W_dec has shape (5, 8)"),
    "npz_object_array": (gemma_edit(put(b_dec=np.array([{"a": 1}] * D_IN, dtype=object))),
                         "array b_dec cannot be read"),
    "npz_strings": (gemma_edit(put(b_dec=np.array(["a"] * D_IN))), "tensor b_dec has dtype <U1"),
    "npz_threshold_inf": (gemma_edit(put(threshold=np.full(D_SAE, np.inf, F32))),
                          "tensor threshold holds 16 non-finite"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_import_is_one_data_error_naming_the_file_and_culprit(tmp_path, case):
    make, culprit = CASES[case]
    path, damaged = make(tmp_path)
    with pytest.raises(DataError) as caught:
        saejax.load(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(damaged)), message
    assert culprit in message.removeprefix(str(damaged)), message


# ---------------------------------------------------------------------------------------------
# Workdir checkpoints and store manifests.

@pytest.fixture(scope="module")
def workdir_template(tmp_path_factory) -> Path:
    """A workdir with one checkpoint (step 1) of a relu SAE, written without training."""
    workdir = tmp_path_factory.mktemp("workdir")
    config = run_config("relu")
    sae, loss, optimizer = from_config.model_from_config(config, D_IN)
    state = step_lib.state_at_step_zero(sae, loss, optimizer, sae.init(jax.random.key(0)), SCALE)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    ckpt.save(1, state, json.loads(config.to_json_best_effort()))
    ckpt.close()
    return workdir


def _config_files(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "checkpoints" / "1" / checkpoint.CONFIG).rglob("*") if p.is_file()]


def _rewrite_saved_config(workdir: Path, edit) -> None:
    for path in _config_files(workdir):
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(saved, dict) and "sae" in saved:
            edit(saved)
            path.write_text(json.dumps(saved))
            return
    raise AssertionError(f"no saved config among {_config_files(workdir)}")


def _truncate_state(workdir: Path) -> None:
    """Truncate the state's data file (state/d/*: Orbax's merged OCDBT data, metadata included)."""
    for path in (workdir / "checkpoints" / "1" / checkpoint.STATE / "d").iterdir():
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 3)


def _save_non_finite_params(workdir: Path) -> None:
    """Replace step 1 by a checkpoint whose W_dec holds a NaN."""
    config = run_config("relu")
    sae, loss, optimizer = from_config.model_from_config(config, D_IN)
    params = dict(sae.init(jax.random.key(0)))
    params["W_dec"] = params["W_dec"].at[0, 0].set(np.nan)
    shutil.rmtree(workdir / "checkpoints")
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    state = step_lib.state_at_step_zero(sae, loss, optimizer, params, SCALE)
    ckpt.save(1, state, json.loads(config.to_json_best_effort()))
    ckpt.close()


WORKDIR_CASES = {
    "saved_config_unreadable": (lambda w: [p.write_bytes(b"\xff") for p in _config_files(w)],
                                "no checkpoint can be read (step 1:"),
    "saved_config_unknown_arch": (lambda w: _rewrite_saved_config(w, set_path("sae", "arch", "banana")),
                                  "sae.arch='banana'"),
    "saved_config_without_train": (lambda w: _rewrite_saved_config(w, set_path("train", None)), "train"),
    "state_truncated": (_truncate_state, "no checkpoint can be read (step 1: its state metadata"),
    "state_non_finite": (_save_non_finite_params, "can be restored (step 1: holds non-finite values)"),
}


def test_a_valid_workdir_template_loads(workdir_template, tmp_path):
    shutil.copytree(workdir_template, tmp_path / "run")
    params, config = saejax.load(tmp_path / "run")
    assert config.sae.arch == "relu" and params["W_dec"].shape == (D_SAE, D_IN)
    assert config.norm_scale == pytest.approx(SCALE)


@pytest.mark.parametrize("case", sorted(WORKDIR_CASES))
def test_damaged_workdir_checkpoint_is_one_data_error(workdir_template, tmp_path, case):
    damage, culprit = WORKDIR_CASES[case]
    workdir = tmp_path / "run"
    shutil.copytree(workdir_template, workdir)
    damage(workdir)
    with pytest.raises(DataError) as caught:
        saejax.load(workdir)
    message = str(caught.value)
    assert "\n" not in message and str(workdir / "checkpoints") in message and culprit in message, message


@pytest.mark.parametrize("text,culprit", [(b'{"format": "\xff"}', "UTF-8"), (DEEP, "nested"),
                                          (b"[1, 2]", "not a saejax shard manifest")],
                         ids=["not_utf8", "nested_too_deeply", "not_an_object"])
def test_damaged_store_manifest_is_one_data_error(tmp_path, text, culprit):
    path = tmp_path / "manifest.json"
    path.write_bytes(text)
    with pytest.raises(DataError) as caught:
        store.read_manifest(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and culprit in message, message


# ---------------------------------------------------------------------------------------------
# What is valid still loads.

@pytest.mark.parametrize("arch,tied", [(arch, False) for arch in EXPORTABLE] + [("relu", True)])
def test_valid_exports_of_every_architecture_load_and_round_trip(tmp_path, arch, tied):
    sae, params = write_export(tmp_path, arch, tied=tied)
    loaded, config = saejax.load(tmp_path)
    assert config.sae.arch == arch and config.norm_scale == pytest.approx(SCALE)
    assert all(value.dtype == np.float32 for value in loaded.values())
    raw = inputs()
    z_ref = np.asarray(sae.encode(params, raw * SCALE))  # trained on scaled inputs; the export acts on raw
    assert (z_ref != 0).any() and (z_ref == 0).any()
    np.testing.assert_allclose(analysis.encode(loaded, config, raw), z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(export.encode_saelens(*export.load_saelens(tmp_path), raw), z_ref,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(export.SAEJAX_ARCH.values()))
def test_valid_saelens_folders_import(tmp_path, arch):
    sae, params = write_export(tmp_path, arch, with_run_config=False)
    loaded, config = saejax.load(tmp_path)
    assert config.sae.arch == arch and config.sae.d_sae == D_SAE
    raw = inputs()
    np.testing.assert_allclose(analysis.encode(loaded, config, raw), np.asarray(sae.encode(params, raw * SCALE)),
                               rtol=1e-5, atol=1e-5)


def test_valid_gemma_scope_npz_and_low_precision_weights_load(tmp_path):
    tensors = gemma_tensors()
    np.savez(tmp_path / "params.npz", **{k: v.astype(np.float16) for k, v in tensors.items()})
    params, config = saejax.load(tmp_path / "params.npz")
    assert config.sae.arch == "jumprelu" and all(v.dtype == np.float32 for v in params.values())
    write_export(tmp_path / "bf16", "relu", with_run_config=False)
    weights = load_file(str(tmp_path / "bf16" / WEIGHTS))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}, str(tmp_path / "bf16" / WEIGHTS))
    params, _ = saejax.load(tmp_path / "bf16")
    np.testing.assert_allclose(params["W_enc"], weights["W_enc"], rtol=1e-2, atol=1e-2)
