"""Tests of saejax.data: determinism, shapes, statistics and error messages."""

import math
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from saejax.config import base_config
from saejax.data import SOURCES, Source, make_source
from saejax.data.npy import NpySource
from saejax.data.patches import PatchSource
from saejax.data.synthetic import SyntheticSource
from saejax.errors import ConfigError, DataError


def data_config(**fields) -> ml_collections.ConfigDict:
    """The default `c.data` block with `fields` overridden."""
    data = base_config().data
    for key, value in fields.items():
        data[key] = value
    return data


def write_table(folder: Path, sizes: list[int], d: int = 4) -> int:
    """Files f0.npy.. whose column 0 holds each row's global index; returns N."""
    start = 0
    for i, n in enumerate(sizes):
        rows = np.arange(start, start + n, dtype=np.float32)[:, None]
        np.save(folder / f"f{i}.npy", np.repeat(rows, d, axis=1))
        start += n
    return start


@pytest.fixture(scope="module")
def patches() -> PatchSource:
    return make_source(data_config(source="patches"), seed=0)


@pytest.fixture
def npy_source(tmp_path: Path) -> NpySource:
    write_table(tmp_path, [7, 13, 10])
    return make_source(data_config(source="npy", path=str(tmp_path / "*.npy")), seed=3)


def small_sources(tmp_path: Path) -> list[Source]:
    write_table(tmp_path, [5, 9])
    return [
        make_source(data_config(), seed=1),
        make_source(data_config(correlation="hierarchical"), seed=1),
        make_source(data_config(source="npy", path=str(tmp_path / "*.npy")), seed=1),
        make_source(data_config(source="patches", patch_size=6, n_patches=2000), seed=1),
    ]


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- every source -------------------------------------------------------------------


def test_batches_are_pure_shaped_float32(tmp_path):
    for source in small_sources(tmp_path):
        assert isinstance(source, Source) and source.name in SOURCES
        first = source.batch(5, 32)
        source.batch(0, 32)
        source.sample(10)
        assert first.shape == (32, source.d_in) and first.dtype == np.float32
        np.testing.assert_array_equal(source.batch(5, 32), first)
        assert not np.array_equal(source.batch(6, 32), first)
        sample = source.sample(16)
        assert sample.shape == (16, source.d_in) and sample.dtype == np.float32
        np.testing.assert_array_equal(source.sample(16), sample)


def test_same_seed_same_batches_other_seed_differs():
    data = data_config()
    a, b, c = (make_source(data, seed) for seed in (4, 4, 5))
    np.testing.assert_array_equal(a.batch(3, 64), b.batch(3, 64))
    np.testing.assert_array_equal(a.dictionary, b.dictionary)
    assert not np.array_equal(a.batch(3, 64), c.batch(3, 64))


def test_unknown_source_is_config_error():
    with pytest.raises(ConfigError) as excinfo:
        make_source(data_config(source="parquet"), seed=0)
    message = one_line_error(excinfo)
    assert "data.source" in message and "'parquet'" in message
    assert all(name in message for name in SOURCES)


def test_bad_batch_arguments():
    source = make_source(data_config(), seed=0)
    with pytest.raises(DataError, match="batch_size"):
        source.batch(0, 0)
    with pytest.raises(DataError, match="step"):
        source.batch(-1, 8)


# --- synthetic ----------------------------------------------------------------------


def test_synthetic_dictionary_unit_norm_and_batch_is_codes_times_dictionary():
    source = SyntheticSource(seed=0, d=32, n_features=64)
    assert source.dictionary.shape == (64, 32) and source.dictionary.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(source.dictionary, axis=1), 1.0, atol=1e-6)
    codes = source.codes(2, 100)
    np.testing.assert_allclose(source.batch(2, 100), codes @ source.dictionary, atol=1e-6)
    assert codes.min() >= 0 and codes.max() <= 1


@pytest.mark.parametrize("correlation", ["none", "hierarchical"])
def test_synthetic_active_count_and_decaying_frequencies(correlation):
    data = data_config(correlation=correlation)
    source = make_source(data, seed=0)
    np.testing.assert_allclose(source.probs.sum(), data.avg_active)
    np.testing.assert_allclose(source.probs[0] / source.probs[-1], data.freq_ratio)
    assert np.all(np.diff(source.probs) < 0)
    active = source.codes(0, 20_000) > 0
    assert abs(active.sum(axis=1).mean() - data.avg_active) < 0.1
    blocks = active.mean(axis=0).reshape(8, -1).mean(axis=1)
    expected = source.probs.reshape(8, -1).mean(axis=1)
    np.testing.assert_allclose(blocks, expected, rtol=0.15)
    assert np.all(np.diff(blocks) < 0)


def test_hierarchical_children_fire_only_with_parent():
    source = SyntheticSource(seed=0, correlation="hierarchical", children_per_parent=3)
    n_parents = math.ceil(512 / 4)
    assert np.all(source.parent[:n_parents] == -1)
    assert np.all(source.parent[n_parents:] < n_parents)
    assert np.bincount(source.parent[n_parents:]).max() <= 3
    active = source.codes(1, 20_000) > 0
    child = np.flatnonzero(source.parent >= 0)
    assert not np.any(active[:, child] & ~active[:, source.parent[child]])
    assert active[:, child].sum() > 1000  # children do fire


def test_synthetic_config_errors():
    with pytest.raises(ConfigError, match="data.avg_active"):
        SyntheticSource(seed=0, n_features=10, avg_active=9.0, freq_ratio=100.0)
    with pytest.raises(ConfigError, match="data.correlation"):
        SyntheticSource(seed=0, correlation="tree")
    with pytest.raises(ConfigError, match="data.freq_ratio"):
        SyntheticSource(seed=0, freq_ratio=0.5)
    with pytest.raises(ConfigError, match="seed"):
        SyntheticSource(seed=-1)


# --- patches ------------------------------------------------------------------------


def test_patches_shape_zero_mean_rows(patches):
    data = data_config()
    assert patches.patch_size == data.patch_size
    assert patches.d_in == data.patch_size**2
    assert patches.pool.shape == (data.n_patches, patches.d_in)
    assert np.abs(patches.batch(0, 4096).mean(axis=1)).max() < 1e-5


def test_patches_whitened_spectrum_is_regularised_identity(patches):
    w = patches.whitening
    np.testing.assert_allclose(w, w.T, atol=1e-5)
    pool = patches.pool.astype(np.float64)
    cov = pool.T @ pool / pool.shape[0]
    got = np.linalg.eigvalsh(cov)[::-1]
    lam = patches.eigenvalues
    eps = data_config().whiten_eps * lam.mean()
    np.testing.assert_allclose(got[:-1], (lam / (lam + eps))[:-1], rtol=1e-3)
    assert got[-1] < 1e-6  # the DC direction, removed
    assert got.max() <= 1.0 and got[: patches.d_in // 4].min() > 0.8
    assert lam[0] / lam[-2] > 100 and got[0] / got[-2] < 5  # flattened, not amplified


def test_patches_without_whitening():
    source = PatchSource(seed=0, patch_size=5, n_patches=500, whiten="none")
    np.testing.assert_array_equal(source.whitening, np.eye(25, dtype=np.float32))
    with pytest.raises(ConfigError, match="data.whiten"):
        PatchSource(seed=0, whiten="pca")


# --- npy ----------------------------------------------------------------------------


def test_npy_every_row_once_per_epoch(npy_source):
    n_rows, batch_size = 30, 8
    assert npy_source.n_rows == n_rows and npy_source.d_in == 4
    stream = np.concatenate([npy_source.batch(s, batch_size)[:, 0] for s in range(12)])
    epochs = stream[: 3 * n_rows].reshape(3, n_rows).astype(int)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n_rows))
    assert not np.array_equal(epochs[0], epochs[1])
    batch = npy_source.batch(3, batch_size)  # straddles epochs 0 and 1
    np.testing.assert_array_equal(batch[:, 0], stream[24:32])
    assert np.all(batch == batch[:, :1])  # whole rows, not mixed


def test_npy_float16_read_as_float32(tmp_path):
    np.save(tmp_path / "half.npy", np.ones((6, 3), dtype=np.float16))
    source = NpySource(str(tmp_path / "*.npy"), seed=0)
    assert source.batch(0, 4).dtype == np.float32


def npy_error(tmp_path: Path) -> str:
    with pytest.raises(DataError) as excinfo:
        NpySource(str(tmp_path / "*.npy"), seed=0)
    return one_line_error(excinfo)


def test_npy_glob_matches_nothing(tmp_path):
    message = npy_error(tmp_path)
    assert "data.path" in message and str(tmp_path) in message and "no files" in message


def test_npy_not_a_npy_file(tmp_path):
    (tmp_path / "a.npy").write_text("hello")
    message = npy_error(tmp_path)
    assert str(tmp_path / "a.npy") in message and "not a .npy file" in message


def test_npy_not_2d(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), dtype=np.float32))
    message = npy_error(tmp_path)
    assert str(tmp_path / "a.npy") in message and "2-D" in message and "(2, 3, 4)" in message


def test_npy_widths_disagree(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), dtype=np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 5), dtype=np.float32))
    message = npy_error(tmp_path)
    for part in (str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "width 3", "width 5"):
        assert part in message


def test_npy_non_float_dtype(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), dtype=np.int32))
    message = npy_error(tmp_path)
    assert str(tmp_path / "a.npy") in message and "int32" in message


def test_npy_non_finite_row(tmp_path):
    bad = np.zeros((4, 2), dtype=np.float32)
    bad[2, 1] = np.nan
    np.save(tmp_path / "a.npy", bad)
    source = NpySource(str(tmp_path / "*.npy"), seed=0)
    with pytest.raises(DataError) as excinfo:
        source.batch(0, 4)
    message = one_line_error(excinfo)
    assert str(tmp_path / "a.npy") in message and "row 2" in message


def test_npy_empty_path_is_config_error():
    with pytest.raises(ConfigError, match="data.path"):
        make_source(data_config(source="npy", path=""), seed=0)


# --- digits and tabular ---------------------------------------------------------------------


def test_digits_source_holds_out_a_seeded_test_split():
    source = make_source(data_config(source="digits"), seed=0)
    assert source.d_in == 64 and source.image_shape == (8, 8) and source.task == "classification"
    assert source.table.shape == (1438, 64) and source.test_table.shape == (359, 64)  # 20 % held out
    both = np.concatenate([source.table, source.test_table])
    assert both.min() == 0.0 and both.max() == 1.0
    assert len({row.tobytes() for row in source.table} & {row.tobytes() for row in source.test_table}) < 5  # dupes only
    assert set(np.unique(source.labels)) == set(range(10)) == set(np.unique(source.test_labels))
    epoch = np.concatenate([source.rows(s, 719) for s in range(2)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(1438))
    np.testing.assert_array_equal(source.batch(5, 100), make_source(data_config(source="digits"), seed=0).batch(5, 100))
    other = make_source(data_config(source="digits"), seed=1)
    assert not np.array_equal(other.test_labels, source.test_labels)
    with pytest.raises(ConfigError, match="data.test_fraction"):
        make_source(data_config(source="digits", test_fraction=1.0), seed=0)


def test_tabular_shuttle_source_trains_on_normal_rows_and_tests_on_held_out_plus_anomalies():
    normal = make_source(data_config(source="tabular"), seed=0)
    n_normal, n_anomalies = 49097 - 3511, 3511
    n_test_normal = round(0.2 * n_normal)
    assert normal.d_in == 9 and normal.task == "anomaly"
    assert normal.table.shape == (n_normal - n_test_normal, 9) and not normal.labels.any()
    assert normal.test_table.shape == (n_test_normal + n_anomalies, 9) and normal.test_labels.sum() == n_anomalies
    np.testing.assert_allclose(normal.table.mean(0), 0, atol=1e-4)  # standardised on the normal training rows
    every = make_source(data_config(source="tabular", tabular_rows="all"), seed=0)
    assert every.table.shape[0] + every.test_table.shape[0] == 49097 and every.labels.any()
    with pytest.raises(ConfigError, match="data.tabular_rows"):
        make_source(data_config(source="tabular", tabular_rows="odd"), seed=0)


@pytest.mark.parametrize("source, module, extra", [("digits", "sklearn", "digits"), ("tabular", "river", "tabular")])
def test_optional_dependency_missing_is_one_clear_error(monkeypatch, source, module, extra):
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ConfigError, match=rf"pip install 'saejax\[{extra}\]'"):
        make_source(data_config(source=source), seed=0)
