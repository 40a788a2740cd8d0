"""Loading trained SAEs for analysis, e.g. in a notebook.

    params, config = saejax.load("/tmp/sae_run")          # a workdir (its latest good checkpoint)
    params, config = saejax.load("/tmp/sae_run/export")   # or an export folder
    sae = saejax.sae_from_config(config.sae, params["b_dec"].shape[0])
    z = sae.encode(params, raw_activations)

The params act on **raw** activations for every linear architecture: the training normalisation
(x_train = s · x_raw) is folded into the weights, exactly as in the export. An MLP SAE cannot be
folded: its params are returned as trained and its inputs must be multiplied by
``config.norm_scale`` (always set, for every architecture).
"""

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from saejax import checkpoint, export, train
from saejax.errors import DataError

EXPORT_CONFIG = "saejax_config.json"


def load(path: str | Path) -> tuple[dict, ml_collections.ConfigDict]:
    """(params as numpy arrays, the run's config) from a workdir or an export folder."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return _load_workdir(path)
    if (path / export.CFG_FILENAME).is_file():
        return _load_export(path)
    raise DataError(f"{path}: neither a saejax workdir (no checkpoints/) nor an export folder (no {export.CFG_FILENAME})")


def _load_export(path: Path):
    params, cfg = export.load_saelens(path)
    config_path = path / EXPORT_CONFIG
    if not config_path.is_file():
        raise DataError(f"{config_path}: missing; this export was not written by saejax (use saejax.load_saelens)")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    config.norm_scale = float(cfg.get("metadata", {}).get("saejax", {}).get("norm_scale_folded", 1.0))
    return params, config


def _load_workdir(path: Path):
    ckpt = checkpoint.Checkpointer(path / "checkpoints")
    try:
        if ckpt.latest_step() is None:
            raise DataError(f"{path / 'checkpoints'}: holds no checkpoint yet")
        config = ml_collections.ConfigDict(ckpt.restore_config())
        sae, loss, optimizer = train.model_from_config(config, ckpt.saved_shape("params", "b_dec")[0])
        like = train.abstract_train_state(sae, loss, optimizer)
        state, _, _ = ckpt.restore_latest_good(like, is_good=lambda s: train.all_finite(s.params))
    finally:
        ckpt.close()
    params = jax.tree.map(np.asarray, state.params)
    scale = float(state.norm_scale)
    config.norm_scale = scale
    if sae.arch != "mlp":
        params = {k: np.asarray(v) for k, v in export.fold_norm_scale(params, scale).items()}
    return params, config
