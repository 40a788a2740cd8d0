"""The activation shard store: writer and manifest, validation, stream order, exact resume,
multi-process slices, bad rows and flat memory while streaming."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from saejax.data import store
from saejax.data.npy import NpySource
from saejax.data.order import StreamOrder
from saejax.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def indexed_rows(n: int, d: int = 6, start: int = 0) -> np.ndarray:
    """Rows whose every column holds the row's index (exact in float16/bfloat16 below 256 only;
    the order tests use float32)."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], d, axis=1)


def make_store(folder: Path, n: int = 1000, d: int = 6, rows_per_shard: int = 128, **kw) -> store.Manifest:
    return store.write_store(folder, indexed_rows(n, d), rows_per_shard=rows_per_shard, **kw)


def source(folder, seed=0, chunk_rows=16, shuffle_rows=64, **kw) -> NpySource:
    return NpySource(str(folder), seed, chunk_rows=chunk_rows, shuffle_rows=shuffle_rows, **kw)


def ids(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0].astype(np.int64)


# --- writer and manifest -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [("float32", 0), ("float16", 1e-3), ("bfloat16", 8e-3)])
def test_round_trip_each_dtype(tmp_path, dtype, tol):
    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    manifest = store.write_store(tmp_path, x, dtype=dtype, rows_per_shard=128)
    assert [rows for _, rows in manifest.shards] == [128, 128, 44]
    src = NpySource(str(tmp_path), 0)
    back = src.read(np.arange(300))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=tol, atol=tol)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["manifest.json", "shard_000000.npy", "shard_000001.npy", "shard_000002.npy"]
    raw = np.load(tmp_path / "shard_000000.npy", allow_pickle=False)
    assert raw.dtype == store.file_dtype(dtype)  # bfloat16 is stored as uint16 bit patterns


def test_bfloat16_encoding_rounds_to_nearest_even_and_accepts_ml_dtypes():
    import ml_dtypes

    x = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    ours = store.encode(x, "bfloat16")
    reference = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(store.encode(x.astype(ml_dtypes.bfloat16), "bfloat16"), reference)
    np.testing.assert_array_equal(store.decode(ours, "bfloat16"), x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_manifest_fields_and_statistics(tmp_path):
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(500, 4)).astype(np.float32)
    store.write_store(tmp_path, (x[i:i + 70] for i in range(0, 500, 70)), rows_per_shard=100)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["format"] == store.FORMAT and raw["d_in"] == 4 and raw["dtype"] == "float32"
    assert raw["rows_per_shard"] == 100 and raw["total_rows"] == 500 and len(raw["shards"]) == 5
    assert raw["stats"]["rows"] == 500
    np.testing.assert_allclose(raw["stats"]["mean"], x.mean(0), rtol=1e-6)
    assert raw["stats"]["mean_sq_norm"] == pytest.approx(np.mean(np.sum(x.astype(np.float64) ** 2, 1)), rel=1e-9)
    assert NpySource(str(tmp_path), 0).stats["mean_sq_norm"] == raw["stats"]["mean_sq_norm"]


def test_writer_refuses_bad_rows_existing_store_and_wrong_width(tmp_path):
    x = indexed_rows(10, 3)
    x[4, 1] = np.nan
    with pytest.raises(DataError, match=r"append #0 .*row 4 holds NaN/Inf"):
        store.write_store(tmp_path / "a", x)
    make_store(tmp_path / "b", n=10, d=3)
    with pytest.raises(DataError, match="already holds a store"):
        make_store(tmp_path / "b", n=10, d=3)
    make_store(tmp_path / "b", n=20, d=3, overwrite=True)
    assert NpySource(str(tmp_path / "b"), 0).n_rows == 20
    with pytest.raises(DataError, match=r"append #1 .*expected rows \[n, 3\], got shape \(2, 4\)"):
        store.write_store(tmp_path / "c", iter([indexed_rows(5, 3), indexed_rows(2, 4)]))
    with pytest.raises(DataError, match="nothing to write"):
        store.write_store(tmp_path / "d", iter([]))


def test_writer_refuses_values_that_overflow_the_storage_dtype(tmp_path):
    x = np.ones((8, 4), np.float32)
    x[3, 1] = 70000.0
    with pytest.raises(DataError, match=r"row 3 overflows float16 \(largest \|value\| 7e\+04\)"):
        store.write_store(tmp_path, x, dtype="float16")


def test_writer_accepts_fortran_order_and_large_arrays_in_blocks(tmp_path):
    x = np.asfortranarray(np.random.default_rng(0).normal(size=(40000, 3)).astype(np.float32))
    store.write_store(tmp_path, x, rows_per_shard=30000)
    np.testing.assert_array_equal(NpySource(str(tmp_path), 0).read(np.arange(40000)), x)


def test_plain_float64_files_are_read_as_float32(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(4, 3))  # NumPy's default dtype
    src = NpySource(str(tmp_path / "*.npy"), 0)
    assert src.dtype == "float64"
    np.testing.assert_array_equal(src.read(np.arange(4)), np.arange(12.0, dtype=np.float32).reshape(4, 3))


def test_unfinished_store_has_no_manifest(tmp_path):
    writer = store.ShardWriter(tmp_path, d_in=3, rows_per_shard=4)
    writer.append(indexed_rows(9, 3))  # two full shards written, one row pending
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_000000.npy", "shard_000001.npy"]
    with pytest.raises(DataError, match="without manifest.json"):
        NpySource(str(tmp_path), 0)
    writer.close()
    assert NpySource(str(tmp_path), 0).n_rows == 9


# --- the forms of data.path and validation ----------------------------------------------------


def test_path_forms_folder_manifest_glob_and_subset(tmp_path):
    make_store(tmp_path, n=300, rows_per_shard=100)
    for path in (tmp_path, tmp_path / "manifest.json", tmp_path / "*.npy", tmp_path / "*"):
        src = NpySource(str(path), 0)
        assert src.n_rows == 300 and src.stats is not None, path
    subset = NpySource(str(tmp_path / "shard_00000[02].npy"), 0)
    assert subset.n_rows == 200 and "2 of the 3 shards" in subset.description
    assert sorted(np.unique(ids(subset.read(np.arange(200))))) == list(range(100)) + list(range(200, 300))


def test_plain_files_without_manifest_are_indexed(tmp_path):
    np.save(tmp_path / "a.npy", indexed_rows(30, 4))
    np.save(tmp_path / "b.npy", indexed_rows(20, 4, start=30))
    src = source(tmp_path / "*.npy", chunk_rows=8, shuffle_rows=16)
    assert src.n_rows == 50 and src.stats is None and src.dtype == "float32"
    assert sorted(ids(np.concatenate([src.batch(s, 10) for s in range(5)]))) == list(range(50))


def _corrupt(tmp_path, how):
    make_store(tmp_path, n=300, rows_per_shard=100)
    shard = tmp_path / "shard_000001.npy"
    if how == "missing":
        shard.unlink()
    elif how == "rows":
        np.save(shard, indexed_rows(99, 6))
    elif how == "width":
        np.save(shard, indexed_rows(100, 7))
    elif how == "dtype":
        np.save(shard, indexed_rows(100, 6).astype(np.float16))
    elif how == "truncated":
        with open(shard, "r+b") as fh:
            fh.truncate(1000)
    elif how == "not npy":
        shard.write_text("not an array")
    return str(shard)


@pytest.mark.parametrize("how, message", [
    ("missing", "file is missing"),
    ("rows", "holds 99 rows, the manifest says 100"),
    ("width", "width 7 disagrees with the store's d_in=6"),
    ("dtype", "dtype float16 disagrees with the store's dtype 'float32'"),
    ("truncated", "truncated"),
    ("not npy", "not a .npy file"),
])
def test_damaged_store_is_one_error_naming_the_file(tmp_path, how, message):
    shard = _corrupt(tmp_path, how)
    with pytest.raises(DataError) as excinfo:
        NpySource(str(tmp_path), 0)
    text = str(excinfo.value)
    assert "\n" not in text and text.startswith(shard) and message in text


def test_bad_manifests(tmp_path):
    make_store(tmp_path, n=50, rows_per_shard=20)
    path = tmp_path / "manifest.json"
    good = json.loads(path.read_text())
    for change, message in [
        ({"format": "other"}, "not a saejax shard manifest"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"total_rows": 49}, "total_rows=49 disagrees"),
        ({"shards": [{"file": "../x.npy", "rows": 1}], "total_rows": 1}, "must be a path inside the store"),
        ({"stats": {**good["stats"], "mean_sq_norm": True}}, "stats.mean_sq_norm must be a number > 0"),
        ({"stats": {**good["stats"], "rows": 999}}, r"stats.rows must be an integer in \[1, total_rows=50\]"),
        ({"stats": {"mean": good["stats"]["mean"], "mean_sq_norm": 1.0}}, "stats.rows must be"),
        ({"stats": {**good["stats"], "mean": ["a"] * 6}}, "stats.mean must be a list of numbers"),
        ({"d_in": 5}, "stats.mean has 6 numbers, d_in is 5"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(DataError, match=message):
            NpySource(str(tmp_path), 0)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        NpySource(str(tmp_path), 0)


def test_glob_file_not_in_manifest(tmp_path):
    make_store(tmp_path, n=50, rows_per_shard=20)
    np.save(tmp_path / "extra.npy", indexed_rows(5, 6))
    with pytest.raises(DataError, match=r"extra\.npy: not listed in"):
        NpySource(str(tmp_path / "*.npy"), 0)


def test_empty_glob_and_options(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        NpySource(str(tmp_path / "*.npy"), 0)
    make_store(tmp_path, n=50)
    with pytest.raises(ConfigError, match="data.on_bad_rows"):
        NpySource(str(tmp_path), 0, on_bad_rows="ignore")
    with pytest.raises(ConfigError, match="data.shuffle_rows=8 must be >= data.chunk_rows=16"):
        source(tmp_path, chunk_rows=16, shuffle_rows=8)
    with pytest.raises(ConfigError, match="train.batch_size=10 must be divisible by the number of processes"):
        source(tmp_path, process_index=0, process_count=3).batch(0, 10)


# --- order, epochs and exact resume -------------------------------------------------------------


def test_every_row_once_per_epoch_and_epochs_differ(tmp_path):
    make_store(tmp_path, n=1000, rows_per_shard=128)
    src = source(tmp_path)
    batch_size = 40  # 25 batches per epoch
    epochs = [np.concatenate([ids(src.batch(s, batch_size)) for s in range(e * 25, (e + 1) * 25)]) for e in range(2)]
    for stream in epochs:
        np.testing.assert_array_equal(np.sort(stream), np.arange(1000))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(ids(src.batch(3, batch_size)), src.rows(3, batch_size))


def test_batches_mix_across_shards(tmp_path):
    make_store(tmp_path, n=4096, rows_per_shard=512)  # 8 shards
    src = source(tmp_path, chunk_rows=32, shuffle_rows=512)
    shards_per_batch = [len(np.unique(ids(src.batch(s, 256)) // 512)) for s in range(8)]
    assert min(shards_per_batch) >= 4, shards_per_batch
    assert not np.array_equal(np.sort(ids(src.batch(0, 256))), np.arange(256))


def test_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    """Resume equivalence: a fresh reader started at step k (as after a restart) returns exactly the
    batches k..n of an uninterrupted reader, whatever either read before."""
    make_store(tmp_path, n=1000, rows_per_shard=100)
    uninterrupted = source(tmp_path, seed=7)
    stream = [uninterrupted.batch(s, 48) for s in range(60)]  # about 3 epochs
    for k in (0, 13, 21, 59):
        resumed = source(tmp_path, seed=7)
        for s in range(k, 60):
            np.testing.assert_array_equal(resumed.batch(s, 48), stream[s])
    other_seed = source(tmp_path, seed=8)
    assert not np.array_equal(other_seed.batch(0, 48), stream[0])
    shuffled_access = source(tmp_path, seed=7)
    for s in np.random.default_rng(0).permutation(60)[:15]:
        np.testing.assert_array_equal(shuffled_access.batch(int(s), 48), stream[s])


def test_stream_order_reference_matches_reader(tmp_path):
    make_store(tmp_path, n=777, rows_per_shard=100)
    src = source(tmp_path, seed=3, chunk_rows=10, shuffle_rows=50)
    order = StreamOrder([100] * 7 + [77], seed=3, chunk_rows=10, shuffle_rows=50)
    positions = np.arange(0, 777 * 2)
    np.testing.assert_array_equal(order.rows_at(positions), ids(np.concatenate([src.batch(s, 37) for s in range(42)])))


# --- multi-host slices ------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_partition_each_global_batch(tmp_path, processes):
    make_store(tmp_path, n=1000, rows_per_shard=128)
    batch_size = 64
    single = source(tmp_path, seed=5)
    readers = [source(tmp_path, seed=5, process_index=p, process_count=processes) for p in range(processes)]
    for step in range(40):  # 2.5 epochs
        global_ids = ids(single.batch(step, batch_size))
        slices = [ids(r.batch(step, batch_size)) for r in readers]
        assert all(s.size == batch_size // processes for s in slices)
        np.testing.assert_array_equal(np.concatenate(slices), global_ids)  # union, in order, each once
        assert len(np.unique(np.concatenate(slices))) == batch_size


def test_each_process_reads_only_its_own_rows(tmp_path, monkeypatch):
    make_store(tmp_path, n=1000, rows_per_shard=128)
    read = []
    real = store.read_rows

    def spy(shard, start, stop, take=None):
        block = real(shard, start, stop, take)
        read.extend(ids(block).tolist())
        return block

    monkeypatch.setattr(store, "read_rows", spy)
    reader = source(tmp_path, seed=5, process_index=1, process_count=4)
    mine = np.concatenate([ids(reader.batch(s, 64)) for s in range(15)])
    assert set(read) >= set(mine.tolist())
    assert len(read) <= 1000 // 4 + 64  # about a quarter of the epoch, not all of it


# --- bad rows -----------------------------------------------------------------------------------------


def _store_with_nan(folder, bad_row=37, shard_file="shard_000002.npy"):
    make_store(folder, n=400, rows_per_shard=100)
    path = folder / shard_file
    data = np.load(path)
    data[bad_row, 2] = np.inf
    np.save(path, data)


def test_bad_row_error_names_file_and_row_at_the_step_that_uses_it(tmp_path):
    _store_with_nan(tmp_path)
    src = source(tmp_path)
    positions = np.flatnonzero(np.concatenate([src.rows(s, 40) for s in range(10)]) == 237)
    bad_step = int(positions[0]) // 40
    for s in range(bad_step):
        src.batch(s, 40)  # the window holding the bad row may already be loaded: no error yet
    with pytest.raises(DataError) as excinfo:
        src.batch(bad_step, 40)
    message = str(excinfo.value)
    assert "shard_000002.npy: row 37" in message and "data.on_bad_rows=skip" in message


def test_bad_rows_skip_counts_and_keeps_shapes_and_order(tmp_path):
    _store_with_nan(tmp_path)
    src = source(tmp_path, on_bad_rows="skip")
    batches = [src.batch(s, 40) for s in range(10)]  # one epoch
    assert all(b.shape == (40, 6) and np.isfinite(b).all() for b in batches)
    assert src.skipped_rows == 1
    seen = np.concatenate([ids(b) for b in batches])
    assert 237 not in seen and len(np.unique(seen)) == 399  # the bad row's place holds a duplicate
    clean = tmp_path / "clean"
    make_store(clean, n=400, rows_per_shard=100)
    reference = np.concatenate([ids(source(clean).batch(s, 40)) for s in range(10)])
    assert np.sum(seen != reference) == 1  # every other row is where it would have been
    again = source(tmp_path, on_bad_rows="skip")
    np.testing.assert_array_equal(again.batch(4, 40), batches[4])


def test_skip_gives_the_same_global_batches_for_any_number_of_processes(tmp_path):
    _store_with_nan(tmp_path)
    single = source(tmp_path, on_bad_rows="skip")
    pair = [source(tmp_path, on_bad_rows="skip", process_index=p, process_count=2) for p in range(2)]
    for step in range(10):
        np.testing.assert_array_equal(np.concatenate([r.batch(step, 40) for r in pair]), single.batch(step, 40))


def test_skip_with_a_whole_bad_chunk_is_one_error(tmp_path):
    make_store(tmp_path, n=64, rows_per_shard=64)
    path = tmp_path / "shard_000000.npy"
    data = np.load(path)
    data[16:32] = np.nan
    np.save(path, data)
    with pytest.raises(DataError, match=r"shard_000000.npy: rows 16..31 \(one chunk\) all hold NaN/inf"):
        source(tmp_path, on_bad_rows="skip").batch(0, 64)


def test_sample_under_skip_drops_bad_rows(tmp_path):
    _store_with_nan(tmp_path)
    assert source(tmp_path, on_bad_rows="skip").sample(400).shape == (399, 6)
    with pytest.raises(DataError, match="shard_000002.npy: row 37"):
        source(tmp_path).sample(400)


# --- memory while streaming ---------------------------------------------------------------------------

_STREAM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from saejax.data import store
    from saejax.data.npy import NpySource

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    folder, d, rows = sys.argv[1], 256, 262144  # 256 MiB of float32
    blocks = (np.random.default_rng(i).normal(size=(16384, d)).astype(np.float32) for i in range(rows // 16384))
    store.write_store(folder, blocks, rows_per_shard=32768)
    src = NpySource(folder, 0, chunk_rows=1024, shuffle_rows=16384)
    for step in range(4):
        src.batch(step, 2048)
    base = rss_mib()
    peak = base
    for step in range(4, rows // 2048):
        src.batch(step, 2048)
        peak = max(peak, rss_mib())
    print(base, peak)
""")


@pytest.mark.slow
def test_memory_stays_flat_while_streaming_a_store_larger_than_the_budget(tmp_path):
    """A 256 MiB store streams through with resident memory growing by less than a 48 MiB budget
    (the shuffle windows are 16 MiB each; nothing stays memory-mapped)."""
    script = tmp_path / "stream.py"
    script.write_text(_STREAM_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    base, peak = map(float, result.stdout.split())
    assert peak - base < 48, (base, peak)


def test_read_handles_repeated_rows_as_a_sample_with_replacement_draws(tmp_path):
    make_store(tmp_path, n=10, rows_per_shard=10)
    src = source(tmp_path, chunk_rows=4, shuffle_rows=8)
    np.testing.assert_array_equal(ids(src.read(np.array([0, 0, 2, 5, 5, 9]))), [0, 0, 2, 5, 5, 9])
    assert set(ids(src.sample(25))) <= set(range(10)) and src.sample(25).shape == (25, 6)


# --- held-out split ----------------------------------------------------------------------------


def test_heldout_chunks_are_never_in_a_training_batch_nor_the_init_sample(tmp_path):
    make_store(tmp_path, n=1000)  # 8 shards -> 64 chunks of <= 16 rows
    src = source(tmp_path, heldout_fraction=0.25, heldout_max_rows=10_000)
    heldout = np.concatenate([ids(src.heldout_batch(i, 100)) for i in range(-(-src.heldout_rows // 100))])
    assert src.heldout_rows == heldout.size == len(set(heldout.tolist())) and 0.2 < heldout.size / 1000 < 0.3
    assert src.n_rows == 1000 - src.heldout_rows
    seen = np.concatenate([ids(src.batch(step, 50)) for step in range(3 * src.n_rows // 50)])
    assert not np.isin(seen, heldout).any()
    np.testing.assert_array_equal(np.sort(seen[:src.n_rows]), np.setdiff1d(np.arange(1000), heldout))  # one epoch
    assert not np.isin(ids(src.sample(500)), heldout).any()


def test_heldout_split_is_one_per_store_whatever_the_seed_and_capped_in_rows(tmp_path):
    make_store(tmp_path, n=1000)
    first, other_seed = source(tmp_path, 0, heldout_fraction=0.25, heldout_max_rows=10_000), \
        source(tmp_path, 7, heldout_fraction=0.25, heldout_max_rows=10_000)
    np.testing.assert_array_equal(first.heldout_batch(0, 10_000), other_seed.heldout_batch(0, 10_000))
    capped = source(tmp_path, heldout_fraction=0.25, heldout_max_rows=40)
    assert 40 <= capped.heldout_rows < 40 + 16  # whole chunks, stopping at the one that reaches the cap
    assert source(tmp_path, heldout_fraction=0.01).heldout_rows == 0  # fewer than one chunk's share


def test_no_heldout_keeps_the_stream_unchanged(tmp_path):
    make_store(tmp_path, n=1000)
    plain, zero = source(tmp_path), source(tmp_path, heldout_fraction=0.0, heldout_max_rows=100)
    for step in (0, 7, 40):
        np.testing.assert_array_equal(plain.batch(step, 50), zero.batch(step, 50))
    np.testing.assert_array_equal(plain.sample(64), zero.sample(64))
