"""Loading trained SAEs and looking at them, e.g. in a notebook.

    params, config = saejax.load("/tmp/sae_run")          # a workdir (its latest good checkpoint)
    params, config = saejax.load("/tmp/sae_run/export")   # or an export folder
    codes = analysis.encode(params, config, raw_activations)          # [n, d_sae], batched
    x_hat = analysis.reconstruct(params, config, raw_activations)     # [n, d_in]
    density = analysis.feature_density(codes); dead = analysis.dead_latents(codes)
    rows, values = analysis.top_activating(codes, n=10)               # per latent, strongest first
    analysis.pca_fvu(train_rows, test_rows, n_components)             # the PCA baseline
    analysis.linear_probe_accuracy(train_codes, y_train, test_codes, y_test)

The params act on **raw** activations for every linear architecture: the training normalisation
(x_train = s · x_raw) is folded into the weights, exactly as in the export. An MLP SAE cannot be
folded: its params are returned as trained and its inputs must be multiplied by
``config.norm_scale`` (always set, for every architecture).
"""

from pathlib import Path

import jax
import ml_collections
import numpy as np

from saejax import checkpoint, config as config_lib, downstream, export, from_config, normalization
from saejax import step as step_lib
from saejax.downstream import linear_probe_accuracy, roc_auc
from saejax.errors import ConfigError, DataError, SaejaxError

__all__ = ["load", "encode", "reconstruct", "decoder_rows", "feature_density", "dead_latents", "top_activating",
           "pca_fvu", "linear_probe_accuracy", "roc_auc"]

EXPORT_CONFIG = export.SAEJAX_CONFIG_FILENAME


def load(path: str | Path, point: str | None = None) -> tuple[dict, ml_collections.ConfigDict]:
    """(params as numpy arrays, a config) from a saejax workdir or export folder, or an SAE trained
    elsewhere: a SAELens directory (cfg.json + sae_weights.safetensors) or a Gemma Scope
    ``params.npz``. Imported SAEs get a default config with their sae.arch/d_sae/k.
    A workdir of several hook points (``model.hookpoints``) holds an SAE per point: `point`
    ("3/resid_post") names the one to load (its config then is that point's alone); its export folder,
    DIR/export/3/resid_post, loads as any.

    Checked before anything is returned (`saejax.validate_weights`): every file parses, cfg.json's
    and the run config's fields have their types, and every tensor its rank, shape, dtype and
    finite values for the sizes and architecture claimed; anything else is one DataError naming the
    file and the field or tensor."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return _load_workdir(path, point)
    if point is not None:
        raise DataError(f"{path}: point={point!r} names an SAE in a workdir of several hook points; this is not a "
                        "workdir (no checkpoints/)")
    if (path / export.CFG_FILENAME).is_file():
        if (path / EXPORT_CONFIG).is_file():
            return _load_export(path)
        return _imported(*export.import_saelens(path))
    if path.suffix == ".npz" and path.is_file():
        return _imported(*export.import_gemma_scope(path))
    raise DataError(f"{path}: not a saejax workdir (no checkpoints/), an export or SAELens folder (no "
                    f"{export.CFG_FILENAME}), nor a Gemma Scope params.npz")


def _imported(params: dict, fields: dict) -> tuple[dict, ml_collections.ConfigDict]:
    from saejax.config import base_config  # noqa: PLC0415

    config = base_config()
    config.sae.arch, config.sae.d_sae = fields["arch"], fields["d_sae"]
    if fields["k"]:
        config.sae.k = fields["k"]
    config.norm_scale = 1.0
    return params, config


def _built(make, where: Path):
    """make() (building what a loaded run config describes: its SAE, or SAE, loss and optimizer);
    DataError naming `where` (where the config came from) and the field when it describes none."""
    try:
        return make()
    except SaejaxError as err:
        raise DataError(f"{where}: {err}") from None
    except (AttributeError, KeyError) as err:
        field = str(err.args[0] if err.args else err).strip("'\"")
        raise DataError(f"{where}: not a saejax run config (no field {field!r})") from None
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: a run config field has the wrong type ({err})") from None


def _load_transcoder_export(path: Path):
    """(params, config) of a transcoder saejax exported (`export.export_transcoder`)."""
    params, cfg = export.load_saelens_transcoder(path)
    config = ml_collections.ConfigDict(export.read_transcoder_export_config(path, cfg))
    _built(lambda: from_config.sae_of(config, int(cfg["d_in"]), int(cfg["d_out"])), path / EXPORT_CONFIG)
    ours = (cfg.get("metadata") or {}).get("saejax") or {}
    config.norm_scale = float(ours.get("norm_scale_folded") or 1.0)
    config.target_norm_scale = float(ours.get("target_norm_scale_folded") or 1.0)
    return params, config


def _load_export(path: Path):
    if export.is_transcoder_export(path):
        return _load_transcoder_export(path)
    params, cfg = export.load_saelens(path)
    where = path / EXPORT_CONFIG
    config = ml_collections.ConfigDict(export.read_export_config(path, cfg))
    _built(lambda: from_config.sae_of(config, int(cfg["d_in"])), where)
    config.norm_scale = export.folded_norm_scale(cfg)
    return params, config


def _saved_config_and_width(ckpt: checkpoint.Checkpointer) -> tuple[ml_collections.ConfigDict, int, Path]:
    """(run config, d_in, its step's folder) saved with the newest checkpoint whose config and
    params.b_dec [d_in] metadata read; DataError naming the checkpoints folder when none does."""
    reasons = []
    for step in reversed(ckpt.all_steps()):
        try:
            saved = ckpt.restore_config(step)
        except Exception as err:  # noqa: BLE001 - Orbax raises many types for a damaged item
            reasons.append(f"step {step}: {(str(err).strip().splitlines() or [type(err).__name__])[0][:200]}")
            continue
        width = ckpt.saved_shape("params", "b_dec", step=step)
        if not (isinstance(saved, dict) and isinstance(saved.get("sae"), dict)):
            reasons.append(f"step {step}: its config is not a saejax run config")
        elif width is None or len(width) not in (1, 2):
            reasons.append(f"step {step}: its state metadata has no params.b_dec [d_in] (nor [hook points, d_in])")
        else:
            return ml_collections.ConfigDict(saved), int(width[-1]), ckpt.directory / str(step)
    raise DataError(f"{ckpt.directory}: no checkpoint can be read ({'; '.join(reasons)})")


def _point_index(path: Path, names: tuple[str, ...], point: str | None) -> int | None:
    """Which SAE of a workdir of several hook points (`names`) `point` names (None for a workdir of one
    SAE); DataError when it names none of them, or is missing where there are several."""
    if not names and point is not None:
        raise DataError(f"{path}: trains one SAE, not one per hook point; load it without point={point!r}")
    if names and point not in names:
        given = "name one" if point is None else f"point={point!r} is none of them"
        raise DataError(f"{path}: holds an SAE per hook point ({', '.join(names)}); {given}: "
                        f"saejax.load(path, point={names[0]!r}), or load its export {path / 'export' / names[0]}")
    return names.index(point) if names else None


def _load_workdir(path: Path, point: str | None = None):
    ckpt = checkpoint.Checkpointer(path / "checkpoints")
    try:
        if ckpt.latest_step() is None:
            raise DataError(f"{path / 'checkpoints'}: holds no checkpoint yet")
        config, d_in, where = _saved_config_and_width(ckpt)
        names = _built(lambda: config_lib.hookpoint_names(config), where / checkpoint.CONFIG)
        index = _point_index(path, names, point)
        d_out = None
        if from_config.is_transcoder(config):  # b_dec is [d_out]; the input's width is W_enc's
            d_out, d_in = d_in, (ckpt.saved_shape("params", "W_enc", step=int(where.name)) or (d_in,))[0]
        sae, loss, optimizer = _built(lambda: from_config.model_from_config(config, d_in, d_out),
                                      where / checkpoint.CONFIG)
        like = step_lib.abstract_train_state(sae, loss, optimizer)
        if index is not None:  # the SAEs of several hook points, stacked
            like = step_lib.stacked_abstract(like, len(names))
        try:
            state, _, _ = ckpt.restore_latest_good(like, is_good=lambda s: step_lib.all_finite(s.params))
        except checkpoint.CheckpointError as err:
            raise DataError(str(err)) from None
    finally:
        ckpt.close()
    if index is not None:
        state, config = step_lib.state_at(state, index), config_lib.point_config(config, index)
    params = jax.tree.map(np.asarray, step_lib.eval_params(sae, state))
    scale, target_scale = normalization.scales(state.norm_scale)
    config.norm_scale = scale
    if sae.transcoder:
        config.target_norm_scale = target_scale
    if sae.spec.has_linear_decoder:
        params = {k: np.asarray(v) for k, v in normalization.fold(params, scale, target_scale).items()}
    return params, config


def _sae_and_scale(params, config):
    """The SAE a loaded config describes, and the factor its inputs need (1 for folded params)."""
    width = int(np.shape(params["b_dec"])[0])
    if from_config.is_transcoder(config):  # b_dec [d_out], W_enc [d_in, d_sae]
        sae = from_config.sae_of(config, int(np.shape(params["W_enc"])[0]), width)
    else:
        sae = from_config.sae_of(config, width)
    return sae, (1.0 if sae.spec.has_linear_decoder else float(config.get("norm_scale", 1.0)))


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    fn = jax.jit(fn)
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, max(len(x), 1), batch_size)])


def encode(params, config, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Inference-mode codes of raw rows x [n, d_in] from `load`'s (params, config): [n, d_sae]."""
    sae, scale = _sae_and_scale(params, config)
    return _batched(lambda rows: sae.encode(params, rows * scale), x, batch_size)


def reconstruct(params, config, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Reconstructions x̂ [n, d_in] of raw rows x, in raw units (a transcoder's: of its targets from
    inputs x, [n, d_out])."""
    sae, scale = _sae_and_scale(params, config)
    if sae.transcoder:  # linear: folded, so on raw rows; the forward carries a skip term
        return _batched(lambda rows: sae.forward(params, rows, train=False).x_hat, x, batch_size)
    return _batched(lambda rows: sae.decode(params, sae.encode(params, rows * scale)) / scale, x, batch_size)


def decoder_rows(params, config) -> np.ndarray:
    """The dictionary of `load`'s (params, config): W_dec [d_sae, d_out], on raw activations. ConfigError
    naming sae.arch when the SAE has no linear decoder rows (a deep MLP decoder)."""
    if "W_dec" not in params:
        raise ConfigError(f"sae.arch={config.sae.arch!r} has no linear decoder rows (W_dec): its latents have no "
                          "single direction to measure absorption or to steer with")
    return np.asarray(params["W_dec"])


def feature_density(codes: np.ndarray) -> np.ndarray:
    """Fraction of rows on which each latent is non-zero. [n, d_sae] -> [d_sae]"""
    return np.mean(np.asarray(codes) != 0, axis=0)


def dead_latents(codes: np.ndarray) -> np.ndarray:
    """Indices of the latents that fire on none of the rows, int64 [n_dead]."""
    return np.flatnonzero(feature_density(codes) == 0)


def top_activating(codes: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """For every latent, the rows where it is largest: (row indices int64 [d_sae, n], their
    activations [d_sae, n]), strongest first (n is capped at the number of rows)."""
    codes = np.asarray(codes)
    n = min(n, codes.shape[0])
    top = np.argpartition(-codes, n - 1, axis=0)[:n].T  # [d_sae, n], unordered
    values = np.take_along_axis(codes.T, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)


def pca_fvu(train: np.ndarray, test: np.ndarray, n_components: int) -> float:
    """FVU of PCA's rank-`n_components` reconstruction of `test`, fitted on `train`: the baseline
    for an SAE with that many active latents per row."""
    return downstream.fvu(test, downstream.pca_reconstruction(train, test, n_components))
