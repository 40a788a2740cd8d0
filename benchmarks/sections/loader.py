"""Shard-store loader throughput from the page cache, next to the train step's consumption.

Writes a float32 and a float16 store of `rows` × `d_in` into a temporary folder, reads every shard
once so the data sits in the page cache, then times `NpySource.batch` over one epoch (the default
chunk and shuffle-window sizes: global chunk permutation, shuffle windows, decode to float32,
NaN/Inf check). Next to it, the dense ReLU train step at (d_in, d_sae, batch), whose rows per second
are what the loader must beat (by ≥ 3×). Loader rows/s = rows over the total time (shuffle-window
loads included); the step is a median of `step_repeats`.
"""

import statistics
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from benchmarks import relu_l1_setup, time_steps
from saejax.config import base_config
from saejax.data import store
from saejax.data.npy import NpySource

SIZES = {"full": {"rows": 131072, "d_in": 768, "d_sae": 16384, "batch": 4096, "step_repeats": 3},
         "quick": {"rows": 8192, "d_in": 32, "d_sae": 256, "batch": 1024, "step_repeats": 1}}


def write(folder: Path, rows: int, d_in: int, dtype: str) -> None:
    """A store of `rows` standard-normal rows in `dtype`, written in blocks."""
    block = 16384
    blocks = (np.random.default_rng(i).standard_normal((min(block, rows - i), d_in), dtype=np.float32)
              for i in range(0, rows, block))
    store.write_store(folder, blocks, dtype=dtype, rows_per_shard=32768)


def warm_page_cache(folder: Path) -> None:
    """Read every shard once, so that the timed epoch reads from the page cache."""
    for path in sorted(folder.glob("*.npy")):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def time_loader(folder: Path, batch: int) -> dict:
    """One epoch of `NpySource.batch` at the config's default chunk and shuffle sizes."""
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
    """Median seconds of the dense ReLU+L1 step on a random batch."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, d_in), dtype=np.float32))
    step, state = relu_l1_setup(d_in, d_sae, x)
    return time_steps(step, state, x, repeats, warmup=1)  # the warm-up call compiles


def measure(s: dict) -> dict:
    rows, d_in, d_sae, batch = s["rows"], s["d_in"], s["d_sae"], s["batch"]
    loaders = []
    with tempfile.TemporaryDirectory(prefix="saejax_loader_") as tmp:
        for dtype in ("float32", "float16"):
            folder = Path(tmp) / dtype
            write(folder, rows, d_in, dtype)
            warm_page_cache(folder)
            loaders.append(time_loader(folder, batch))
    step_s = time_step(d_in, d_sae, batch, s["step_repeats"])
    step_rows = batch / step_s
    for loader in loaders:
        loader["times_faster_than_step"] = loader["rows_per_s"] / step_rows
    return {"shape": {"rows": rows, "d_in": d_in, "batch": batch}, "loaders": loaders,
            "train_step": {"arch": "relu", "d_sae": d_sae, "step_s_median": step_s, "rows_per_s": step_rows}}


def table(result: dict) -> list[str]:
    shape, step = result["shape"], result["train_step"]
    lines = [f"Loader (page cache, one epoch of {shape['rows']} rows, d_in={shape['d_in']}, batch {shape['batch']}) "
             f"vs ReLU train step (d_sae={step['d_sae']}, f32): step {step['step_s_median']:.2f} s = "
             f"{step['rows_per_s']:,.0f} rows/s", "",
             "| store dtype | batch ms (median / mean / max) | rows/s (mean) | stored GB/s | float32 GB/s out "
             "| × step |", "|---|---|---|---|---|---|"]
    return lines + [f"| {r['dtype']} | {r['batch_s_median'] * 1e3:.1f} / {r['batch_s_mean'] * 1e3:.1f} / "
                    f"{r['batch_s_max'] * 1e3:.1f} | {r['rows_per_s']:,.0f} | {r['stored_GB_per_s']:.2f} | "
                    f"{r['float32_out_GB_per_s']:.2f} | {r['times_faster_than_step']:.0f}× |"
                    for r in result["loaders"]]
