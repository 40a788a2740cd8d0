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

Everything read back (`load_saelens`, `import_saelens`, `import_gemma_scope`, `read_export_config`)
is checked at the door by `saejax.validate_weights`: a file, field or tensor that does not fit is one
DataError naming the file and the field or tensor.

`encode_saelens` / `decode_saelens` are tiny numpy re-implementations of SAELens'
inference forward passes, used to check that an export reproduces our outputs.
"""

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import save_file

from saejax import normalization
from saejax import validate_weights as check
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

# The SAELens architectures whose cfg.json must carry k.
SAELENS_NEEDS_K = frozenset(saelens_export(name).architecture for name in ARCHITECTURES
                            if saelens_export(name) and saelens_export(name).writes_k)

# The run config an export written by saejax holds beside cfg.json.
SAEJAX_CONFIG_FILENAME = "saejax_config.json"


def _expected_shapes(arch: str, d_in: int, d_sae: int) -> dict[str, tuple]:
    """Shape of each tensor our `arch` must hold after folding (threshold: see below), e.g.
    W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_dec (d_in,), b_enc (d_sae,)."""
    sizes = {"d_in": d_in, "d_sae": d_sae}
    names = SAELENS_WEIGHTS[saelens_export(arch).architecture]
    return {name: tuple(sizes[dim] for dim in check.TENSOR_DIMS[name]) for name in names}


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
    return _write_folder(out_dir, tensors, cfg)


def _write_folder(out_dir: str | Path, tensors: dict[str, np.ndarray], cfg: dict) -> Path:
    """out_dir/sae_weights.safetensors and out_dir/cfg.json (SAELens' layout); SaejaxError when cfg is
    not JSON (checked before anything is written)."""
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
    """Read a SAELens-layout directory back: (params of float32 arrays, cfg dict), checked at the
    door: cfg.json's fields by `check_saelens_cfg`, and the weights file holds exactly the tensors of
    cfg.json's architecture, each floating point, finite and shaped by cfg.json's d_in and d_sae
    (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], the others [d_sae]). Anything else is
    one DataError naming the file and the field or tensor."""
    root = Path(path)
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
        if not (root / name).is_file():
            raise DataError(f"{root}: missing {name} (not a SAELens SAE directory)")
    cfg_path, weights_path = root / CFG_FILENAME, root / WEIGHTS_FILENAME
    cfg = check.read_json_object(cfg_path)
    architecture, d_in, d_sae, _ = check_saelens_cfg(cfg, cfg_path)
    tensors = check.read_safetensors(weights_path)
    check.check_names(tensors, SAELENS_WEIGHTS[architecture], weights_path,
                      f"{CFG_FILENAME}'s architecture {architecture!r}")
    params = check.check_tensors(tensors, {"d_in": d_in, "d_sae": d_sae}, weights_path,
                                 f"d_in={d_in}, d_sae={d_sae} in {CFG_FILENAME}")
    return {name: params[name] for name in SAELENS_WEIGHTS[architecture]}, cfg


def check_saelens_cfg(cfg: dict[str, Any], where: Path) -> tuple[str, int, int, int | None]:
    """(architecture, d_in, d_sae, k) of a SAELens cfg.json dict, after checking the type of every
    field we read: architecture one of SAELENS_WEIGHTS (absent: standard), d_in and d_sae positive
    integers, k a positive integer <= d_sae (required by topk; None when absent elsewhere),
    apply_b_dec_to_input and rescale_acts_by_decoder_norm booleans, normalize_activations,
    reshape_activations and dtype strings, metadata an object, metadata.saejax an object with a
    positive norm_scale_folded. DataError naming `where` and the field otherwise."""
    architecture = cfg.get("architecture", "standard")
    if not isinstance(architecture, str) or architecture not in SAELENS_WEIGHTS:
        raise DataError(f"{where}: architecture={architecture!r} is not one of {', '.join(SAELENS_WEIGHTS)}")
    d_in, d_sae = check.positive_int(cfg, "d_in", where), check.positive_int(cfg, "d_sae", where)
    k = None
    if architecture in SAELENS_NEEDS_K or cfg.get("k") is not None:
        k = check.positive_int(cfg, "k", where)
        if k > d_sae:
            raise DataError(f"{where}: k={k} exceeds d_sae={d_sae}")
    for field in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        check.optional_field(cfg, field, bool, where)
    for field in ("normalize_activations", "reshape_activations", "dtype"):
        check.optional_field(cfg, field, str, where)
    ours = check.optional_field(check.optional_field(cfg, "metadata", dict, where) or {}, "saejax", dict, where,
                                "metadata.") or {}
    check.optional_field(ours, "arch", str, where, "metadata.saejax.")
    if ours.get("norm_scale_folded") is not None:
        check.positive_number(ours, "norm_scale_folded", where, "metadata.saejax.")
    return architecture, d_in, d_sae, k


def folded_norm_scale(cfg: dict[str, Any]) -> float:
    """The normalisation scale a saejax export folded into its weights (1.0 when not recorded), from
    a cfg dict `check_saelens_cfg` accepted."""
    ours = (cfg.get("metadata") or {}).get("saejax") or {}
    scale = ours.get("norm_scale_folded")
    return 1.0 if scale is None else float(scale)


def read_export_config(path: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The run config saved beside a saejax export (saejax_config.json) as a dict, checked against
    the export's cfg dict (as `load_saelens` returned it): a JSON object whose sae section names an
    exportable sae.arch that is written as cfg.json's architecture (so the tensors present are the
    ones it needs), with cfg.json's d_sae, k (TopK) and metadata.saejax.arch. DataError naming the
    file and the field otherwise."""
    where = Path(path) / SAEJAX_CONFIG_FILENAME
    config = check.read_json_object(where)
    sae = config.get("sae")
    if not isinstance(sae, dict):
        raise DataError(f"{where}: sae must be an object, got {check.json_type(sae)}")
    arch = sae.get("arch")
    written = saelens_export(arch) if isinstance(arch, str) else None
    if written is None:
        raise DataError(f"{where}: sae.arch={arch!r} is not an architecture saejax exports "
                        f"({', '.join(SAELENS_ARCH)})")
    if written.architecture != cfg.get("architecture", "standard"):
        raise DataError(f"{where}: sae.arch={arch!r} is exported as SAELens architecture {written.architecture!r}, "
                        f"but {CFG_FILENAME} and its tensors are {cfg.get('architecture', 'standard')!r}")
    fields = ("d_sae", "k") if written.writes_k else ("d_sae",)
    for field in fields:
        if sae.get(field) != cfg.get(field) or isinstance(sae.get(field), bool):
            raise DataError(f"{where}: sae.{field}={sae.get(field)!r} disagrees with {CFG_FILENAME}'s "
                            f"{field}={cfg.get(field)!r}")
    recorded = ((cfg.get("metadata") or {}).get("saejax") or {}).get("arch")
    if recorded is not None and recorded != arch:
        raise DataError(f"{where}: sae.arch={arch!r} disagrees with {CFG_FILENAME}'s metadata.saejax.arch={recorded!r}")
    return config


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
# Transcoders, in the layout of SAELens' transcoder classes (sae_lens/saes/transcoder.py): the
# encoder reads x itself (apply_b_dec_to_input false), the decoder writes the target (cfg d_out).

# SAELens' transcoder architectures -> their tensors, in file order.
SAELENS_TRANSCODER_WEIGHTS = {
    "transcoder": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "skip_transcoder": ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"),
    "jumprelu_transcoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "jumprelu_skip_transcoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"),
}
# Each transcoder tensor's axes, by size name (W_skip as SAELens holds it: x @ W_skip.T).
TRANSCODER_DIMS = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_out"), "b_dec": ("d_out",),
                   "threshold": ("d_sae",), "W_skip": ("d_out", "d_in")}


def saelens_transcoder(arch: str) -> str | None:
    """SAELens' architecture for a transcoder of our `arch` (its spec's `export.transcoder`), or None."""
    written = saelens_export(arch)
    return None if written is None else written.transcoder


def transcoder_tensors(params: Mapping[str, Any], arch: str, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Contiguous float32 tensors of SAELens' transcoder architecture for `arch`, shaped by `sizes`
    ({"d_in", "d_out", "d_sae"}); a scalar threshold (BatchTopK's) broadcast to [d_sae]."""
    tensors = {}
    for name in SAELENS_TRANSCODER_WEIGHTS[saelens_transcoder(arch)]:
        if name not in params:
            raise SaejaxError(f"{arch} transcoder params have no {name!r} to export")
        shape = tuple(sizes[dim] for dim in TRANSCODER_DIMS[name])
        value = np.asarray(params[name], dtype=np.float32)
        if name == "threshold" and saelens_export(arch).scalar_threshold:
            value = np.full(shape, value.reshape(()), dtype=np.float32)
        if value.shape != shape:
            raise SaejaxError(f"{arch} transcoder param {name!r} has shape {value.shape}, expected {shape} for {sizes}")
        tensors[name] = np.ascontiguousarray(value)
    return tensors


def export_transcoder(out_dir: str | Path, params: Mapping[str, Any], *, arch: str, d_in: int, d_out: int, d_sae: int,
                      k: int | None = None, input_scale: float = 1.0, target_scale: float = 1.0,
                      metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a transcoder's params as SAELens writes its transcoders: out_dir/cfg.json (architecture
    transcoder, skip_transcoder, jumprelu_transcoder or jumprelu_skip_transcoder; d_in, d_sae,
    d_out; apply_b_dec_to_input false) + out_dir/sae_weights.safetensors (W_enc [d_in, d_sae], b_enc,
    W_dec [d_sae, d_out], b_dec [d_out], threshold, W_skip [d_out, d_in]). params were trained on
    inputs s·x_raw and targets t·y_raw (s = input_scale, t = target_scale); both are folded in
    (`normalization.fold`), so the export maps raw inputs to raw targets. SaejaxError for an
    architecture SAELens has no transcoder of (topk). Returns out_dir as a Path."""
    if registry.find(arch) is None:
        raise SaejaxError(f"cannot export unknown arch {arch!r}")
    architecture = saelens_transcoder(arch)
    if architecture is None:
        raise SaejaxError(f"a {arch} transcoder has no SAELens equivalent (SAELens' transcoders: "
                          f"{', '.join(SAELENS_TRANSCODER_WEIGHTS)})")
    sizes = {"d_in": int(d_in), "d_out": int(d_out), "d_sae": int(d_sae)}
    tensors = transcoder_tensors(normalization.fold(params, input_scale, target_scale), arch, sizes)
    cfg = {"architecture": architecture, **sizes, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": SAELENS_FORMAT_VERSION,
                        "model_name": None, "hook_name": None,
                        "saejax": {"arch": arch, "k": None if k is None else int(k), "tied": False, "transcoder": True,
                                   "norm_scale_folded": float(input_scale),
                                   "target_norm_scale_folded": float(target_scale)},
                        **dict(metadata or {})}}
    return _write_folder(out_dir, tensors, cfg)


def load_saelens_transcoder(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A transcoder directory in SAELens' layout (`export_transcoder`, or SAELens' own) read back:
    (tensors as float32 arrays, cfg dict), checked at the door: cfg.json's architecture is one of
    SAELens' transcoders, d_in, d_out and d_sae positive integers, apply_b_dec_to_input not true,
    and the weights file holds exactly that architecture's tensors, finite and shaped by those sizes.
    Anything else is one DataError naming the file and the field or tensor."""
    root = Path(path)
    cfg_path, weights_path = root / CFG_FILENAME, root / WEIGHTS_FILENAME
    cfg = check.read_json_object(cfg_path)
    architecture = cfg.get("architecture")
    if architecture not in SAELENS_TRANSCODER_WEIGHTS:
        raise DataError(f"{cfg_path}: architecture={architecture!r} is not one of SAELens' transcoders "
                        f"({', '.join(SAELENS_TRANSCODER_WEIGHTS)})")
    sizes = {name: check.positive_int(cfg, name, cfg_path) for name in ("d_in", "d_out", "d_sae")}
    if check.optional_field(cfg, "apply_b_dec_to_input", bool, cfg_path):
        raise DataError(f"{cfg_path}: apply_b_dec_to_input=true, but a transcoder's encoder reads its input as it is")
    tensors = check.read_safetensors(weights_path)
    check.check_names(tensors, SAELENS_TRANSCODER_WEIGHTS[architecture], weights_path,
                      f"{CFG_FILENAME}'s architecture {architecture!r}")
    return check.check_tensors(tensors, sizes, weights_path, f"sizes {sizes} in {CFG_FILENAME}", TRANSCODER_DIMS), cfg


def is_transcoder_export(path: str | Path) -> bool:
    """Whether the SAELens directory `path`'s cfg.json names one of SAELens' transcoder architectures."""
    return check.read_json_object(Path(path) / CFG_FILENAME).get("architecture") in SAELENS_TRANSCODER_WEIGHTS


def read_transcoder_export_config(path: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The run config saved beside a transcoder saejax exported (saejax_config.json) as a dict, checked
    against the export's cfg dict (`load_saelens_transcoder`): its sae.arch is written as cfg.json's
    architecture. DataError naming the file and the field otherwise."""
    where = Path(path) / SAEJAX_CONFIG_FILENAME
    config = check.read_json_object(where)
    arch = config.get("sae", {}).get("arch") if isinstance(config.get("sae"), dict) else None
    if not isinstance(arch, str) or saelens_transcoder(arch) != cfg["architecture"]:
        raise DataError(f"{where}: sae.arch={arch!r} is not exported as SAELens' {cfg['architecture']!r}")
    return config


def forward_saelens_transcoder(params: Mapping[str, np.ndarray], cfg: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """SAELens' transcoder forward (numpy): x [B, d_in] -> [B, d_out]: ReLU (jumprelu_*: also
    pre > threshold) of x @ W_enc + b_enc, decoded by W_dec + b_dec, plus x @ W_skip.T (skip_*)."""
    pre = x @ params["W_enc"] + params["b_enc"]
    z = _relu(pre) * (pre > params["threshold"]) if "threshold" in params else _relu(pre)
    out = z @ params["W_dec"] + params["b_dec"]
    return out + x @ params["W_skip"].T if "W_skip" in params else out


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
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes inf, which importers report
        if "b_gate" in SAELENS_WEIGHTS[saelens_export(arch).architecture]:
            out["b_gate"] = (out["b_gate"] + shift).astype(np.float32)
            out["b_mag"] = (out["b_mag"] + shift * np.exp(out["r_mag"])).astype(np.float32)
        else:
            out["b_enc"] = (out["b_enc"] + shift).astype(np.float32)
    return out


def import_saelens(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A SAELens SAE directory (written by SAELens or by us), checked by `load_saelens`, as
    (saejax params, fields for our config: arch, d_in, d_sae, k). DataError naming the field for
    what we cannot represent."""
    params, cfg = load_saelens(path)
    where = Path(path) / CFG_FILENAME
    architecture = cfg.get("architecture", "standard")
    arch = SAEJAX_ARCH.get(architecture)
    if arch is None:
        raise DataError(f"{where}: architecture {architecture!r} has no saejax equivalent "
                        f"(supported: {', '.join(SAEJAX_ARCH)})")
    for field, plain in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(field, plain) not in (plain, None):
            raise DataError(f"{where}: {field}={cfg[field]!r} is not supported on import (only {plain!r})")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise DataError(f"{where}: rescale_acts_by_decoder_norm=true is not supported on import")
    if cfg.get("apply_b_dec_to_input") is False:
        params = check.check_finite(fold_input_bias(params, arch), Path(path) / WEIGHTS_FILENAME,
                                    "b_dec is folded into the encoder biases (apply_b_dec_to_input=false)")
    d_in, d_sae = params["W_enc"].shape
    return params, {"arch": arch, "d_in": int(d_in), "d_sae": int(d_sae), "k": int(cfg.get("k") or 0)}


# The tensors of a Gemma Scope params.npz.
GEMMA_SCOPE_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def import_gemma_scope(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Gemma Scope ``params.npz`` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
    b_dec [d_in], threshold [d_sae]; JumpReLU with pre = x @ W_enc + b_enc) as (saejax params,
    config fields). Read with ``allow_pickle=False``; a file that is not such an archive, or whose
    tensors are missing, extra, misshapen, not floating point or not finite, is one DataError
    naming the file and the tensor."""
    path = Path(path)
    tensors = check.read_npz(path)
    check.check_names(tensors, GEMMA_SCOPE_TENSORS, path, "a Gemma Scope params.npz")
    d_in, d_sae = check.matrix_sizes(tensors["W_enc"], "W_enc", path)
    params = check.check_tensors(tensors, {"d_in": d_in, "d_sae": d_sae}, path, f"W_enc is {(d_in, d_sae)}")
    params = check.check_finite(fold_input_bias(params, "jumprelu"), path,
                                "b_dec is folded into b_enc (Gemma Scope's encoder sees x, not x - b_dec)")
    return params, {"arch": "jumprelu", "d_in": d_in, "d_sae": d_sae, "k": 0}
