"""Harvest a text model's activations at one hook point into a shard store for training.

    manifest = harvest(load_text_model("minilm"), corpus.stdlib_docstrings(), layer=3, site="resid_post",
                       out_dir="acts", context_length=128, max_tokens=1_000_000)

Texts are taken in chunks of a few batches and sorted by length inside a chunk, then tokenised in
batches (truncated to `context_length`, padded to the next bucket (`saejax.models.loading.bucket_length`)
above the batch's longest text, so the jitted forward compiles a few times at most and little of it
is padding), run through the model with the hook point captured, and every real token's
activation [d_model] is appended to a `saejax.data.store.ShardWriter` (chunk by chunk, in a fixed order); padding and
(by default) special tokens ([CLS], [SEP], BOS) are dropped. Then train on it with
``--config.data.source=npy --config.data.path=acts``.

`chunk_rows` is that step for one chunk of texts; the streamed source (``data.source=model``,
`saejax.data.stream`) makes its rows with it too.

With a `target_site` (a transcoder's data: e.g. site="mlp_in", target_site="mlp_out"), one forward
pass captures both points of the layer and each row holds the input and the target side by side,
[2·d_model] (`saejax.data.pairs`): the store's rows are pairs, aligned by construction.

Resumable: shards are cut only between chunks, and after each shard `harvest_progress.json`
records how many texts it covers, so a rerun with the same arguments continues after the last
complete shard (its statistics recomputed from the shards on disk). Different arguments for an
unfinished folder are refused.
"""

import json
import sys
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from saejax.data.store import MANIFEST, Manifest, ShardWriter
from saejax.errors import DataError
from saejax.models.hooks import check_points, check_transcoder_sites
from saejax.models.loading import load_text_model, padded_rows

PROGRESS = "harvest_progress.json"
CHUNK_BATCHES = 8  # texts are length-sorted within chunks of this many batches
SETTINGS = "harvest.json"  # what a finished harvest was made with


def _batches(texts: Iterable[str], size: int):
    texts = iter(texts)
    while batch := list(islice(texts, size)):
        yield batch


def _jitted_capture(model, points: list[tuple[int, str]], join, devices=None):
    """Jitted (params, ids int32 [B, T], mask int32 [B, T]) -> join([the activations at each of `points`
    [B, T, d_model]]) from one forward of `model`; the params are an argument, not constants baked
    into the program. Several `devices`: the forward runs data-parallel over them, each computing its
    share of the B contexts (`capture.rows_multiple`: B must divide by it; `chunk_rows` pads), the
    params copied onto every device once."""
    def capture(params, ids, mask):
        captured = model.apply(params, ids, mask, capture=points)[1]
        return join([captured[point] for point in points])

    if not devices or len(devices) < 2:
        return jax.jit(capture)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415

    mesh = Mesh(np.asarray(devices), ("contexts",))
    whole, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("contexts"))
    jitted = jax.jit(capture, in_shardings=(whole, split, split), out_shardings=split)
    placed: list = []  # [(the params given, their copy on every device)]

    def data_parallel(params, ids, mask):
        if not placed or placed[0][0] is not params:
            placed[:] = [(params, jax.device_put(params, whole))]
        return jitted(placed[0][1], ids, mask)

    data_parallel.rows_multiple = len(devices)
    return data_parallel


def capture_at(model, layer: int, site: str, target_site: str | None = None, devices=None):
    """Jitted (params, ids int32 [B, T], mask int32 [B, T]) -> the activations at (layer, site)
    [B, T, d_model] of `model` (a `saejax.models.loading.TextModel`); with `target_site`, those at
    (layer, site) and (layer, target_site) side by side, [B, T, 2·d_model] (a transcoder's input and
    target, from one forward pass). ConfigError naming a layer or site that does not exist, or a
    target site that is not after the input site (`check_transcoder_sites`). `devices`: see
    `_jitted_capture`."""
    points = [(layer, site)] + ([(layer, target_site)] if target_site else [])
    check_points(points, model.n_layers)
    if target_site:
        check_transcoder_sites(site, target_site)
    return _jitted_capture(model, points, lambda parts: jnp.concatenate(parts, -1) if target_site else parts[0],
                           devices)


def capture_points(model, points: tuple[tuple[int, str], ...], devices=None):
    """Jitted (params, ids int32 [B, T], mask int32 [B, T]) -> the activations at every one of `points`
    [B, T, P, d_model], from one forward (several hook points, `saejax.hookpoints`). `devices`: see
    `_jitted_capture`."""
    points = check_points(points, model.n_layers)
    return _jitted_capture(model, list(points), lambda parts: jnp.stack(parts, axis=2), devices)


def row_width(model, target_site: str | None = None) -> int:
    """Columns of the rows `capture_at` gives: d_model, or 2·d_model with a target site."""
    return model.d_model * (2 if target_site else 1)


def kept_tokens(model, texts: list[str], context_length: int, drop_special: bool = True) -> np.ndarray:
    """How many rows each text gives, int64 [len(texts)]: its tokens (truncated to `context_length`)
    that are not padding nor, with `drop_special`, special tokens."""
    ids, mask = model.tokenize(list(texts), context_length)
    keep = mask.astype(bool) & ~(model.special(ids) if drop_special else False)
    return keep.sum(1).astype(np.int64)


def chunk_rows(model, capture, texts: list[str], context_length: int, batch_size: int,
               drop_special: bool = True, width: int | None = None) -> np.ndarray:
    """The activations of one chunk of texts as harvest writes them, float32 [sum of kept_tokens,
    width (`row_width`; None: d_model)]: the texts sorted by length (stable), run through `capture`
    (`capture_at`) `batch_size` at a time (a data-parallel capture's batches padded to its
    `rows_multiple` with copies of their last context), each text's kept tokens in order."""
    if not texts:
        return np.zeros((0, width or model.d_model), np.float32)
    all_ids, all_mask = model.tokenize(list(texts), context_length)  # once for the chunk
    order = np.argsort(all_mask.sum(1), kind="stable")
    parts = []
    for b in range(0, len(texts), batch_size):
        real = order[b:b + batch_size]
        rows = np.pad(real, (0, -len(real) % getattr(capture, "rows_multiple", 1)), mode="edge")
        ids, mask, keep = padded_rows(model, all_ids[rows], all_mask[rows], context_length, drop_special)
        keep[len(real):] = False  # copies of the last context fill the devices' shares; never kept
        parts.append(np.asarray(capture(model.params, ids, mask), np.float32)[keep])
    return np.concatenate(parts)


def harvest(model, texts: Iterable[str], *, layer: int, site: str, out_dir: str | Path, context_length: int = 128,
            batch_size: int = 32, max_tokens: int = 1_000_000, dtype: str = "float32", rows_per_shard: int = 65536,
            drop_special: bool = True, log_every_s: float = 10.0, target_site: str | None = None) -> Manifest:
    """Write the activations of `model` (a `saejax.models.loading.TextModel`) at (layer, site) for
    `texts` into a store in `out_dir`, at most `max_tokens` rows; returns the manifest. With
    `target_site`, each row is the pair [site | target_site] of one token (`capture_at`)."""
    capture = capture_at(model, layer, site, target_site)
    width = row_width(model, target_site)
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise DataError(f"{out}: already holds a finished store ({MANIFEST}); choose a new folder")
    settings = {"model": model.name, "layer": layer, "site": site, "context_length": context_length,
                "batch_size": batch_size, "drop_special": drop_special, "dtype": dtype}
    if target_site:
        settings["target_site"] = target_site  # rows [site | target_site]: d_model input columns first
    progress_path = out / PROGRESS
    texts_done = 0
    if progress_path.exists():
        progress = json.loads(progress_path.read_text())
        if progress["settings"] != settings:
            raise DataError(f"{out}: an unfinished harvest with other settings ({progress['settings']}); "
                            "use the same arguments to resume it, or a new folder")
        texts_done = progress["texts_done"]
    elif any(out.glob("shard_*.npy")):
        raise DataError(f"{out}: holds shards but no {PROGRESS}; choose a new folder")
    # texts go in chunks of CHUNK_BATCHES batches, sorted by length inside a chunk (similar lengths
    # share a batch: little padding); shards are cut only between chunks, where a harvest resumes
    chunk_texts = batch_size * CHUNK_BATCHES
    shard_rows = max(rows_per_shard, chunk_texts * context_length)
    writer = ShardWriter(out, width, dtype, shard_rows, resume=texts_done > 0)
    if texts_done:
        print(f"resuming the harvest in {out}: {writer.rows_written} rows from {texts_done} texts", flush=True)

    done, rows_total = texts_done, writer.rows_written
    first_rows = rows_total
    start, last_log = time.perf_counter(), time.perf_counter()
    for chunk in _batches(islice(texts, texts_done, None), chunk_texts):
        if rows_total >= max_tokens:
            break
        rows = chunk_rows(model, capture, chunk, context_length, batch_size, drop_special,
                          width)[: max_tokens - rows_total]
        if writer.pending_rows + rows.shape[0] > shard_rows:
            writer.flush()
            progress_path.write_text(json.dumps({"settings": settings, "texts_done": done}))
        writer.append(rows)
        rows_total += rows.shape[0]
        done += len(chunk)
        if time.perf_counter() - last_log > log_every_s:
            rate = (rows_total - first_rows) / (time.perf_counter() - start)
            print(f"harvest: {rows_total:,} tokens from {done:,} texts, {rate:,.0f} tokens/s", flush=True)
            last_log = time.perf_counter()
    if rows_total == 0:
        raise DataError("the texts gave no tokens to harvest")
    manifest = writer.close()
    (out / SETTINGS).write_text(json.dumps({"settings": settings, "texts": done, "rows": rows_total}, indent=2) + "\n")
    progress_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    print(f"harvested {rows_total:,} tokens of width {width} from {done:,} texts into {out} "
          f"({(rows_total - first_rows) / seconds:,.0f} tokens/s)", file=sys.stdout, flush=True)
    return manifest


# ---------------------------------------------------------------------------------------------
# A run with `model.name` set: harvest into the workdir, keep every 10th text for evaluation.

HELD_OUT_EVERY = 10
CHARS_PER_TOKEN = 3  # texts are cut into windows of CHARS_PER_TOKEN · context_length characters


def corpus_texts(text_glob: str, context_length: int, held_out: bool | None = None) -> Iterable[str]:
    """The paragraphs of `text_glob`'s files (or, with "", of the standard library's docstrings and
    source), long ones cut into windows that fit `context_length` tokens (~3.4 characters per token
    for Gemma on the standard library, ~4 for English prose: under 3 % of windows are truncated).
    held_out=True keeps only every HELD_OUT_EVERY-th paragraph, False all the others, None all."""
    from saejax.models import corpus  # noqa: PLC0415

    texts = corpus.text_files(text_glob) if text_glob else corpus.stdlib_text()
    if held_out is not None:  # whole paragraphs are held out, before they are cut into windows
        texts = (text for i, text in enumerate(texts) if (i % HELD_OUT_EVERY == 0) == held_out)
    return corpus.windows(texts, CHARS_PER_TOKEN * context_length)


def run_texts(model_config, held_out: bool) -> Iterable[str]:
    """The run's texts (`corpus_texts` of model.text_glob) without (or, with `held_out`, only) the
    windows of every HELD_OUT_EVERY-th paragraph, which the splice evaluation uses."""
    return corpus_texts(model_config.text_glob, model_config.context_length, held_out)


def prepare_run(config, workdir: Path):
    """For a config with ``model.name``: the TextModel, with (data.source=npy) the activations
    harvested into ``data.path`` (default ``workdir/activations``) unless a finished store is there
    (an unfinished one is resumed; sets data.path on `config`), or (data.source=model) nothing
    harvested: the source streams them. None without model.name."""
    m = config.model
    if not m.name:
        return None
    if config.data.source not in ("npy", "model"):
        raise DataError(f"model.name={m.name!r} trains on the model's activations: data.source must be 'npy' "
                        f"(harvested first) or 'model' (streamed), not {config.data.source!r}")
    if config.data.source == "model":
        return load_text_model(m.name)
    if jax.process_count() > 1:
        raise DataError("harvesting runs in one process; harvest first (experiments/harvest.py), then train "
                        "with several processes on data.path")
    model = load_text_model(m.name)
    path = Path(config.data.path or Path(workdir) / "activations")
    config.data.path = str(path)
    target_site = m.get("target_site") or None
    if not (path / MANIFEST).exists():
        harvest(model, run_texts(m, held_out=False), layer=m.layer, site=m.site, out_dir=path,
                context_length=m.context_length, max_tokens=m.max_tokens, target_site=target_site)
    elif (path / SETTINGS).exists():  # reuse, if it holds this model's activations at this point
        made = json.loads((path / SETTINGS).read_text())["settings"]
        wanted = {"model": model.name, "layer": m.layer, "site": m.site, "target_site": target_site}
        if {k: made.get(k) for k in wanted} != wanted:
            raise DataError(f"data.path={str(path)!r} holds activations of {made.get('model')} layer {made.get('layer')} "
                            f"{_sites(made.get('site'), made.get('target_site'))}, not of model.name={m.name!r} layer "
                            f"{m.layer} {_sites(m.site, target_site)}; use another data.path (or --workdir)")
    return model


def _sites(site: str, target_site: str | None) -> str:
    """'mlp_in' or, for a transcoder's pairs, 'mlp_in -> mlp_out'."""
    return f"{site} -> {target_site}" if target_site else site
