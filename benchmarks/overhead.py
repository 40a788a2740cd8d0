r"""A command-line run's fixed cost: the wall time of a whole `experiments/train.py` process that is
not its train steps (imports, data set-up, compiles, evaluation, plots, export).

    python -m benchmarks.overhead [--rows=200000] [--d_in=384] [--d_sae=3072] [--batch=4096] \
        [--repeats=3] [--out=benchmarks/results/overhead]

Writes a random store of --rows rows (`saejax.data.store`), then times fresh processes of a TopK
run on it at 4 and at 16 steps, alternating: overhead = wall(4) − 4 · (wall(16) − wall(4)) / 12.
"Cold" runs start from an empty compilation cache (`SAEJAX_COMPILATION_CACHE` pointing at a new
folder each time), "warm" ones from the cache the previous run of the same length filled. Medians
of --repeats. Writes overhead.json and a table.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_ROWS = flags.DEFINE_integer("rows", 200_000, "Rows in the random store.")
_D_IN = flags.DEFINE_integer("d_in", 384, "Row width.")
_D_SAE = flags.DEFINE_integer("d_sae", 3072, "Dictionary size.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Processes per (length, cache) setting.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/overhead", "Folder for overhead.{json,md}.")

ROOT = Path(__file__).resolve().parents[1]


def run_seconds(store: Path, workdir: Path, steps: int, cache: Path) -> float:
    """Wall seconds of one `experiments/train.py` process: TopK k 32 on `store` for `steps` steps."""
    args = [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}",
            "--config.data.source=npy", f"--config.data.path={store}", "--config.sae.arch=topk",
            f"--config.sae.d_sae={_D_SAE.value}", f"--config.train.batch_size={_BATCH.value}",
            f"--config.train.steps={steps}", f"--config.train.log_every={steps}", "--config.log.progress=False"]
    env = {**os.environ, "SAEJAX_COMPILATION_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main(argv):
    del argv
    from benchmarks import write_results  # noqa: PLC0415
    from saejax.data import store  # noqa: PLC0415

    scratch = Path(tempfile.mkdtemp(prefix="saejax_overhead_"))
    rows = np.random.default_rng(0).standard_normal((_ROWS.value, _D_IN.value), dtype=np.float32)
    store.write_store(scratch / "store", rows)
    walls = {(kind, steps): [] for kind in ("cold", "warm") for steps in (4, 16)}
    for repeat in range(_REPEATS.value):
        for steps in (4, 16):
            cache = scratch / f"cache_{steps}_{repeat}"
            for kind in ("cold", "warm"):  # the cold run fills the cache the warm one reads
                walls[kind, steps].append(run_seconds(scratch / "store", scratch / f"run_{kind}_{steps}_{repeat}",
                                                      steps, cache))
    medians = {f"{kind}_{steps}": statistics.median(v) for (kind, steps), v in walls.items()}
    result, table = {"rows": _ROWS.value, "d_in": _D_IN.value, "d_sae": _D_SAE.value, "batch": _BATCH.value,
                     "walls": {f"{k}_{s}": v for (k, s), v in walls.items()}, "medians": medians}, \
        ["| cache | wall, 4 steps | wall, 16 steps | step s | fixed overhead s |", "|---|---|---|---|---|"]
    for kind in ("cold", "warm"):
        step = (medians[f"{kind}_16"] - medians[f"{kind}_4"]) / 12
        result[f"{kind}_overhead_s"] = medians[f"{kind}_4"] - 4 * step
        table.append(f"| {kind} | {medians[f'{kind}_4']:.2f} | {medians[f'{kind}_16']:.2f} | {step:.3f} | "
                     f"{result[f'{kind}_overhead_s']:.2f} |")
    write_results(_OUT.value, "overhead", result, table)


if __name__ == "__main__":
    app.run(main)
