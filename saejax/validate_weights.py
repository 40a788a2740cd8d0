"""Checks at the door for SAE weights read from disk (`saejax.load`, `saejax.export`): the files
parse, a config's fields have the right JSON types, and every tensor has the rank, shape, dtype and
finite values that the config's sizes and architecture call for.

    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    cfg = read_json_object(cfg_path)                                # a dict, or DataError
    d_in, d_sae = positive_int(cfg, "d_in", cfg_path), positive_int(cfg, "d_sae", cfg_path)
    tensors = read_safetensors(weights)                             # name -> array, as stored
    check_names(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), weights, "architecture 'standard'")
    params = check_tensors(tensors, {"d_in": d_in, "d_sae": d_sae}, weights, "sizes in cfg.json")
    # params: name -> float32 array, W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], b_enc [d_sae]

Every failure is one DataError naming the file and the field or tensor at fault.
"""

import json
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from saejax.errors import DataError

# Each tensor's axes, by size name: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], and the
# per-latent vectors [d_sae] (b_enc; JumpReLU's threshold; gated's b_gate, r_mag, b_mag).
TENSOR_DIMS = {
    "W_enc": ("d_in", "d_sae"),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
    "b_enc": ("d_sae",),
    "threshold": ("d_sae",),
    "b_gate": ("d_sae",),
    "r_mag": ("d_sae",),
    "b_mag": ("d_sae",),
}

_JSON_TYPES = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
               (dict, "an object"))


def json_type(value: Any) -> str:
    """How JSON names the type of a parsed value: "an object", "a number", "null", ..."""
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; DataError naming the file when it is missing or unreadable, not
    UTF-8, not JSON, nested too deeply to parse, or holds something other than an object."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: must hold a JSON object, got {json_type(value)}")
    return value


def positive_int(fields: Mapping[str, Any], name: str, where: Path, prefix: str = "") -> int:
    """fields[name], which must be an integer >= 1 (not a boolean); DataError naming `where` and
    the field (`prefix` + name) otherwise."""
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{where}: {prefix}{name} must be a positive integer, got {value!r}")
    return value


def optional_field(fields: Mapping[str, Any], name: str, kind: type, where: Path, prefix: str = "") -> Any:
    """fields[name] (None when absent or null), which must otherwise be of JSON type `kind` (bool,
    str, dict, list); DataError naming `where` and the field (`prefix` + name) otherwise."""
    value = fields.get(name)
    if value is not None and not isinstance(value, kind):
        raise DataError(f"{where}: {prefix}{name} must be {dict(_JSON_TYPES)[kind]} or null, got {json_type(value)} "
                        f"{value!r:.60}")
    return value


def positive_number(fields: Mapping[str, Any], name: str, where: Path, prefix: str = "") -> float:
    """fields[name] as a float, which must be a finite number > 0; DataError naming the field."""
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise DataError(f"{where}: {prefix}{name} must be a finite number > 0, got {value!r}")
    return float(value)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as stored (dtype and shape unchanged; bfloat16 through
    ml_dtypes); DataError naming the file for one that is unreadable, truncated or not safetensors,
    and the tensor for one numpy cannot hold."""
    try:
        with safe_open(str(path), framework="numpy") as tensors:
            return {name: _tensor(tensors, name, path) for name in tensors.keys()}
    except SafetensorError as err:
        raise DataError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None


def _tensor(tensors, name: str, path: Path) -> np.ndarray:
    try:
        return tensors.get_tensor(name)
    except (TypeError, ValueError) as err:  # a dtype numpy has no type for
        raise DataError(f"{path}: tensor {name} cannot be read ({_first_line(err)})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz archive, as stored, read without pickle; DataError naming the file for
    one that is not a zip archive, is damaged, or holds object arrays."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: _npz_array(archive, name, path) for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz archive ({_first_line(err)})") from None


def _npz_array(archive, name: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(archive[name])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: array {name} cannot be read ({_first_line(err)})") from None


def check_names(tensors: Mapping[str, Any], names: Sequence[str], where: Path, claim: str) -> None:
    """DataError naming `where` unless `tensors` holds exactly `names`: the tensors that `claim`
    (e.g. "cfg.json's architecture 'jumprelu'") has; one missing or one more is an error."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise DataError(f"{where}: missing {missing}: {claim} has tensors {', '.join(names)}")
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise DataError(f"{where}: unexpected {extra}: {claim} has only tensors {', '.join(names)}")


def matrix_sizes(value: np.ndarray, name: str, where: Path) -> tuple[int, int]:
    """The two sizes of the matrix tensor `name` (e.g. W_enc [d_in, d_sae]); DataError naming it
    unless it has rank 2 and no empty axis."""
    shape = np.shape(value)
    if len(shape) != 2 or min(shape) < 1:
        raise DataError(f"{where}: tensor {name} has shape {shape}, expected a matrix "
                        f"[{', '.join(TENSOR_DIMS[name])}]")
    return int(shape[0]), int(shape[1])


def is_floating(dtype: np.dtype) -> bool:
    """Whether `dtype` holds floating-point numbers (float16/32/64, bfloat16, ...)."""
    return np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)


def check_tensor(name: str, value: np.ndarray, sizes: Mapping[str, int], where: Path, origin: str,
                 dims_of: Mapping[str, tuple[str, ...]] = TENSOR_DIMS) -> np.ndarray:
    """`value` as a contiguous float32 array of shape dims_of[name] at `sizes` (e.g. W_dec
    [d_sae, d_in]; a transcoder's dims_of has W_dec [d_sae, d_out]; `origin` says where the sizes
    come from). DataError naming `where` and the tensor if its dtype is not floating point, its
    shape differs, or a value is not finite (also after the cast to float32)."""
    value = np.asarray(value)
    if not is_floating(value.dtype):
        raise DataError(f"{where}: tensor {name} has dtype {value.dtype}, expected floating point")
    dims = dims_of[name]
    expected = tuple(sizes[dim] for dim in dims)
    if value.shape != expected:
        raise DataError(f"{where}: tensor {name} has shape {value.shape}, expected [{', '.join(dims)}] = "
                        f"{expected} ({origin})")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported below
        out = np.ascontiguousarray(value, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise DataError(f"{where}: tensor {name} holds {int(finite.size - finite.sum())} non-finite value(s) "
                        f"(NaN or inf{'' if value.dtype == out.dtype else ' as float32'})")
    return out


def check_tensors(tensors: Mapping[str, Any], sizes: Mapping[str, int], where: Path,
                  origin: str, dims_of: Mapping[str, tuple[str, ...]] = TENSOR_DIMS) -> dict[str, np.ndarray]:
    """Every tensor checked by `check_tensor` against `sizes` (d_in, d_sae): name -> float32 array."""
    return {name: check_tensor(name, value, sizes, where, origin, dims_of) for name, value in tensors.items()}


def check_finite(params: Mapping[str, np.ndarray], where: Path, what: str) -> dict[str, np.ndarray]:
    """`params` unchanged if every value is finite; DataError naming `where`, the first tensor with
    a non-finite value and `what` produced it (e.g. folding b_dec into the encoder biases)."""
    for name, value in params.items():
        if not np.isfinite(value).all():
            raise DataError(f"{where}: tensor {name} becomes non-finite when {what}")
    return dict(params)
