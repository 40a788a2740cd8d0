"""BERT-family encoders (e.g. all-MiniLM-L6-v2) in pure JAX, loaded from a Hugging Face-format
directory: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json`` for `tokenize`).

    params, config = bert.load(model_dir)
    ids, mask = bert.tokenize(model_dir, ["a sentence", "another one"], max_length=128)
    hidden, captured = bert.forward(params, config, ids, mask, capture=[(3, "resid_post")])
    embedding = bert.mean_pool(hidden, mask)            # sentence-transformers' pooling

Post-LayerNorm blocks as in the original BERT: h ← LN(h + attn_out), h ← LN(h + mlp_out); the
hook points (`saejax.models`) are attn_out and mlp_out before they are added, mlp_in the MLP's
input (h after the attention LayerNorm) and resid_post after the block's final LayerNorm.
Weights stay float32 as stored.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import ConfigError, DataError
from saejax.models.hooks import Hook, HookPoints


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT config.json that the forward pass uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str = "gelu"

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers


def _read_config(model_dir: Path) -> BertConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise DataError(f"{model_dir}: no config.json (expected a Hugging Face-format model directory)")
    raw = json.loads(path.read_text())
    if raw.get("model_type", "bert") != "bert":
        raise DataError(f"{path}: model_type={raw.get('model_type')!r}, not a BERT model")
    fields = {name: raw[name] for name in BertConfig.__dataclass_fields__ if name in raw}
    if raw.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "relu"):
        raise DataError(f"{path}: hidden_act={raw['hidden_act']!r} is not supported (gelu, gelu_new, relu)")
    try:
        return BertConfig(**fields)
    except TypeError as e:
        raise DataError(f"{path}: {e}") from None


def load(model_dir: str | Path) -> tuple[dict, BertConfig]:
    """(params: a nested dict of float32 jax arrays, config) from a Hugging Face BERT directory."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"model path {str(model_dir)!r} does not exist or is not a directory")
    config = _read_config(model_dir)
    weights_path = model_dir / "model.safetensors"
    if not weights_path.is_file():
        raise DataError(f"{model_dir}: no model.safetensors")
    raw = {k.removeprefix("bert."): v for k, v in load_file(str(weights_path)).items()}

    def get(name):
        if name not in raw:
            raise DataError(f"{weights_path}: tensor {name!r} is missing")
        return jnp.asarray(raw[name], jnp.float32)

    def dense(prefix):  # Hugging Face Linear weights are [out, in]; keep them as x @ W: [in, out]
        return {"w": get(f"{prefix}.weight").T, "b": get(f"{prefix}.bias")}

    def norm(prefix):
        return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

    params = {
        "embeddings": {
            "word": get("embeddings.word_embeddings.weight"),
            "position": get("embeddings.position_embeddings.weight"),
            "token_type": get("embeddings.token_type_embeddings.weight"),
            "norm": norm("embeddings.LayerNorm"),
        },
        "layers": [
            {
                "query": dense(f"encoder.layer.{i}.attention.self.query"),
                "key": dense(f"encoder.layer.{i}.attention.self.key"),
                "value": dense(f"encoder.layer.{i}.attention.self.value"),
                "attn_out": dense(f"encoder.layer.{i}.attention.output.dense"),
                "attn_norm": norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                "mlp_in": dense(f"encoder.layer.{i}.intermediate.dense"),
                "mlp_out": dense(f"encoder.layer.{i}.output.dense"),
                "mlp_norm": norm(f"encoder.layer.{i}.output.LayerNorm"),
            }
            for i in range(config.num_hidden_layers)
        ],
    }
    return params, config


def load_tokenizer(model_dir: str | Path):
    """The directory's tokenizer.json as a `tokenizers.Tokenizer` ([CLS] ... [SEP] around each text)."""
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415
    except ImportError:
        raise ConfigError('tokenising needs the tokenizers package: pip install -e ".[models]"') from None
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{model_dir}: no tokenizer.json")
    return Tokenizer.from_file(str(path))


def tokenize(model_dir: str | Path, texts: list[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(input ids int32 [B, T], attention mask int32 [B, T]) with the directory's tokenizer.json,
    [CLS] ... [SEP], truncated to `max_length` and padded to the longest text."""
    from saejax.models.loading import encode  # noqa: PLC0415

    return encode(load_tokenizer(model_dir), texts, max_length)


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["w"] + p["b"]


def _activation(name):
    if name == "relu":
        return jax.nn.relu
    return lambda x: jax.nn.gelu(x, approximate=name == "gelu_new")


def _attention(h, p, mask, n_heads):
    batch, length, width = h.shape
    split = lambda t: t.reshape(batch, length, n_heads, width // n_heads)  # noqa: E731
    q, k, v = (split(_dense(h, p[name])) for name in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // n_heads)
    scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return _dense(context.reshape(batch, length, width), p["attn_out"])


def forward(params: dict, config: BertConfig, input_ids, attention_mask, *, token_type_ids=None,
            hook: Hook | None = None, capture=()) -> tuple[jax.Array, dict]:
    """The last hidden states [B, T, hidden_size] and the captured hook points {(layer, site):
    [B, T, hidden_size]}. input_ids, attention_mask: int [B, T] (mask 1 = token, 0 = padding)."""
    points = HookPoints(hook, capture, config.n_layers)
    ids = jnp.asarray(input_ids)
    if ids.shape[1] > config.max_position_embeddings:
        raise DataError(f"sequence length {ids.shape[1]} exceeds the model's {config.max_position_embeddings} positions")
    mask = jnp.asarray(attention_mask)
    types = jnp.zeros_like(ids) if token_type_ids is None else jnp.asarray(token_type_ids)
    e = params["embeddings"]
    h = e["word"][ids] + e["position"][jnp.arange(ids.shape[1])][None] + e["token_type"][types]
    h = _layer_norm(h, e["norm"], config.layer_norm_eps)
    act = _activation(config.hidden_act)
    for i, p in enumerate(params["layers"]):
        attn = points.apply(i, "attn_out", _attention(h, p, mask, config.num_attention_heads))
        h = _layer_norm(h + attn, p["attn_norm"], config.layer_norm_eps)
        mlp_in = points.apply(i, "mlp_in", h)  # what the MLP reads; the residual stream keeps h
        mlp = points.apply(i, "mlp_out", _dense(act(_dense(mlp_in, p["mlp_in"])), p["mlp_out"]))
        h = points.apply(i, "resid_post", _layer_norm(h + mlp, p["mlp_norm"], config.layer_norm_eps))
    return h, points.captured


def mean_pool(hidden: jax.Array, attention_mask) -> jax.Array:
    """Mean of the token states over non-padding positions (sentence-transformers' pooling). [B, d]"""
    mask = jnp.asarray(attention_mask, hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
