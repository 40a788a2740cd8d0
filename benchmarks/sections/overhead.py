"""A command-line run's fixed cost: the wall time of a whole `experiments/train.py` process that is not
its train steps (imports, data set-up, compiles, evaluation, plots, export).

Writes a random store of `rows` rows (`saejax.data.store`), then times fresh processes of a TopK k 32
run on it at 4 and at 16 steps, alternating: overhead = wall(4) − 4 · (wall(16) − wall(4)) / 12.
"Cold" runs start from an empty compilation cache (`SAEJAX_COMPILATION_CACHE` pointing at a new
folder each time), "warm" ones from the cache the cold run of the same length just filled; Python
writes and reads its bytecode cache (__pycache__) in both, as it does by default. Medians of
`repeats` processes per (length, cache) setting.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saejax.data import store

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"full": {"rows": 200_000, "d_in": 384, "d_sae": 3072, "batch": 4096, "repeats": 3},
         "quick": {"rows": 20_000, "d_in": 16, "d_sae": 128, "batch": 256, "repeats": 1}}
LENGTHS = (4, 16)


def train_command(s: dict, data: Path, workdir: Path, steps: int) -> list[str]:
    """The `experiments/train.py` command line of a TopK run on the store `data` for `steps` steps."""
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}",
            "--config.data.source=npy", f"--config.data.path={data}", "--config.sae.arch=topk",
            f"--config.sae.d_sae={s['d_sae']}", f"--config.train.batch_size={s['batch']}",
            f"--config.train.steps={steps}", f"--config.train.log_every={steps}", "--config.log.progress=False"]


def run_seconds(command: list[str], cache: Path) -> float:
    """Wall seconds of one process of `command` with its compilation cache in `cache`, Python's
    bytecode cache on as on users' machines (an environment with PYTHONDONTWRITEBYTECODE would
    recompile the package's sources in every process)."""
    env = {**os.environ, "SAEJAX_COMPILATION_CACHE": str(cache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def fixed_overhead(wall_short: float, wall_long: float) -> tuple[float, float]:
    """(seconds per step, fixed seconds) from the walls of the LENGTHS runs, by a straight line."""
    short, long = LENGTHS
    step = (wall_long - wall_short) / (long - short)
    return step, wall_short - short * step


def measure(s: dict) -> dict:
    walls = {(kind, steps): [] for kind in ("cold", "warm") for steps in LENGTHS}
    with tempfile.TemporaryDirectory(prefix="saejax_overhead_") as tmp:
        scratch = Path(tmp)
        rows = np.random.default_rng(0).standard_normal((s["rows"], s["d_in"]), dtype=np.float32)
        store.write_store(scratch / "store", rows)
        for repeat in range(s["repeats"]):
            for steps in LENGTHS:
                cache = scratch / f"cache_{steps}_{repeat}"
                for kind in ("cold", "warm"):  # the cold run fills the cache the warm one reads
                    command = train_command(s, scratch / "store", scratch / f"run_{kind}_{steps}_{repeat}", steps)
                    walls[kind, steps].append(run_seconds(command, cache))
    medians = {f"{kind}_{steps}": statistics.median(v) for (kind, steps), v in walls.items()}
    result = {**s, "walls": {f"{k}_{n}": v for (k, n), v in walls.items()}, "medians": medians}
    for kind in ("cold", "warm"):
        result[f"{kind}_step_s"], result[f"{kind}_overhead_s"] = fixed_overhead(
            *(medians[f"{kind}_{steps}"] for steps in LENGTHS))
    return result


def table(result: dict) -> list[str]:
    short, long = LENGTHS
    lines = [f"Fixed overhead of an experiments/train.py run (TopK, d_in {result['d_in']}, d_sae {result['d_sae']}, "
             f"batch {result['batch']}, {result['rows']}-row store; medians of {result['repeats']})", "",
             f"| cache | wall, {short} steps | wall, {long} steps | step s | fixed overhead s |",
             "|---|---|---|---|---|"]
    m = result["medians"]
    return lines + [f"| {kind} | {m[f'{kind}_{short}']:.2f} | {m[f'{kind}_{long}']:.2f} | "
                    f"{result[f'{kind}_step_s']:.3f} | {result[f'{kind}_overhead_s']:.2f} |"
                    for kind in ("cold", "warm")]
