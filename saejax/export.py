"""Export trained SAEs in SAELens' on-disk layout, read them back, and import SAEs trained
elsewhere (SAELens directories, Gemma Scope ``params.npz``).

An export directory holds ``cfg.json`` and ``sae_weights.safetensors`` (float32), in the
format SAELens >= 6 reads with ``SAE.load_from_disk(dir)``: the cfg dict's keys are the
fields of the architecture's inference config dataclass plus ``architecture`` and
``metadata`` (see sae_lens/saes/sae.py ``SAEConfig`` and
sae_lens/loading/pretrained_sae_loaders.py ``handle_config_defaulting``), and the
weight names are the SAE module's parameter names (loaded with a strict
``load_state_dict``, so no extra tensors may be written).

Architecture mapping (ours -> SAELens, each architecture's spec `export`): relu -> standard,
topk -> topk, jumprelu -> jumprelu, gated -> gated, batchtopk / matryoshka -> jumprelu with the
scalar inference threshold broadcast to [d_sae] (SAELens saves its own BatchTopK SAEs this way).
Tied SAEs are written untied (W_enc = W_dec.T). The activation-normalisation scale is
folded into the weights, so the cfg says ``normalize_activations: "none"``.

`encode_saelens` / `decode_saelens` are tiny numpy re-implementations of SAELens'
inference forward passes, used to check that an export reproduces our outputs.
"""

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

from saejax import normalization
from saejax.errors import DataError, SaejaxError
from saejax.sae import ARCHITECTURES, registry
from saejax.sae.registry import SAELensExport

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

# handle_config_defaulting treats a cfg without metadata.sae_lens_version >= 6.0.0 as a
# legacy (pre-6) config and drops our nested metadata, so we declare the v6 format.
SAELENS_FORMAT_VERSION = "6.0.0"

def saelens_export(arch: str) -> SAELensExport | None:
    """How our `arch` is written in SAELens' layout (its spec's `export`), None if it is not."""
    spec = registry.find(arch)
    return None if spec is None else spec.export


# Our architecture -> SAELens' architecture name, for the shipped architectures that export.
SAELENS_ARCH = {name: saelens_export(name).architecture for name in ARCHITECTURES if saelens_export(name)}

# Tensors of each SAELens inference architecture (its nn.Parameters), in file order.
SAELENS_WEIGHTS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}

def _expected_shapes(arch: str, d_in: int, d_sae: int) -> dict[str, tuple]:
    """Shape of each tensor our `arch` must hold after folding (threshold: see below)."""
    shapes = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
        "b_enc": (d_sae,),
        "threshold": (d_sae,),
        "b_gate": (d_sae,),
        "r_mag": (d_sae,),
        "b_mag": (d_sae,),
    }
    names = SAELENS_WEIGHTS[saelens_export(arch).architecture]
    return {name: shapes[name] for name in names}


def _saelens_tensors(
    params: Mapping[str, Any], arch: str, d_in: int, d_sae: int
) -> dict[str, np.ndarray]:
    """Contiguous float32 tensors named and shaped as SAELens expects for `arch`."""
    tensors = {}
    for name, shape in _expected_shapes(arch, d_in, d_sae).items():
        if name not in params:
            raise SaejaxError(f"{arch} params have no {name!r} to export")
        value = np.asarray(params[name], dtype=np.float32)
        if name == "threshold" and saelens_export(arch).scalar_threshold:
            if value.size != 1:
                raise SaejaxError(
                    f"{arch} threshold must be a scalar, got shape {value.shape}"
                )
            value = np.full(shape, value.reshape(()), dtype=np.float32)
        if value.shape != shape:
            raise SaejaxError(
                f"{arch} param {name!r} has shape {value.shape}, expected {shape} "
                f"for d_in={d_in}, d_sae={d_sae}"
            )
        tensors[name] = np.ascontiguousarray(value)
    return tensors


def _saelens_cfg(
    arch: str,
    d_in: int,
    d_sae: int,
    k: int | None,
    norm_scale: float,
    tied: bool,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The cfg.json dict SAELens' SAEConfig.from_dict reads for our `arch`."""
    cfg: dict[str, Any] = {
        "architecture": saelens_export(arch).architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if saelens_export(arch).writes_k:
        cfg["k"] = int(k)
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": None,
        "hook_name": None,
        "saejax": {
            "arch": arch,
            "k": None if k is None else int(k),
            "tied": tied,
            "norm_scale_folded": float(norm_scale),
        },
        **dict(metadata or {}),
    }
    return cfg


def export_saelens(
    out_dir: str | Path,
    params: Mapping[str, Any],
    *,
    arch: str,
    d_in: int,
    d_sae: int,
    k: int | None = None,
    norm_scale: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write params as a SAELens SAE: out_dir/cfg.json + out_dir/sae_weights.safetensors.

    params: our dict (W_enc [d_in, d_sae] (absent if tied), W_dec [d_sae, d_in],
    b_dec [d_in], plus b_enc / threshold / gate keys by arch), trained on
    s * x_raw with s = norm_scale; s is folded in so the export acts on raw x.
    k is required for topk. metadata (JSON-serialisable, e.g. hook_name, model_name)
    is merged into cfg["metadata"]. Returns out_dir as a Path.
    """
    spec = registry.find(arch)
    if spec is not None and spec.export is None:
        kind = "deep SAE" if not spec.has_linear_decoder else "no SAELens equivalent"
        raise SaejaxError(f"arch {arch!r} ({kind}) is not exportable to SAELens")
    if spec is None:
        raise SaejaxError(f"cannot export unknown arch {arch!r}")
    if spec.export.writes_k and (k is None or int(k) < 1):
        raise SaejaxError(f"exporting a {arch} SAE needs k >= 1, got k={k}")
    tied = "W_enc" not in params
    tensors = _saelens_tensors(normalization.fold(params, norm_scale), arch, d_in, d_sae)
    cfg = _saelens_cfg(arch, d_in, d_sae, k, norm_scale, tied, metadata)
    try:
        cfg_text = json.dumps(cfg, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SaejaxError(f"export metadata is not JSON-serialisable: {err}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS_FILENAME))
    (out / CFG_FILENAME).write_text(cfg_text + "\n")
    return out


def load_saelens(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a SAELens-layout directory back: (params of float32 arrays, cfg dict)."""
    root = Path(path)
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
        if not (root / name).is_file():
            raise DataError(f"{root}: missing {name} (not a SAELens SAE directory)")
    try:
        cfg = json.loads((root / CFG_FILENAME).read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{root / CFG_FILENAME}: invalid JSON ({err})") from None
    params = {
        key: np.asarray(value, dtype=np.float32)
        for key, value in load_file(str(root / WEIGHTS_FILENAME)).items()
    }
    return params, cfg


def _relu(a: np.ndarray) -> np.ndarray:
    """Elementwise max(a, 0)."""
    return np.maximum(a, 0.0)


def _topk_relu(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries of each row, ReLU'd; zero the rest. pre: [B, d_sae]."""
    idx = np.argpartition(-pre, k - 1, axis=-1)[..., :k]
    z = np.zeros_like(pre)
    np.put_along_axis(z, idx, _relu(np.take_along_axis(pre, idx, axis=-1)), axis=-1)
    return z


def encode_saelens(
    params: Mapping[str, np.ndarray], cfg: Mapping[str, Any], x: np.ndarray
) -> np.ndarray:
    """SAELens' inference encode for standard / topk / jumprelu / gated (numpy).

    x: [B, d_in] -> latents [B, d_sae]. As in SAELens, jumprelu is
    relu(pre) * (pre > threshold) and topk is relu of the k largest pre-activations.
    """
    if cfg.get("normalize_activations", "none") != "none":
        raise SaejaxError("encode_saelens supports only normalize_activations 'none'")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        raise SaejaxError("encode_saelens does not support rescale_acts_by_decoder_norm")
    p = params
    sae_in = x - p["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    kind = cfg["architecture"]
    if kind == "gated":
        gate = (sae_in @ p["W_enc"] + p["b_gate"]) > 0
        mag = _relu(sae_in @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"])
        return gate * mag
    pre = sae_in @ p["W_enc"] + p["b_enc"]
    if kind == "standard":
        return _relu(pre)
    if kind == "topk":
        return _topk_relu(pre, int(cfg["k"]))
    if kind == "jumprelu":
        return _relu(pre) * (pre > p["threshold"])
    raise SaejaxError(f"encode_saelens: unsupported SAELens architecture {kind!r}")


def decode_saelens(
    params: Mapping[str, np.ndarray], cfg: Mapping[str, Any], z: np.ndarray
) -> np.ndarray:
    """SAELens' inference decode (every architecture): z [B, d_sae] -> [B, d_in]."""
    del cfg  # the decoder is the same linear map for all supported architectures
    return z @ params["W_dec"] + params["b_dec"]



# ---------------------------------------------------------------------------------------------
# Importing SAEs trained elsewhere.

# SAELens' architecture -> ours: the shipped architecture each SAELens architecture is written from
# as it is (not batchtopk / matryoshka, whose scalar threshold SAELens' jumprelu does not keep).
SAEJAX_ARCH = {saelens_export(name).architecture: name for name in ARCHITECTURES
               if saelens_export(name) and not saelens_export(name).scalar_threshold}


def fold_input_bias(params: Mapping[str, np.ndarray], arch: str) -> dict[str, np.ndarray]:
    """Params of an SAE whose encoder sees x itself (pre = x @ W_enc + b_enc: Gemma Scope, SAELens
    with apply_b_dec_to_input=False) rewritten for ours, which sees x - b_dec: the encoder biases
    absorb b_dec @ W_enc (scaled by exp(r_mag) on gated's magnitude path), so every
    pre-activation, and so every output, is unchanged. `arch`: ours; the biases to shift are those
    of its SAELens tensors (gated: b_gate and b_mag, else b_enc)."""
    out = {k: np.asarray(v, np.float32) for k, v in params.items()}
    shift = out["b_dec"].astype(np.float64) @ out["W_enc"].astype(np.float64)
    if "b_gate" in SAELENS_WEIGHTS[saelens_export(arch).architecture]:
        out["b_gate"] = (out["b_gate"] + shift).astype(np.float32)
        out["b_mag"] = (out["b_mag"] + shift * np.exp(out["r_mag"])).astype(np.float32)
    else:
        out["b_enc"] = (out["b_enc"] + shift).astype(np.float32)
    return out


def import_saelens(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A SAELens SAE directory (written by SAELens or by us) as (saejax params, fields for our
    config: arch, d_in, d_sae, k). DataError naming the field for what we cannot represent."""
    params, cfg = load_saelens(path)
    where = Path(path) / CFG_FILENAME
    arch = SAEJAX_ARCH.get(cfg.get("architecture", "standard"))
    if arch is None:
        raise DataError(f"{where}: architecture {cfg.get('architecture')!r} has no saejax equivalent "
                        f"(supported: {', '.join(SAEJAX_ARCH)})")
    for field, plain in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(field, plain) not in (plain, None):
            raise DataError(f"{where}: {field}={cfg[field]!r} is not supported on import (only {plain!r})")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise DataError(f"{where}: rescale_acts_by_decoder_norm=true is not supported on import")
    missing = [name for name in SAELENS_WEIGHTS[cfg.get("architecture", "standard")] if name not in params]
    if missing:
        raise DataError(f"{root_name(path)}: {WEIGHTS_FILENAME} lacks {missing}")
    if not cfg.get("apply_b_dec_to_input", True):
        params = fold_input_bias(params, arch)
    d_in, d_sae = params["W_enc"].shape
    return params, {"arch": arch, "d_in": int(d_in), "d_sae": int(d_sae), "k": int(cfg.get("k") or 0)}


def import_gemma_scope(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Gemma Scope ``params.npz`` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec,
    threshold; JumpReLU with pre = x @ W_enc + b_enc) as (saejax params, config fields). Read with
    ``allow_pickle=False``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            params = {key: np.asarray(archive[key], np.float32) for key in archive.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    expected = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    missing = [key for key in expected if key not in params]
    if missing:
        raise DataError(f"{path}: a Gemma Scope params.npz holds {', '.join(expected)}; missing {missing}")
    d_in, d_sae = params["W_enc"].shape
    shapes = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in shapes.items():
        if params[key].shape != shape:
            raise DataError(f"{path}: {key} has shape {params[key].shape}, expected {shape} (W_enc is {(d_in, d_sae)})")
    params = fold_input_bias({key: params[key] for key in expected}, "jumprelu")
    return params, {"arch": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae), "k": 0}


def root_name(path: str | Path) -> str:
    return str(Path(path) / WEIGHTS_FILENAME)
