"""Data sources: the `Source` interface and the registry behind `make_source`.

A source turns ``(seed, step, batch_size)`` into a float32 batch ``[batch_size, d_in]``
and nothing else: no hidden iterator state, so a resumed run sees exactly the batches an
uninterrupted run would have seen. All randomness comes from `rng`, a fresh
``np.random.default_rng([seed, stream, *keys])`` per call; the global NumPy RNG is never
touched.

Sources (``c.data.source``):

- ``synthetic``: toy superposition data with known features (`saejax.data.synthetic`).
- ``npy``: a shard store or any ``.npy`` files, streamed (`saejax.data.npy`, `saejax.data.store`).
- ``patches``: whitened natural-image patches (`saejax.data.patches`).
- ``digits``: scikit-learn's bundled 8×8 digits (`saejax.data.digits`).
- ``tabular``: river's bundled Shuttle table for anomaly detection (`saejax.data.tabular`).
- ``model``: a text model's activations, computed on the fly from ``c.model`` (`saejax.data.stream`).

A transcoder's source (``model.target_site`` set) hands out pairs
``(inputs [B, d_in], targets [B, d_out])`` instead: its rows hold both side by side
(`saejax.data.pairs`), and it has a ``d_out``.

Every source keeps a held-out split that no training batch touches (``heldout_rows``,
``heldout_batch``): a seeded set of a store's chunks, another random stream for generated data
(synthetic, patches), the test split of a table, the held-out texts of a streamed model;
evaluation reads only it.

A source may also carry ``stats`` (normalisation statistics, see `saejax.data.store`),
``image_shape`` (rows are flattened images: atom plots), ``labels``, and a held-out split
``test_table`` / ``test_labels`` with a ``task`` ("classification" or "anomaly") that
`saejax.downstream` evaluates after training.
"""

from typing import Callable, Protocol, runtime_checkable

import ml_collections
import numpy as np

from saejax.errors import ConfigError, DataError

SOURCES = ("synthetic", "npy", "patches", "digits", "tabular", "model")

# Stream ids keep the random draws of different purposes independent. Within one stream
# the number of keys must stay fixed (SeedSequence pads short entropy with zeros, so
# [seed, s] and [seed, s, 0] would coincide).
STREAM_BATCH = 1  # keys: (step,)
STREAM_SAMPLE = 2  # keys: ()
STREAM_DICTIONARY = 3  # keys: ()
STREAM_POOL = 4  # keys: ()
STREAM_EPOCH = 5  # keys: (epoch,)
STREAM_WINDOW = 6  # keys: (epoch, window)
STREAM_SPLIT = 7  # keys: ()
STREAM_HELDOUT = 8  # keys: (index,): held-out batches of generated data
STREAM_HELDOUT_CHUNKS = 9  # keys: (): a store's held-out chunks (always under seed 0: one split per store)
STREAM_TEXT_BLOCK = 10  # keys: (epoch, block): a streamed source's text order (data/texts.py)
STREAM_FILL = 11  # keys: (fill, repeat): the order a streamed source hands out a fill's rows in
STREAM_FILL_SHARD = 12  # keys: (fill, shard, repeat): the same for each shard of a fill cut into several


@runtime_checkable
class Source(Protocol):
    """What the trainer reads data through.

    Attributes:
        name: the registry name, one of `SOURCES`.
        d_in: width of every row.
    """

    name: str
    d_in: int

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """Batch number `step`: float32 [batch_size, d_in], a pure function of
        (seed, step, batch_size)."""
        ...

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d_in] sample, for init statistics."""
        ...

    heldout_rows: int | None
    """Rows in the held-out split that no training batch touches: None = as many as asked for
    (generated data), 0 = no split (the data is too small, or `test_fraction` is 0)."""

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """Held-out batch number `index`: float32 [<= batch_size, d_in] (rows index·B … of the
        split; the last batch of a finite split is shorter), a pure function of (seed, index)."""
        ...


def rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A fresh generator for (seed, stream, *keys); never global state.

    Raises ConfigError naming `seed` when it is negative (SeedSequence needs >= 0).
    """
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), int(stream), *(int(k) for k in keys)])


def check_batch_args(step: int, batch_size: int) -> None:
    """Raise DataError unless step >= 0 and batch_size >= 1."""
    if step < 0:
        raise DataError(f"batch step must be >= 0, got {step}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")


def process_rows(batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Rows [lo, hi) of every global batch of `batch_size` that process `index` of `count` feeds:
    [p·B/P, (p+1)·B/P). ConfigError unless B divides by P."""
    if batch_size % count:
        raise ConfigError(f"train.batch_size={batch_size} must be divisible by the number of processes ({count})")
    size = batch_size // count
    return index * size, (index + 1) * size


def check_sample_size(n: int) -> None:
    """Raise DataError unless n >= 1."""
    if n < 1:
        raise DataError(f"sample size must be >= 1, got {n}")


def _make_synthetic(data: ml_collections.ConfigDict, seed: int) -> Source:
    from saejax.data.synthetic import SyntheticSource

    return SyntheticSource(
        seed=seed,
        d=data.d,
        n_features=data.n_features,
        avg_active=data.avg_active,
        freq_ratio=data.freq_ratio,
        correlation=data.correlation,
        children_per_parent=data.children_per_parent,
    )


def _make_npy(data: ml_collections.ConfigDict, seed: int, whole_batches: bool = False) -> Source:
    import jax

    from saejax.data.npy import NpySource

    process_index, process_count = (0, 1) if whole_batches else (jax.process_index(), jax.process_count())
    return NpySource(
        path=data.path, seed=seed, chunk_rows=data.chunk_rows, shuffle_rows=data.shuffle_rows,
        on_bad_rows=data.on_bad_rows, process_index=process_index, process_count=process_count,
        # a config saved before these fields existed had no held-out split
        heldout_fraction=data.get("heldout_fraction", 0.0), heldout_max_rows=data.get("heldout_max_rows", 0),
    )


def _make_patches(data: ml_collections.ConfigDict, seed: int) -> Source:
    from saejax.data.patches import PatchSource

    return PatchSource(
        seed=seed,
        patch_size=data.patch_size,
        n_patches=data.n_patches,
        whiten=data.whiten,
        whiten_eps=data.whiten_eps,
    )


def _make_digits(data: ml_collections.ConfigDict, seed: int) -> Source:
    from saejax.data.digits import digits_source

    return digits_source(seed, test_fraction=data.test_fraction)


def _make_tabular(data: ml_collections.ConfigDict, seed: int) -> Source:
    from saejax.data.tabular import tabular_source

    return tabular_source(seed, dataset=data.tabular_dataset, rows=data.tabular_rows, test_fraction=data.test_fraction)


_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict, int], Source]] = {
    "synthetic": _make_synthetic,
    "npy": _make_npy,
    "patches": _make_patches,
    "digits": _make_digits,
    "tabular": _make_tabular,
}


def make_source(data: ml_collections.ConfigDict, seed: int, *, whole_batches: bool = False,
                model: ml_collections.ConfigDict | None = None, text_model=None, forward_devices=None) -> Source:
    """Build the source named by ``data.source`` from the ``c.data`` config block.

    In a multi-process run the ``npy`` reader and the ``model`` stream (when the processes divide
    ``data.stream_shards``) give each process only its rows of every batch; `whole_batches` asks for
    whole batches instead (every other source always gives them).
    ``model`` streams the activations of the model the ``c.model`` block `model` names (`text_model`:
    that model already loaded, or None to load it here; `forward_devices`: several local devices to run
    its forward on, data-parallel, or None).

    A transcoder's rows (`pair_columns`) come as (inputs, targets) pairs (`saejax.data.pairs.PairSource`).

    Raises ConfigError naming `data.source` (and listing the valid names) when unknown.
    """
    check_pair_fields(data, model)
    if data.source == "model":
        import jax

        from saejax.data.stream import model_source

        process = (0, 1) if whole_batches else (jax.process_index(), jax.process_count())
        return as_pairs(model_source(data, model, seed, text_model, process, forward_devices), data, model)
    factory = _FACTORIES.get(data.source)
    if factory is None:
        raise ConfigError(
            f"data.source: unknown source {data.source!r}; valid: {', '.join(SOURCES)}"
        )
    source = factory(data, seed, whole_batches=True) if whole_batches and data.source == "npy" else factory(data, seed)
    return as_pairs(source, data, model)


def pair_columns(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None, width: int) -> int:
    """How many of the `width` columns of each row are a transcoder's input (the rest its target):
    half of them with ``model.target_site`` (a row holds two hook points of one model, d_model
    columns each), 0 for an SAE's rows. DataError for rows that do not split in two."""
    check_pair_fields(data, model)
    if not (model or {}).get("target_site"):
        return 0
    if width % 2:
        raise DataError(f"model.target_site={model.target_site!r}: the rows of data.source={data.source!r} have "
                        f"{width} columns, not an input and a target of one width each")
    return width // 2


def check_pair_fields(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None) -> None:
    """ConfigError for a model.target_site on a source whose rows are not a text model's activations
    (npy: a store harvested with a target site; model: the stream)."""
    target_site = (model or {}).get("target_site", "")
    if target_site and data.source not in ("npy", "model"):
        raise ConfigError(f"model.target_site={target_site!r} trains a transcoder on pairs of a text model's "
                          "activations: data.source must be 'npy' (a store harvested with a target site) or 'model', "
                          f"not {data.source!r}")


def as_pairs(source: Source, data: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None) -> Source:
    """`source` itself, or for a transcoder's rows (`pair_columns`) a `PairSource` over it."""
    columns = pair_columns(data, model, source.d_in)
    if not columns:
        return source
    from saejax.data.pairs import PairSource

    return PairSource(source, columns)
