"""The ``model`` source: a text model's activations computed on the fly, through a mixing buffer,
with nothing harvested to disk first.

    source = model_source(c.data, c.model, seed)        # the model that c.model names
    batch = source.batch(step, 1024)                     # float32 [1024, d_model]

Rows are made exactly as `saejax.harvest` makes them (`saejax.harvest.chunk_rows`): each text is one
context (tokenised, truncated to ``model.context_length``) run through the jitted model with the hook
point (``model.layer``, ``model.site``) captured, and every token that is not padding or special
([CLS], [SEP], BOS) gives a row.

The stream is cut into *fills* of F = ``data.buffer_contexts`` contexts: SAELens' mixing buffer,
made deterministic.

1. Fill j is the texts at positions [j·F, (j+1)·F) of the text order (`saejax.data.texts.TextOrder`:
   the training texts in seeded, shuffled blocks of ``data.shuffle_texts``, read again and again).
2. They go through the model in harvest's chunks (``data.forward_batch`` contexts a pass): the
   fill's R_j rows, [R_j, d_model].
3. The fill hands out ``batches_per_fill(B)`` batches of B rows, in the order of a permutation drawn
   from (seed, j): as many as hold FILL_USE of the rows a fill is expected to hold (F times the mean
   rows per context of the first ESTIMATE_TEXTS texts of the order). The rest of the fill is
   dropped. A fill that falls short (rare: the texts are shuffled, so fills differ by a few per
   cent) hands some rows out twice (further permutations, from (seed, j, r)), with a warning.

Batch i is therefore rows [k·B, (k+1)·B) of fill i // batches_per_fill(B), k = i mod
batches_per_fill(B): a pure function of (seed, i, B, the corpus), whatever was asked for before. A
resumed run recomputes at most the fill it stopped in (and re-reads the corpus up to it).

*Shards* (``data.stream_shards`` = S > 1): each fill's F texts are cut into S runs of F/S texts, and
each shard does the above on its own: its rows, a permutation of them from (seed, j, s), B/S rows of
every batch. Batch i is shard 0's B/S rows, then shard 1's, and so on. Of a run's P processes (P
dividing S) process p computes only shards [p·S/P, (p+1)·S/P) of each fill, which are exactly its
rows [p·B/P, (p+1)·B/P) of every batch; the batches depend on S, never on P. (Every process computes
all of fill 0, for the sample and statistics all of them start from.) With P not dividing S every
process computes whole fills and keeps its slice (`saejax.data.batches.read_local_batch`). A process
runs the model on its default device, or with ``data.forward_on_all_devices`` data-parallel on all of
its devices (`saejax.harvest.capture_at`'s `devices`; rows equal to float rounding, not bitwise).

With ``model.target_site`` (a transcoder's data) each row is the pair [site | target_site] of one token,
captured in one forward pass (`saejax.harvest.capture_at`), [2·d_model]; `saejax.data.pairs.PairSource`
hands the halves out as (inputs, targets).

Held out: the texts harvesting keeps out (every 10th paragraph, `saejax.harvest.run_texts`), which no
fill reads. Their rows, in corpus order and harvest's chunks, up to ``data.heldout_max_rows``, are
the split `heldout_batch` reads; the splice evaluation uses the first ``model.eval_texts`` of the same
texts. ``stats`` (E‖x‖² for the activation normalisation) and `sample` come from fill 0: F contexts
drawn at random (seeded) from the first block of texts.

In bfloat16 (``data.stream_dtype``): a fill's rows are rounded to bfloat16 as they are made (as a
bfloat16 store holds them, `saejax.data.store.encode`) and kept so, half the memory; batches, the
sample and the held-out split hand them out as float32.

Written through (``data.path`` set): every shard of a fill and every held-out chunk is saved into that
folder as the model computes it, and read back instead of computed by later runs of the same stream
(`saejax.data.fill_store`): a sweep over SAEs runs the model once.

Several hook points (``model.hookpoints``): each forward captures all of them, and a fill keeps the
rows of every point side by side ([R_j, P, d_model]), so that batch i of every point holds the rows of
the same tokens, handed out in the same permutation. `batch`, `sample` and `heldout_batch` then
give [P, B, d_model], every point's rows stacked (`stats`: a list, one per point), and ``at(i)`` is
point i alone, a `Source` like a stream of that point by itself (whose rows it equals).

"""

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import islice

import numpy as np
from absl import logging

from saejax import harvest
from saejax.data import STREAM_FILL, STREAM_FILL_SHARD, STREAM_SAMPLE, check_batch_args, check_sample_size, rng
from saejax.data.fill_store import FillStore, fill_file, heldout_file, texts_digest
from saejax.data.store import RunningStats, decode, encode, file_dtype
from saejax.data.texts import TextOrder
from saejax.errors import ConfigError, DataError
from saejax.models.hooks import parse_points, point_name

FILL_USE = 0.9  # share of a fill's expected rows it hands out (a fill's rows vary by ~2 % at F=1024)
ESTIMATE_TEXTS = 4096  # texts whose mean rows per context sizes every fill
_CACHED = 2  # fills (and held-out chunks) kept in memory


def _remember(cache: OrderedDict, key, make: Callable, limit: int = _CACHED):
    """cache[key], made by make() on a miss; the least recently used of more than `limit` dropped."""
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = make()
        if len(cache) > limit:
            cache.popitem(last=False)
    return cache[key]


class ModelSource:
    """A text model's activations, streamed; see the module docstring.

    Attributes:
        name: ``'model'``.
        d_in: the rows' width: d_model, or 2·d_model with a target site (pairs).
        order: the training texts' order (`saejax.data.texts.TextOrder`).
        description: what the rows are, for logs.
        points: the hook points streamed, ((layer, site), ...).
        point_names: their names ("3/resid_post", ...) when there are several (rows [P, ..., d_in]);
            () for one point (rows [..., d_in]).
        shards: S, the shards of every fill.
        process_count: the processes whose rows `batch` divides (it gives this process's alone), or
            1 when it gives whole batches.
        whole_heldout: True: `heldout_batch` gives whole batches in every process.
    """

    name = "model"
    whole_heldout = True

    def __init__(self, model, texts: Callable[[], Iterable[str]], heldout_texts: Callable[[], Iterable[str]], *,
                 seed: int, layer: int, site: str, context_length: int = 128, buffer_contexts: int = 1024,
                 shuffle_texts: int = 65536, forward_batch: int = 32, heldout_max_rows: int = 100_000,
                 points: tuple[tuple[int, str], ...] = (), target_site: str | None = None, shards: int = 1,
                 process: tuple[int, int] = (0, 1), store: str = "", dtype: str = "float32",
                 devices=None) -> None:
        """points: several hook points to stream at once (then `layer` and `site` are not read); () or
        one point: (layer, site) alone. target_site: a transcoder's target, captured beside (layer, site)
        in each row (one point only). shards: S, see the module docstring. process: (index, count) of
        this process among the run's. store: a folder to write the rows through to ("": none).
        dtype: how rows are kept and written through, float32 or bfloat16 (handed out as float32).
        devices: several of this process's devices to run the model's forward on, data-parallel (each
        computing its share of every forward's contexts); None: the default device."""
        for field, value, least in (("data.buffer_contexts", buffer_contexts, 1),
                                    ("data.forward_batch", forward_batch, 1),
                                    ("model.context_length", context_length, 1),
                                    ("data.heldout_max_rows", heldout_max_rows, 0),
                                    ("data.stream_shards", shards, 1)):
            if value < least:
                raise ConfigError(f"{field} must be >= {least}, got {value}")
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"data.stream_dtype={dtype!r} must be float32 or bfloat16")
        self.dtype = dtype
        if buffer_contexts % shards:
            raise ConfigError(f"data.buffer_contexts={buffer_contexts} must divide by data.stream_shards={shards} "
                              "(each shard of a fill holds as many contexts)")
        self.shards = shards
        index, count = process
        self.process_count = count if count > 1 and shards % count == 0 else 1
        own = shards // self.process_count
        self.local_shards = range(index * own, (index + 1) * own) if self.process_count > 1 else range(shards)
        if count > 1 and self.process_count == 1:
            logging.warning("data.stream_shards=%d does not divide by the %d processes: each computes whole fills "
                            "and keeps its rows (a multiple of %d shards lets each compute only its own)",
                            shards, count, count)
        self.model, self.seed, self.d_in = model, seed, harvest.row_width(model, target_site)
        self.context_length, self.buffer_contexts, self.forward_batch = context_length, buffer_contexts, forward_batch
        self.heldout_max_rows = heldout_max_rows
        self.points = tuple((int(layer), str(site)) for layer, site in (points or [(layer, site)]))
        self.point_names = tuple(point_name(point) for point in self.points) if len(self.points) > 1 else ()
        if target_site and self.point_names:
            raise ConfigError("model.target_site (a transcoder) reads one hook point; model.hookpoints names "
                              f"{len(self.points)}")
        self.target_site = target_site
        self.capture = (harvest.capture_points(model, self.points, devices) if self.point_names
                        else harvest.capture_at(model, *self.points[0], target_site, devices))
        self.order = TextOrder(texts, seed, shuffle_texts)
        self._store_dir, self._store = store, None
        self.description = self.describe()
        self._heldout_texts = heldout_texts
        self._lock = threading.RLock()
        self._fills: OrderedDict = OrderedDict()
        self._heldout_chunks: OrderedDict = OrderedDict()
        self._heldout: tuple[list[str], np.ndarray] | None = None
        self._rows_per_context: float | None = None
        self._stats: list[dict] | None = None  # one per point
        self._short_fills_warned: set[tuple[int, int]] = set()

    def describe(self, index: int | None = None) -> str:
        """What the rows are, for logs: of every hook point, or (`index`) of point `index` alone."""
        if self.point_names and index is None:
            what = f"hook points {', '.join(self.point_names)} (one forward)"
        else:
            layer, site = self.points[index or 0]
            what = f"layer {layer} {site}" + (f" -> {self.target_site} pairs" if self.target_site else "")
        through = f", written through to {self._store_dir}" if self._store_dir else ""
        return (f"activations of {self.model.name} {what}, computed in fills of {self.buffer_contexts} contexts of <= "
                f"{self.context_length} tokens{self.sharing}{through}; held out: every {harvest.HELD_OUT_EVERY}th text")

    @property
    def sharing(self) -> str:
        """How fills are cut and shared out among processes, for logs: " in S shards (each of P processes
        computes S/P)", or "" for whole fills in one process."""
        shards = f" in {self.shards} shards" if self.shards > 1 else ""
        if self.process_count > 1:
            shards += f" (each of {self.process_count} processes computes {self.shards // self.process_count})"
        return shards

    def _points_first(self, rows: np.ndarray) -> np.ndarray:
        """Rows as handed out: [n, d_in] for one point; [P, n, d_in] (from [n, P, d_in]) for several."""
        return np.ascontiguousarray(np.moveaxis(rows, 1, 0)) if self.point_names else rows

    def identity(self) -> dict:
        """What makes this stream's rows, as a written-through folder records it (`saejax.data.fill_store`)."""
        return {"model": self.model.name, "points": [point_name(point) for point in self.points],
                "target_site": self.target_site or "", "d_in": self.d_in, "context_length": self.context_length,
                "seed": self.seed, "buffer_contexts": self.buffer_contexts, "shuffle_texts": self.order.block_texts,
                "stream_shards": self.shards, "forward_batch": self.forward_batch, "dtype": self.dtype,
                "first_fill_texts_sha256": texts_digest(self.fill_texts(0))}

    def _written_through(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """compute(), or with a store folder the rows of its file `name` (computed and written on a miss)."""
        if not self._store_dir:
            return compute()
        with self._lock:
            if self._store is None:
                self._store = FillStore(self._store_dir, self.identity(), file_dtype(self.dtype))
            return self._store.rows(name, compute)

    @property
    def store(self) -> FillStore | None:
        """The folder the rows are written through to, once used (None: none, or nothing read yet)."""
        return self._store

    def at(self, index: int) -> "PointSource":
        """Hook point number `index` alone, a `Source` of [B, d_in] rows (sharing this source's fills)."""
        return PointSource(self, index)

    # -- rows of texts ------------------------------------------------------------------------

    @property
    def chunk_texts(self) -> int:
        """Texts per chunk, as harvesting groups them (length-sorted within a chunk)."""
        return self.forward_batch * harvest.CHUNK_BATCHES

    def rows_of(self, texts: list[str]) -> np.ndarray:
        """float32 [rows, d_in] (several points: [rows, P, d_in]): the texts' rows as a harvest of them
        writes them, chunk by chunk."""
        chunks = [harvest.chunk_rows(self.model, self.capture, texts[c:c + self.chunk_texts], self.context_length,
                                     self.forward_batch, width=None if self.point_names else self.d_in)
                  for c in range(0, len(texts), self.chunk_texts)]
        width = (len(self.points), self.d_in) if self.point_names else (self.d_in,)
        return np.concatenate(chunks) if chunks else np.zeros((0, *width), np.float32)

    # -- training fills -----------------------------------------------------------------------

    @property
    def rows_per_context(self) -> float:
        """Mean rows per context of the first ESTIMATE_TEXTS texts of the order (a seeded sample)."""
        with self._lock:
            if self._rows_per_context is None:
                counts = harvest.kept_tokens(self.model, self.order.texts(0, ESTIMATE_TEXTS), self.context_length)
                if counts.sum() == 0:
                    raise DataError(f"the first {ESTIMATE_TEXTS} texts give no tokens (only padding or special "
                                    "tokens); check model.text_glob")
                self._rows_per_context = float(counts.mean())
            return self._rows_per_context

    def shard_rows_per_batch(self, batch_size: int) -> int:
        """B / S: the rows of every batch one shard hands out; ConfigError unless S divides B."""
        if batch_size % self.shards:
            raise ConfigError(f"train.batch_size={batch_size} must be divisible by data.stream_shards={self.shards}")
        return batch_size // self.shards

    def batches_per_fill(self, batch_size: int) -> int:
        """Batches of `batch_size` every fill hands out (at least 1)."""
        shard_contexts = self.buffer_contexts // self.shards
        return max(1, int(FILL_USE * shard_contexts * self.rows_per_context) // self.shard_rows_per_batch(batch_size))

    def fill_texts(self, fill: int, shard: int | None = None) -> list[str]:
        """The F texts of fill number `fill` (or the F/S of its shard `shard`), in text order."""
        first, size = fill * self.buffer_contexts, self.buffer_contexts
        if shard is not None:
            size //= self.shards
            first += shard * size
        with self._lock:
            return self.order.texts(first, first + size)

    def _kept(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows as the stream keeps them (in memory and written through): themselves, or for
        data.stream_dtype='bfloat16' their bfloat16 bit patterns (uint16, `saejax.data.store.encode`)."""
        return encode(rows, self.dtype) if self.dtype == "bfloat16" else rows

    def _float(self, kept: np.ndarray) -> np.ndarray:
        """Kept rows (`_kept`) as float32."""
        return decode(kept, self.dtype) if self.dtype == "bfloat16" else kept

    def _shard_kept(self, fill: int, shard: int) -> np.ndarray:
        """Shard `shard` of fill `fill` as kept in memory (`_kept`), cached."""
        def make():
            rows = self._written_through(fill_file(fill, shard),
                                         lambda: self._kept(self.rows_of(self.fill_texts(fill, shard))))
            if rows.shape[0] == 0:
                what = f"shard {shard} of fill {fill}" if self.shards > 1 else f"fill {fill}"
                raise DataError(f"{what} ({self.buffer_contexts // self.shards} texts) gave no tokens; check "
                                "model.text_glob")
            return rows

        with self._lock:
            return _remember(self._fills, (fill, shard), make, _CACHED * self.shards)

    def shard_rows(self, fill: int, shard: int) -> np.ndarray:
        """float32 [R_js, d_in] (several points: [R_js, P, d_in]): every row of shard `shard` of fill
        `fill`, as a harvest of `fill_texts(fill, shard)` (in data.stream_dtype) writes them."""
        return self._float(self._shard_kept(fill, shard))

    def fill_rows(self, fill: int) -> np.ndarray:
        """float32 [R_j, d_in] (several points: [R_j, P, d_in]): every row of fill `fill`, its shards'
        rows one after another."""
        with self._lock:
            parts = [self.shard_rows(fill, shard) for shard in range(self.shards)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def handout_order(self, fill: int, n_rows: int, count: int, shard: int = 0) -> np.ndarray:
        """Which of a shard's `n_rows` rows it hands out, in order, int64 [count]: a permutation drawn from
        (seed, fill, shard), continued by permutations from (seed, fill, shard, r) when count > n_rows
        (one shard: (seed, fill) and (seed, fill, r))."""
        def draw(r: int) -> np.random.Generator:
            return (rng(self.seed, STREAM_FILL, fill, r) if self.shards == 1
                    else rng(self.seed, STREAM_FILL_SHARD, fill, shard, r))

        repeats = -(-count // n_rows)
        return np.concatenate([draw(r).permutation(n_rows) for r in range(repeats)])[:count]

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in] (several points: [P, batch_size, d_in]): batch number `step` (see the
        module docstring); of several processes, this process's rows alone when `process_count` > 1."""
        check_batch_args(step, batch_size)
        per_fill, size = self.batches_per_fill(batch_size), self.shard_rows_per_batch(batch_size)
        fill, k = divmod(step, per_fill)
        with self._lock:
            parts = [self._handed_out(fill, shard, per_fill * size, k * size, (k + 1) * size)
                     for shard in self.local_shards]
        return self._points_first(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _handed_out(self, fill: int, shard: int, count: int, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the `count` that shard `shard` of fill `fill` hands out, in order."""
        rows = self._shard_kept(fill, shard)
        if rows.shape[0] < count and (fill, shard) not in self._short_fills_warned:
            self._short_fills_warned.add((fill, shard))
            what = f"shard {shard} of fill {fill}" if self.shards > 1 else f"fill {fill}"
            logging.warning("%s gave %d rows, fewer than the %d it hands out: %d of them are handed out twice "
                            "(raise data.buffer_contexts for fills that vary less)", what, rows.shape[0], count,
                            count - rows.shape[0])
        return self._float(rows[self.handout_order(fill, rows.shape[0], count, shard)[lo:hi]])

    def sample(self, n: int) -> np.ndarray:
        """A deterministic float32 [n, d_in] (several points: [P, n, d_in]) sample (without replacement) of
        the rows of fills 0, 1, ... (as many as hold n rows), for initialisation."""
        check_sample_size(n)
        with self._lock:
            parts = [self.fill_rows(0)]
            while sum(p.shape[0] for p in parts) < n:
                parts.append(self.fill_rows(len(parts)))
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return self._points_first(rows[rng(self.seed, STREAM_SAMPLE).choice(rows.shape[0], size=n, replace=False)])

    @property
    def stats(self) -> dict | list[dict]:
        """Normalisation statistics of all rows of fill 0: {"rows", "mean" [d_in], "mean_sq_norm"}; with
        several points a list of them, one per point."""
        with self._lock:
            if self._stats is None:
                rows = self.fill_rows(0)
                each = [rows[:, i] for i in range(len(self.points))] if self.point_names else [rows]
                self._stats = [_stats_of(point_rows) for point_rows in each]
            return self._stats if self.point_names else self._stats[0]

    # -- held out -----------------------------------------------------------------------------

    def heldout_layout(self) -> tuple[list[str], np.ndarray]:
        """(texts, bounds int64 [C + 1]): the held-out texts the split reads (corpus order, enough for
        data.heldout_max_rows rows) and the first row of each of their chunks (bounds[-1]: all rows)."""
        with self._lock:
            if self._heldout is None:
                texts, bounds = [], [0]
                stream = iter(self._heldout_texts())
                while bounds[-1] < self.heldout_max_rows and (chunk := list(islice(stream, self.chunk_texts))):
                    texts += chunk
                    bounds.append(bounds[-1] + int(harvest.kept_tokens(self.model, chunk, self.context_length).sum()))
                self._heldout = (texts, np.asarray(bounds, np.int64))
            return self._heldout

    @property
    def heldout_rows(self) -> int:
        """Rows in the held-out split: those of the held-out texts, at most data.heldout_max_rows."""
        return int(min(self.heldout_layout()[1][-1], self.heldout_max_rows))

    def _heldout_chunk(self, chunk: int) -> np.ndarray:
        texts, bounds = self.heldout_layout()
        rows = self._written_through(heldout_file(chunk), lambda: self._kept(
            self.rows_of(texts[chunk * self.chunk_texts:(chunk + 1) * self.chunk_texts])))
        if rows.shape[0] != bounds[chunk + 1] - bounds[chunk]:
            raise DataError(f"held-out chunk {chunk} gave {rows.shape[0]} rows, its tokens counted "
                            f"{bounds[chunk + 1] - bounds[chunk]}")
        return rows

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """Rows [index·B, (index+1)·B) of the held-out split, float32 [<= B, d_in] (several points:
        [P, <= B, d_in]; empty past its end)."""
        check_batch_args(index, batch_size)
        with self._lock:
            _, bounds = self.heldout_layout()
            lo, hi = index * batch_size, min((index + 1) * batch_size, self.heldout_rows)
            if lo >= hi:
                return self._points_first(self.rows_of([]))
            first, last = (int(np.searchsorted(bounds, row, side="right")) - 1 for row in (lo, hi - 1))
            rows = np.concatenate([_remember(self._heldout_chunks, c, lambda c=c: self._heldout_chunk(c))
                                   for c in range(first, last + 1)])
            return self._points_first(self._float(rows[lo - bounds[first]:hi - bounds[first]]))


def _stats_of(rows: np.ndarray) -> dict:
    """`RunningStats` of rows [n, d] as a dict."""
    running = RunningStats(rows.shape[-1])
    running.add(rows)
    return running.as_dict()


class PointSource:
    """Hook point `index` of a `ModelSource` streaming several: the rows of that point alone ([B, d_in]
    batches, its held-out split and statistics), read from the shared fills, so each equals the stream
    of that point by itself."""

    name = "model"

    def __init__(self, source: ModelSource, index: int) -> None:
        self.source, self.index = source, index
        self.d_in, self.order, self.process_count = source.d_in, source.order, source.process_count
        self.description = source.describe(index)

    def _one(self, rows: np.ndarray) -> np.ndarray:
        """This point's [n, d_in] of the source's rows ([P, n, d_in] for several points)."""
        return rows[self.index] if self.source.point_names else rows

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch_size, d_in]: this point's rows of the source's batch `step`."""
        return self._one(self.source.batch(step, batch_size))

    def sample(self, n: int) -> np.ndarray:
        """float32 [n, d_in]: this point's rows of the source's sample."""
        return self._one(self.source.sample(n))

    @property
    def stats(self) -> dict:
        """This point's normalisation statistics (`ModelSource.stats`)."""
        stats = self.source.stats
        return stats[self.index] if self.source.point_names else stats

    @property
    def heldout_rows(self) -> int:
        """Rows in the held-out split (the same tokens at every point)."""
        return self.source.heldout_rows

    def heldout_batch(self, index: int, batch_size: int) -> np.ndarray:
        """float32 [<= batch_size, d_in]: this point's rows of the source's held-out batch `index`."""
        return self._one(self.source.heldout_batch(index, batch_size))


def model_source(data, model, seed: int, text_model=None, process: tuple[int, int] = (0, 1),
                 devices=None) -> ModelSource:
    """The ``model`` source of a run's ``c.data`` and ``c.model`` blocks: model.name's activations at
    (model.layer, model.site), or at every point of model.hookpoints when it lists several, on
    model.text_glob's training texts (`saejax.harvest.run_texts`).
    `text_model`: the model already loaded, or None to load it here. `process`: (index, count) of this
    process among the run's; `devices`: where the forward runs (`ModelSource`)."""
    if model is None or not model.get("name"):
        raise ConfigError("data.source='model' streams the activations of model.name: set --config.model.name "
                          "(minilm, gemma3-270m or a Hugging Face directory)")
    if text_model is None:
        from saejax.models.loading import load_text_model  # noqa: PLC0415

        text_model = load_text_model(model.name)
    return ModelSource(text_model, lambda: harvest.run_texts(model, held_out=False),
                       lambda: harvest.run_texts(model, held_out=True), seed=seed, layer=model.layer, site=model.site,
                       context_length=model.context_length, buffer_contexts=data.buffer_contexts,
                       shuffle_texts=data.shuffle_texts, forward_batch=data.forward_batch,
                       heldout_max_rows=data.heldout_max_rows, points=parse_points(model.get("hookpoints", "")),
                       target_site=model.get("target_site") or None, shards=data.get("stream_shards", 1),
                       process=process, store=data.get("path", ""), dtype=data.get("stream_dtype", "float32"),
                       devices=devices)
