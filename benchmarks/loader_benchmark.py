r"""Shard-store loader throughput from the page cache, next to the train step's consumption.

    python -m benchmarks.loader_benchmark [--rows=131072 --d_in=768 --d_sae=16384 --batch=4096]

Writes a float32 and a float16 store of `rows` × `d_in` into a temporary folder, reads every shard
once so the data sits in the page cache, then times `NpySource.batch` over one epoch (default
chunk and shuffle-window sizes: global chunk permutation, shuffle windows, decode to float32,
NaN/Inf check). Next to it, the dense ReLU train step at (d_in, d_sae, batch), whose rows per
second are what the loader must beat (by ≥ 3×). Loader rows/s = rows over total time (window
loads included); the step is a median. Results in
benchmarks/results/loader_benchmark.{json,md}.
"""

import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import relu_l1_setup, time_steps, write_results
from saejax.config import base_config
from saejax.data import store
from saejax.data.npy import NpySource

_ROWS = flags.DEFINE_integer("rows", 131072, "Rows in each store.")
_D_IN = flags.DEFINE_integer("d_in", 768, "Row width.")
_D_SAE = flags.DEFINE_integer("d_sae", 16384, "Dictionary size of the step it is compared with.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Batch size.")
_STEP_REPEATS = flags.DEFINE_integer("step_repeats", 3, "Timed train steps (median).")
_OUT = flags.DEFINE_string("out", str(Path(__file__).parent / "results"), "Output directory.")


def write(folder: Path, rows: int, d_in: int, dtype: str) -> None:
    block = 16384
    blocks = (np.random.default_rng(i).standard_normal((min(block, rows - i), d_in), dtype=np.float32)
              for i in range(0, rows, block))
    store.write_store(folder, blocks, dtype=dtype, rows_per_shard=32768)


def warm_page_cache(folder: Path) -> None:
    for path in sorted(folder.glob("*.npy")):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def time_loader(folder: Path, batch: int) -> dict:
    data = base_config().data
    source = NpySource(str(folder), 0, chunk_rows=data.chunk_rows, shuffle_rows=data.shuffle_rows)
    steps = source.n_rows // batch
    times = []
    for step in range(steps):
        start = time.perf_counter()
        source.batch(step, batch)
        times.append(time.perf_counter() - start)
    mean = statistics.mean(times)  # throughput counts the shuffle-window loads, not just the median batch
    stored = batch * source.d_in * store.file_dtype(source.dtype).itemsize
    return {"dtype": source.dtype, "batches": steps, "batch_s_median": statistics.median(times), "batch_s_mean": mean,
            "batch_s_max": max(times), "rows_per_s": batch / mean, "stored_GB_per_s": stored / mean / 1e9,
            "float32_out_GB_per_s": batch * source.d_in * 4 / mean / 1e9,
            "chunk_rows": data.chunk_rows, "shuffle_rows": data.shuffle_rows}


def time_step(d_in: int, d_sae: int, batch: int, repeats: int) -> float:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, d_in), dtype=np.float32))
    step, state = relu_l1_setup(d_in, d_sae, x)
    return time_steps(step, state, x, repeats, warmup=1)  # the warm-up call compiles


def main(argv):
    del argv
    rows, d_in, d_sae, batch = _ROWS.value, _D_IN.value, _D_SAE.value, _BATCH.value
    loaders = []
    with tempfile.TemporaryDirectory(prefix="saejax_loader_") as tmp:
        for dtype in ("float32", "float16"):
            folder = Path(tmp) / dtype
            write(folder, rows, d_in, dtype)
            warm_page_cache(folder)
            loaders.append(time_loader(folder, batch))
    step_s = time_step(d_in, d_sae, batch, _STEP_REPEATS.value)
    step_rows = batch / step_s
    for loader in loaders:
        loader["times_faster_than_step"] = loader["rows_per_s"] / step_rows
    result = {
        "shape": {"rows": rows, "d_in": d_in, "batch": batch},
        "loaders": loaders,
        "train_step": {"arch": "relu", "d_sae": d_sae, "step_s_median": step_s, "rows_per_s": step_rows},
        "jax": jax.__version__, "numpy": np.__version__, "machine": platform.processor() or platform.machine(),
    }
    table = [f"Loader (page cache, one epoch of {rows} rows, d_in={d_in}, batch {batch}) vs ReLU train step "
             f"(d_sae={d_sae}, f32): step {step_s:.2f} s = {step_rows:,.0f} rows/s", "",
             "| store dtype | batch ms (median / mean / max) | rows/s (mean) | stored GB/s | float32 GB/s out | × step |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['dtype']} | {r['batch_s_median'] * 1e3:.1f} / {r['batch_s_mean'] * 1e3:.1f} / "
              f"{r['batch_s_max'] * 1e3:.1f} | {r['rows_per_s']:,.0f} | "
              f"{r['stored_GB_per_s']:.2f} | {r['float32_out_GB_per_s']:.2f} | {r['times_faster_than_step']:.0f}× |"
              for r in loaders]
    write_results(_OUT.value, "loader_benchmark", result, table)


if __name__ == "__main__":
    app.run(main)
