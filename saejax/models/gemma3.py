"""Gemma-3 causal language models in pure JAX (the family Gemma Scope targets), loaded from a GGUF
file (`saejax.models.gguf_file`; dequantised with the `gguf` package) or a Hugging Face directory (config.json +
*.safetensors, a text model's or a multimodal one's language model).

    params, config = gemma3.load("gemma-3-270m-q4_k_m.gguf")
    logits, captured = gemma3.forward(params, config, ids, mask, capture=[(6, "resid_post")])
    nats = gemma3.cross_entropy(logits, ids, mask)          # mean next-token CE

Architecture (as Hugging Face's Gemma3ForCausalLM): embeddings × sqrt(d_model); per block
pre- and post-norms around attention and the MLP ("sandwich" RMSNorms), RMSNorm on queries and keys
per head, grouped-query attention scaled by query_pre_attn_scalar ** -0.5, rotary embeddings with
base `rope_local_base` on the sliding-window layers (window `sliding_window`) and `rope_global_base`
(optionally linearly scaled) on the global ones (`config.layer_types`; `saejax.models.gemma3_config`
reads both shapes of config.json and GGUF metadata), GeGLU MLP with tanh GELU, final RMSNorm and
logits through the tied embedding.
RMSNorm multiplies by (1 + w) in Hugging Face's checkpoints; GGUF files store (1 + w) already, so
`load` keeps one convention: the params hold the full multiplier. Hook points (`saejax.models`):
attn_out and mlp_out after their post-norms (what is added to the residual), mlp_in after the MLP's
pre-norm (what the MLP reads), resid_post after the block. The residual stream is large (1e4–1e5):
normalise before training an SAE on it.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from saejax.errors import DataError
from saejax.models import gguf_file
from saejax.models.gemma3_config import Gemma3Config, gguf_config, hf_config
from saejax.models.hooks import Hook, HookPoints

# GGUF tensor name per block -> our name; weights are [out, in] like torch Linear
_GGUF_BLOCK = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up",
               "ffn_down": "down", "attn_norm": "attn_pre_norm", "post_attention_norm": "attn_post_norm",
               "ffn_norm": "mlp_pre_norm", "post_ffw_norm": "mlp_post_norm", "attn_q_norm": "q_norm",
               "attn_k_norm": "k_norm"}


def load_gguf(path: str | Path) -> tuple[dict, Gemma3Config]:
    """(params, config) from a Gemma-3 GGUF file, every tensor dequantised to float32."""
    try:
        import gguf  # noqa: PLC0415, F401 (its type table and dequantisers)
    except ImportError:
        raise DataError('reading GGUF files needs the gguf package: pip install -e ".[models]"') from None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model path {str(path)!r} does not exist")
    file = gguf_file.read(path)
    config = gguf_config(file.metadata.get, _gguf_vocab_size(file.tensors, path), path)
    layers = [{} for _ in range(config.n_layers)]
    params = {"layers": layers}
    for tensor in file.tensors:
        value = jnp.asarray(gguf_file.dequantize(tensor))
        name = tensor.name.removesuffix(".weight")
        if name == "token_embd":
            params["embed"] = value
        elif name == "output_norm":
            params["final_norm"] = value
        elif name.startswith("blk."):
            _, index, kind = name.split(".", 2)
            if kind not in _GGUF_BLOCK:
                raise DataError(f"{path}: unexpected tensor {tensor.name!r}")
            layers[int(index)][_GGUF_BLOCK[kind]] = value
    _check_complete(params, config, path)
    return params, config


_HF_BLOCK = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
             "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down",
             "input_layernorm": "attn_pre_norm", "post_attention_layernorm": "attn_post_norm",
             "pre_feedforward_layernorm": "mlp_pre_norm", "post_feedforward_layernorm": "mlp_post_norm",
             "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"}


# wrappers around the language model's tensor names: multimodal (old and new transformers), causal LM
_HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def load_hf(model_dir: str | Path) -> tuple[dict, Gemma3Config]:
    """(params, config) from a Hugging Face Gemma-3 directory (Gemma3ForCausalLM, or the language
    model of Gemma3ForConditionalGeneration); weights to float32, RMSNorm weights get their +1."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise DataError(f"{model_dir}: no config.json")
    config = hf_config(json.loads(config_file.read_text()), config_file)
    layers = [{} for _ in range(config.n_layers)]
    params = {"layers": layers}
    for name, value in _read_text_tensors(model_dir):
        if "norm" in name:
            value = value + 1.0  # Hugging Face stores w of (1 + w)
        if name == "embed_tokens":
            params["embed"] = value
        elif name == "norm":
            params["final_norm"] = value
        elif name.startswith("layers."):
            _, index, kind = name.split(".", 2)
            if kind in _HF_BLOCK:
                layers[int(index)][_HF_BLOCK[kind]] = value
    _check_complete(params, config, model_dir)
    return params, config


def _read_text_tensors(model_dir: Path):
    """(name without wrapper prefix and .weight, float32 jax array) for each language-model tensor
    of the directory's *.safetensors (bf16 included); vision tower and projector are not read."""
    from safetensors import safe_open  # noqa: PLC0415

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DataError(f"{model_dir}: no .safetensors files")
    for file in files:
        with safe_open(str(file), framework="flax") as tensors:
            for key in tensors.keys():
                name = _hf_text_name(key)
                if name is not None:
                    yield name, jnp.asarray(tensors.get_tensor(key), jnp.float32)


def _hf_text_name(key: str) -> str | None:
    """'model.language_model.layers.0.mlp.up_proj.weight' -> 'layers.0.mlp.up_proj'; None for
    tensors outside the language model (vision tower, projector, lm_head)."""
    name = next((key[len(p):] for p in _HF_PREFIXES if key.startswith(p)), key).removesuffix(".weight")
    return name if name in ("embed_tokens", "norm") or name.startswith("layers.") else None


def _gguf_vocab_size(tensors: list[gguf_file.Tensor], path: Path) -> int:
    embed = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise DataError(f"{path}: GGUF tensor 'token_embd.weight' is missing")
    return int(embed.shape[0])


def _check_complete(params: dict, config: Gemma3Config, where) -> None:
    """DataError naming the first missing weights, or an embedding or attention weight whose shape
    is not the config's."""
    missing = [k for k in ("embed", "final_norm") if k not in params]
    missing += [f"layer {i} {k}" for i, layer in enumerate(params["layers"]) for k in set(_GGUF_BLOCK.values()) - set(layer)]
    if missing:
        raise DataError(f"{where}: Gemma-3 weights missing: {', '.join(missing[:5])}")
    expected = {"embedding": (params["embed"].shape, (config.vocab_size, config.d_model)),
                "layer 0 q": (params["layers"][0]["q"].shape, (config.n_heads * config.head_dim, config.d_model)),
                "layer 0 k": (params["layers"][0]["k"].shape, (config.n_kv_heads * config.head_dim, config.d_model))}
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise DataError(f"{where}: {name} weight has shape {tuple(shape)}, the config says {want}")


def load(path: str | Path) -> tuple[dict, Gemma3Config]:
    """A .gguf file or a Hugging Face directory."""
    path = Path(path)
    return load_gguf(path) if path.suffix == ".gguf" else load_hf(path)


def _rms_norm(x, multiplier, eps):
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps) * multiplier


def _rotary(x, positions, base, factor=1.0):
    """Rotate-half rotary embedding of x [B, T, H, D] at positions [T]; factor > 1 interpolates
    positions linearly (angles / factor)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (base ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1])) / factor
    angles = positions[:, None].astype(jnp.float32) * inv_freq[None]  # [T, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[None, :, None, :]
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _attention(x, p, config: Gemma3Config, layer: int, mask):
    batch, length, _ = x.shape
    heads = lambda t, n: t.reshape(batch, length, n, config.head_dim)  # noqa: E731
    q = _rms_norm(heads(x @ p["q"].T, config.n_heads), p["q_norm"], config.rms_eps)
    k = _rms_norm(heads(x @ p["k"].T, config.n_kv_heads), p["k_norm"], config.rms_eps)
    v = heads(x @ p["v"].T, config.n_kv_heads)
    positions = jnp.arange(length)
    base, factor = config.rope(layer)
    q, k = _rotary(q, positions, base, factor), _rotary(k, positions, base, factor)
    group = config.n_heads // config.n_kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * config.query_pre_attn_scalar ** -0.5
    allowed = positions[None, :] <= positions[:, None]  # causal [q, k]
    if not config.is_global(layer):
        allowed &= positions[None, :] > positions[:, None] - config.sliding_window
    allowed = allowed[None, None] & (mask[:, None, None, :] > 0)
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
    return context.reshape(batch, length, -1) @ p["o"].T


def forward(params: dict, config: Gemma3Config, input_ids, attention_mask=None, *, hook: Hook | None = None,
            capture=()) -> tuple[jax.Array, dict]:
    """Logits [B, T, vocab] and the captured hook points {(layer, site): [B, T, d_model]}.
    input_ids int [B, T] (start with BOS); attention_mask [B, T] (1 = token; right padding)."""
    points = HookPoints(hook, capture, config.n_layers)
    ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
    h = params["embed"][ids] * jnp.asarray(config.d_model ** 0.5, jnp.float32)
    for i, p in enumerate(params["layers"]):
        attn = _attention(_rms_norm(h, p["attn_pre_norm"], config.rms_eps), p, config, i, mask)
        h = h + points.apply(i, "attn_out", _rms_norm(attn, p["attn_post_norm"], config.rms_eps))
        x = points.apply(i, "mlp_in", _rms_norm(h, p["mlp_pre_norm"], config.rms_eps))
        mlp = (jax.nn.gelu(x @ p["gate"].T, approximate=True) * (x @ p["up"].T)) @ p["down"].T
        h = h + points.apply(i, "mlp_out", _rms_norm(mlp, p["mlp_post_norm"], config.rms_eps))
        h = points.apply(i, "resid_post", h)
    logits = _rms_norm(h, params["final_norm"], config.rms_eps) @ params["embed"].T
    return logits, points.captured


def token_losses(logits: jax.Array, input_ids, attention_mask=None) -> tuple[jax.Array, jax.Array]:
    """Per-position next-token CE [B, T-1] (nats) and which positions count (both tokens real)."""
    ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], -1)[..., 0]
    return nll, (mask[:, 1:] > 0) & (mask[:, :-1] > 0)


def cross_entropy(logits: jax.Array, input_ids, attention_mask=None) -> jax.Array:
    """Mean next-token cross-entropy (nats) over the real positions."""
    nll, valid = token_losses(logits, input_ids, attention_mask)
    return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1)
