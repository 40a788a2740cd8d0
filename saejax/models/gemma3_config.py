"""A Gemma-3 model's shape and attention settings, read from a Hugging Face config.json or from GGUF
metadata, whichever generation of either wrote it.

    config = hf_config(json.loads(path.read_text()), path)        # config.json, text_config or not
    config = gguf_config(lambda key: metadata.get(key), vocab_size, path)

Hugging Face configs come in two shapes, both read here as transformers reads them:

- older: ``sliding_window_pattern`` (every n-th layer attends globally), ``rope_theta`` (global
  layers), ``rope_local_base_freq`` (sliding layers), ``rope_scaling`` (global layers only, e.g.
  ``{"rope_type": "linear", "factor": 8.0}`` in the 4B and larger models);
- current: ``layer_types`` (one "sliding_attention" / "full_attention" per layer) and
  ``rope_parameters`` (``{"full_attention": {"rope_type", "rope_theta", "factor"},
  "sliding_attention": {...}}``).

Keys a config leaves out take transformers' Gemma3TextConfig defaults (the multimodal 4B–27B
configs list only what differs). The attention scale is ``query_pre_attn_scalar ** -0.5``, which is
not always ``head_dim ** -0.5`` (Gemma-3-27B: 168 vs 128).

GGUF files (llama.cpp's converter) carry no query_pre_attn_scalar, local rope base or layer pattern;
where the keys ``{arch}.attention.scale``, ``{arch}.rope.freq_base_swa`` and
``{arch}.attention.sliding_window_pattern`` are absent this follows llama.cpp: scale from
``embedding_length / head_count`` for the 62-layer 27B model and from ``key_length`` otherwise,
local base 10000, every 6th layer global; no sliding window means every layer is global.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saejax.errors import DataError

SLIDING, FULL = "sliding_attention", "full_attention"

# transformers' Gemma3TextConfig defaults, for keys a config.json leaves out
_HF_DEFAULTS = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
                "sliding_window": 4096, "query_pre_attn_scalar": 256, "bos_token_id": 2, "rope_theta": 1_000_000.0,
                "rope_local_base_freq": 10_000.0, "sliding_window_pattern": 6}
_GGUF_27B_LAYERS = 62  # llama.cpp's marker of Gemma-3-27B, whose scale is embedding_length / head_count


@dataclass(frozen=True)
class Gemma3Config:
    """layer_types[i] is SLIDING (attends to the last `sliding_window` positions, rotary base
    `rope_local_base`) or FULL (attends to every earlier position, base `rope_global_base`); a
    rotary factor f > 1 is linear position interpolation (angles divided by f)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rms_eps: float
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_global_base: float = 1_000_000.0
    rope_global_factor: float = 1.0
    rope_local_base: float = 10_000.0
    rope_local_factor: float = 1.0
    query_pre_attn_scalar: float = 256.0
    bos_id: int = 2

    def is_global(self, layer: int) -> bool:
        return self.layer_types[layer] == FULL

    def rope(self, layer: int) -> tuple[float, float]:
        """(base, linear factor) of `layer`'s rotary embedding."""
        if self.is_global(layer):
            return self.rope_global_base, self.rope_global_factor
        return self.rope_local_base, self.rope_local_factor


def hf_config(raw: dict, where) -> Gemma3Config:
    """The config of a Hugging Face config.json's contents (a text model's, or the `text_config` of
    a multimodal one); DataError naming `where` and the key for what saejax cannot run."""
    text = {**_HF_DEFAULTS, **(raw.get("text_config") or raw)}
    _reject_unsupported(text, where)
    n_layers = int(text["num_hidden_layers"])
    (global_base, global_factor), (local_base, local_factor) = _hf_rope(text, where)
    return Gemma3Config(
        vocab_size=int(text["vocab_size"]), d_model=int(text["hidden_size"]), n_layers=n_layers,
        n_heads=int(text["num_attention_heads"]), n_kv_heads=int(text["num_key_value_heads"]),
        head_dim=int(text["head_dim"]), d_ff=int(text["intermediate_size"]), rms_eps=float(text["rms_norm_eps"]),
        sliding_window=int(text["sliding_window"]), layer_types=_hf_layer_types(text, n_layers, where),
        rope_global_base=global_base, rope_global_factor=global_factor, rope_local_base=local_base,
        rope_local_factor=local_factor, query_pre_attn_scalar=float(text["query_pre_attn_scalar"]),
        bos_id=int(text["bos_token_id"]))


def _reject_unsupported(text: dict, where) -> None:
    """DataError for what Gemma-3 models do not use and saejax does not run: logit soft-capping,
    bidirectional attention."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.get(key) is not None:
            raise DataError(f"{where}: {key}={text[key]} is not supported (Gemma-3 has none)")
    if text.get("use_bidirectional_attention"):
        raise DataError(f"{where}: use_bidirectional_attention=true (an embedding model) is not supported")


def _hf_layer_types(text: dict, n_layers: int, where) -> tuple[str, ...]:
    """`layer_types` as given, else every `sliding_window_pattern`-th layer FULL."""
    types = text.get("layer_types")
    if types is None:
        pattern = int(text["sliding_window_pattern"])
        types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]
    if len(types) != n_layers or set(types) - {SLIDING, FULL}:
        raise DataError(f"{where}: layer_types must list {n_layers} of {SLIDING!r} / {FULL!r}, got {types}")
    return tuple(types)


def _hf_rope(text: dict, where) -> tuple[tuple[float, float], tuple[float, float]]:
    """((base, factor) of the global layers, (base, factor) of the sliding ones): from
    `rope_parameters`, else (and where it leaves a value out) from rope_theta / rope_scaling /
    rope_local_base_freq, as transformers merges them."""
    nested = text.get("rope_parameters") or {}
    if set(nested) - {SLIDING, FULL}:
        raise DataError(f"{where}: rope_parameters must be keyed by layer type ({FULL!r}, {SLIDING!r}), "
                        f"got keys {sorted(nested)}")
    full = {**(nested.get(FULL) or {}), **(text.get("rope_scaling") or {})}
    full.setdefault("rope_theta", text["rope_theta"])
    sliding = {**(nested.get(SLIDING) or {})}
    sliding.setdefault("rope_theta", text["rope_local_base_freq"])
    return _rope_base_and_factor(full, FULL, where), _rope_base_and_factor(sliding, SLIDING, where)


def _rope_base_and_factor(params: dict, layer_type: str, where) -> tuple[float, float]:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return float(params["rope_theta"]), 1.0
    if kind == "linear":
        return float(params["rope_theta"]), float(params["factor"])
    raise DataError(f"{where}: rope_parameters.{layer_type}.rope_type={kind!r} is not supported "
                    "(only 'default' and 'linear')")


def gguf_config(field: Callable[[str], Any], vocab_size: int, where) -> Gemma3Config:
    """The config of a gemma3 GGUF file; field(key) is a metadata value, None where absent."""
    def required(key):
        value = field(key)
        if value is None:
            raise DataError(f"{where}: GGUF metadata {key!r} is missing")
        return value

    if required("general.architecture") != "gemma3":
        raise DataError(f"{where}: GGUF general.architecture={field('general.architecture')!r}, not gemma3")
    if field("gemma3.final_logit_softcapping"):
        raise DataError(f"{where}: GGUF gemma3.final_logit_softcapping is not supported (Gemma-3 has none)")
    d_model, n_heads = int(required("gemma3.embedding_length")), int(required("gemma3.attention.head_count"))
    n_layers, head_dim = int(required("gemma3.block_count")), int(required("gemma3.attention.key_length"))
    window = int(field("gemma3.attention.sliding_window") or 0)
    return Gemma3Config(
        vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(required("gemma3.attention.head_count_kv")), head_dim=head_dim,
        d_ff=int(required("gemma3.feed_forward_length")),
        rms_eps=float(required("gemma3.attention.layer_norm_rms_epsilon")), sliding_window=window,
        layer_types=_gguf_layer_types(field("gemma3.attention.sliding_window_pattern"), n_layers, window, where),
        rope_global_base=float(field("gemma3.rope.freq_base") or 1_000_000.0),
        rope_global_factor=_gguf_rope_factor(field, where),
        rope_local_base=float(field("gemma3.rope.freq_base_swa") or 10_000.0),
        query_pre_attn_scalar=_gguf_query_pre_attn_scalar(field, d_model, n_heads, n_layers, head_dim),
        bos_id=int(field("tokenizer.ggml.bos_token_id") or 2))


def _gguf_layer_types(pattern, n_layers: int, window: int, where) -> tuple[str, ...]:
    """`pattern` is a period (every n-th layer global), one bool per layer (True = sliding), or
    None (period 6); with no sliding window every layer is global."""
    if not window:
        return (FULL,) * n_layers
    if isinstance(pattern, list | tuple):
        if len(pattern) != n_layers:
            raise DataError(f"{where}: GGUF gemma3.attention.sliding_window_pattern has {len(pattern)} entries "
                            f"for {n_layers} layers")
        return tuple(SLIDING if sliding else FULL for sliding in pattern)
    period = int(pattern or 6)
    return tuple(FULL if (i + 1) % period == 0 else SLIDING for i in range(n_layers))


def _gguf_rope_factor(field: Callable[[str], Any], where) -> float:
    """The linear rope factor of the global layers (llama.cpp's converter writes Gemma-3's
    rope_scaling, which applies to those only)."""
    kind = field("gemma3.rope.scaling.type") or "none"
    if kind == "none":
        return 1.0
    if kind == "linear":
        return float(field("gemma3.rope.scaling.factor") or 1.0)
    raise DataError(f"{where}: GGUF gemma3.rope.scaling.type={kind!r} is not supported (only 'linear')")


def _gguf_query_pre_attn_scalar(field: Callable[[str], Any], d_model: int, n_heads: int, n_layers: int,
                                head_dim: int) -> float:
    scale = field("gemma3.attention.scale")
    if scale:
        return float(scale) ** -2
    return float(d_model // n_heads if n_layers == _GGUF_27B_LAYERS else head_dim)
