"""Gemma-3 as users have it: config.json in the older shape (sliding_window_pattern, rope_theta,
rope_local_base_freq, rope_scaling), the current one (layer_types, rope_parameters) and the one in
between; a query_pre_attn_scalar other than the head dim; linear rope scaling on the global layers;
a multimodal checkpoint's language model; bf16 weights; GGUF metadata. Each small random-weight
model is read by saejax and by transformers' Gemma3ForCausalLM from the same folder and run on the
same tokens."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saejax.errors import DataError
from saejax.models import gemma3
from saejax.models.gemma3_config import FULL, SLIDING, gguf_config, hf_config

BASE = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 97, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "rms_norm_eps": 1e-6, "sliding_window": 4, "query_pre_attn_scalar": 8,
        "max_position_embeddings": 64, "hidden_activation": "gelu_pytorch_tanh", "pad_token_id": 0,
        "bos_token_id": 2, "eos_token_id": 1, "tie_word_embeddings": True}
OLD_ROPE = {"rope_theta": 50_000.0, "rope_local_base_freq": 50.0, "rope_scaling": None}
CURRENT_ROPE = {"rope_parameters": {FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 50_000.0},
                                    SLIDING: {"rope_type": "default", "rope_theta": 50.0}}}
# name -> (config.json keys over BASE, the config fields a reader that ignores the shape's feature gets)
SHAPES = {
    "older": ({"sliding_window_pattern": 2, **OLD_ROPE}, {"layer_types": (SLIDING,) * 4}),
    "older, linear rope scaling": ({"sliding_window_pattern": 2, **OLD_ROPE,
                                    "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
                                   {"rope_global_factor": 1.0}),
    "layer_types with the older rope keys": ({"layer_types": [SLIDING, FULL, FULL, SLIDING], **OLD_ROPE},
                                             {"layer_types": (SLIDING,) * 4}),
    "current": ({"layer_types": [FULL, SLIDING, SLIDING, FULL], **CURRENT_ROPE},
                {"rope_global_factor": 1.0, "rope_local_base": 10_000.0, "rope_global_base": 1_000_000.0}),
    "query_pre_attn_scalar is not the head dim": ({"layer_types": [SLIDING, FULL, SLIDING, FULL], **CURRENT_ROPE,
                                                   "query_pre_attn_scalar": 24}, {"query_pre_attn_scalar": 8.0}),
}
TOKENS = np.random.default_rng(1).integers(3, 97, size=(2, 16)).astype(np.int32)
MASK = np.ones_like(TOKENS)
MASK[1, 11:] = 0  # right padding


def _random_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face Gemma-3 language-model tensors (names below 'model.') of a config.json dict:
    float32, norms w of (1 + w) near 0."""
    rng = np.random.default_rng(seed)
    d, f, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    nq, nkv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (nq, d), "self_attn.k_proj": (nkv, d), "self_attn.v_proj": (nkv, d),
              "self_attn.o_proj": (d, nq), "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f),
              "input_layernorm": (d,), "post_attention_layernorm": (d,), "pre_feedforward_layernorm": (d,),
              "post_feedforward_layernorm": (d,), "self_attn.q_norm": (hd,), "self_attn.k_norm": (hd,)}
    tensors = {"embed_tokens.weight": rng.standard_normal((config["vocab_size"], d)),
               "norm.weight": 0.1 * rng.standard_normal(d)}
    for i in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():
            scale = 0.1 if len(shape) == 1 else shape[1] ** -0.5
            tensors[f"layers.{i}.{name}.weight"] = scale * rng.standard_normal(shape)
    return {name: value.astype(np.float32) for name, value in tensors.items()}


def _hf_folder(folder, config: dict, tensors: dict, prefix: str = "model."):
    """A Hugging Face model folder: config.json and model.safetensors (tensor names under `prefix`)."""
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({prefix + name: value for name, value in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def _transformers_forward(folder) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers' Gemma3ForCausalLM (float32, eager attention) from `folder` on TOKENS / MASK:
    (logits [B, T, vocab], the residual stream after each layer [B, T, d_model])."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Gemma3ForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(TOKENS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                    output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states[1:]]


def _saejax_forward(params, config) -> tuple[np.ndarray, list[np.ndarray]]:
    points = [(layer, "resid_post") for layer in range(config.n_layers)]
    logits, captured = gemma3.forward(params, config, TOKENS, MASK, capture=points)
    return np.asarray(logits), [np.asarray(captured[point]) for point in points]


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs| over the real (unpadded) positions."""
    real = MASK.astype(bool)
    return float(np.abs(ours[real] - theirs[real]).max() / np.abs(theirs[real]).max())


@pytest.mark.slow  # transformers and torch cold: ~11 s for the first shape, ~0.2 s for each other
@pytest.mark.parametrize("shape", SHAPES)
def test_each_config_shape_runs_as_transformers_runs_it(tmp_path, shape):
    keys, ignored = SHAPES[shape]
    config_json = {**BASE, **keys}
    folder = _hf_folder(tmp_path / "model", config_json, _random_weights(config_json))
    logits_ref, hidden_ref = _transformers_forward(folder)
    params, config = gemma3.load(folder)
    logits, hidden = _saejax_forward(params, config)
    for layer in range(config.n_layers - 1):  # transformers' last hidden state is after the final norm
        assert _relative_error(hidden[layer], hidden_ref[layer]) < 1e-5, (shape, layer)
    assert _relative_error(logits, logits_ref) < 1e-5, shape
    # the shape's feature matters here: reading the config without it gives other logits
    wrong, _ = _saejax_forward(params, dataclasses.replace(config, **ignored))
    assert _relative_error(wrong, logits_ref) > 1e-3, shape


def test_a_multimodal_checkpoint_and_bf16_weights_give_the_language_model(tmp_path):
    from safetensors.flax import save_file

    keys, _ = SHAPES["current"]
    text_config = {**BASE, **keys}
    tensors = _random_weights(text_config)
    params, config = gemma3.load(_hf_folder(tmp_path / "text", text_config, tensors))
    # Gemma3ForConditionalGeneration as transformers saves it now: the text model under
    # model.language_model., a vision tower and projector beside it, bf16 as the Hub ships it
    multimodal = tmp_path / "multimodal"
    multimodal.mkdir()
    (multimodal / "config.json").write_text(json.dumps(
        {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text_config,
         "vision_config": {"model_type": "siglip_vision_model"}}))
    bf16 = {f"model.language_model.{name}": jnp.asarray(value, jnp.bfloat16) for name, value in tensors.items()}
    bf16["model.vision_tower.vision_model.post_layernorm.weight"] = jnp.ones(8, jnp.bfloat16)
    bf16["model.multi_modal_projector.mm_input_projection_weight"] = jnp.ones((8, 4), jnp.bfloat16)
    save_file(bf16, str(multimodal / "model.safetensors"))
    params_mm, config_mm = gemma3.load(multimodal)
    assert config_mm == config

    def rounded(x):
        return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)

    np.testing.assert_array_equal(np.asarray(params_mm["embed"]), rounded(params["embed"]))
    np.testing.assert_array_equal(np.asarray(params_mm["layers"][3]["up"]), rounded(params["layers"][3]["up"]))
    norm_weight = tensors["layers.2.self_attn.k_norm.weight"]
    np.testing.assert_array_equal(np.asarray(params_mm["layers"][2]["k_norm"]), 1 + rounded(norm_weight))


def test_a_multimodal_config_lists_only_what_differs_from_the_defaults():
    """Shaped like Gemma-3-27B's multimodal config.json: its text_config lists only what differs from
    transformers' defaults."""
    raw = {"model_type": "gemma3", "text_config": {
        "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
        "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}
    config = hf_config(raw, "config.json")
    assert (config.vocab_size, config.d_model, config.head_dim, config.query_pre_attn_scalar) == (262_208, 5376, 128, 168)
    assert (config.rope_global_base, config.rope_global_factor) == (1_000_000.0, 8.0)
    assert (config.rope_local_base, config.rope_local_factor) == (10_000.0, 1.0)
    assert [i for i in range(62) if config.is_global(i)] == list(range(5, 62, 6))
    assert config.rope(5) == (1_000_000.0, 8.0) and config.rope(4) == (10_000.0, 1.0)


@pytest.mark.parametrize("keys, culprit", [
    ({"rope_parameters": {FULL: {"rope_type": "yarn", "factor": 4.0}}}, "rope_parameters.full_attention.rope_type"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "rope_parameters must be keyed"),
    ({"layer_types": [SLIDING, FULL]}, "layer_types must list 4"),
    ({"layer_types": [SLIDING, FULL, "chunked_attention", FULL]}, "layer_types must list 4"),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
])
def test_configs_saejax_cannot_run_are_refused_naming_the_key(keys, culprit):
    with pytest.raises(DataError, match=f"^config.json: .*{culprit}"):
        hf_config({**BASE, **keys}, "config.json")


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm":
              "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm":
              "post_ffw_norm", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def _gguf_name(name: str) -> str:
    """A Hugging Face tensor name as llama.cpp's converter names it: 'layers.3.mlp.up_proj.weight' ->
    'blk.3.ffn_up.weight'."""
    if name in ("embed_tokens.weight", "norm.weight"):
        return {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}[name]
    _, index, kind = name.removesuffix(".weight").split(".", 2)
    return f"blk.{index}.{GGUF_NAMES[kind]}.weight"


def test_a_folder_whose_config_does_not_fit_its_weights_is_refused(tmp_path):
    tensors = _random_weights(BASE)
    config_json = {key: value for key, value in BASE.items() if key != "head_dim"}  # the default is 256
    with pytest.raises(DataError, match=r"layer 0 q weight has shape \(32, 32\), the config says \(1024, 32\)"):
        gemma3.load(_hf_folder(tmp_path / "model", config_json, tensors))
    (tmp_path / "model" / "config.json").unlink()
    with pytest.raises(DataError, match="no config.json"):
        gemma3.load(tmp_path / "model")


def _write_gguf(path, config: dict, tensors: dict, metadata) -> None:
    """A gemma3 GGUF file as llama.cpp's converter writes it (norms stored as 1 + w), float32;
    metadata(writer) adds the optional keys."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_sliding_window(config["sliding_window"])
    writer.add_bos_token_id(2)
    metadata(writer)
    for name, value in tensors.items():
        writer.add_tensor(_gguf_name(name), value + 1.0 if "norm" in name else value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_with_the_optional_keys_loads_as_its_hugging_face_folder(tmp_path):
    gguf = pytest.importorskip("gguf")
    keys, _ = SHAPES["query_pre_attn_scalar is not the head dim"]
    config_json = {**BASE, **keys}
    tensors = _random_weights(config_json)
    params, config = gemma3.load(_hf_folder(tmp_path / "model", config_json, tensors))

    def metadata(writer):
        writer.add_rope_freq_base(50_000.0)
        writer.add_rope_freq_base_swa(50.0)
        writer.add_sliding_window_pattern([layer == SLIDING for layer in config_json["layer_types"]])
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(8.0)
        writer.add_float32("gemma3.attention.scale", 24 ** -0.5)

    _write_gguf(tmp_path / "model.gguf", config_json, tensors, metadata)
    params_gguf, config_gguf = gemma3.load(tmp_path / "model.gguf")
    # GGUF holds float32 scalars: the scale and the RMSNorm epsilon come back rounded
    assert config_gguf.query_pre_attn_scalar == pytest.approx(24.0, rel=1e-6)
    assert config_gguf.rms_eps == pytest.approx(1e-6, rel=1e-6)
    assert dataclasses.replace(config_gguf, query_pre_attn_scalar=24.0, rms_eps=1e-6) == config
    for ours, theirs in zip(jax.tree.leaves(params_gguf), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)


GGUF_KEYS = {"general.architecture": "gemma3", "gemma3.embedding_length": 5376, "gemma3.block_count": 62,
             "gemma3.attention.head_count": 32, "gemma3.attention.head_count_kv": 16,
             "gemma3.attention.key_length": 128, "gemma3.feed_forward_length": 21504,
             "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.attention.sliding_window": 1024,
             "gemma3.rope.freq_base": 1_000_000.0, "gemma3.rope.scaling.type": "linear",
             "gemma3.rope.scaling.factor": 8.0}


def test_gguf_metadata_without_the_optional_keys_reads_as_llama_cpp_reads_it():
    """Gemma-3-27B's GGUF (llama.cpp's converter): scale from embedding_length / head_count = 168,
    local base 10000, every 6th layer global, linear factor 8 on the global layers."""
    config = gguf_config(GGUF_KEYS.get, 262_208, "27b.gguf")
    assert config == hf_config({"text_config": {
        "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "num_attention_heads": 32,
        "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}, "config.json")
    smaller = {**GGUF_KEYS, "gemma3.block_count": 34, "gemma3.embedding_length": 2560,
               "gemma3.attention.head_count": 8, "gemma3.attention.key_length": 256}
    assert gguf_config(smaller.get, 262_208, "4b.gguf").query_pre_attn_scalar == 256  # key_length
    no_window = {k: v for k, v in GGUF_KEYS.items() if k != "gemma3.attention.sliding_window"}
    assert all(gguf_config(no_window.get, 262_208, "x.gguf").is_global(i) for i in range(62))


@pytest.mark.parametrize("keys, culprit", [
    ({"gemma3.rope.scaling.type": "yarn"}, "gemma3.rope.scaling.type='yarn'"),
    ({"gemma3.attention.sliding_window_pattern": [True, False]}, "2 entries for 62 layers"),
    ({"gemma3.final_logit_softcapping": 30.0}, "gemma3.final_logit_softcapping"),
    ({"general.architecture": "llama"}, "general.architecture='llama'"),
    ({"gemma3.block_count": None}, "'gemma3.block_count' is missing"),
])
def test_gguf_metadata_saejax_cannot_run_is_refused_naming_the_key(keys, culprit):
    with pytest.raises(DataError, match=f"^x.gguf: .*{culprit}"):
        gguf_config({**GGUF_KEYS, **keys}.get, 262_208, "x.gguf")
