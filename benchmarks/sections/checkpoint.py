"""Does checkpointing stall training? The wall time of `steps` ReLU+L1 Adam steps with the run loop's
`save_checkpoint` (health check + asynchronous Orbax save of the whole train state) every `every`
steps, against the same steps without checkpoints. The two alternate `rounds` times in one process;
the last save is waited for inside the timed region. Reports the median wall time of each and the
overhead (with / without - 1)."""

import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import relu_l1_setup
from saejax import checkpoint
from saejax.guards import save_checkpoint

SIZES = {"full": {"d_in": 512, "d_sae": 16384, "batch": 512, "steps": 100, "every": 50, "rounds": 3},
         "quick": {"d_in": 16, "d_sae": 256, "batch": 64, "steps": 4, "every": 2, "rounds": 1}}


def timed_run(step, state, x, steps: int, every: int, folder: Path | None):
    """(wall seconds, final state) of `steps` steps, saving into `folder` every `every` steps (None:
    no checkpoints), the last save waited for."""
    ckpt = checkpoint.Checkpointer(folder, max_to_keep=2) if folder else None
    start = time.perf_counter()
    for i in range(1, steps + 1):
        state, metrics = step(state, x)
        if ckpt and i % every == 0:
            save_checkpoint(ckpt, i, state, float(metrics["loss"]), {}, None)
    jax.block_until_ready(metrics)
    if ckpt:
        ckpt.close()  # waits for the last save
    return time.perf_counter() - start, state


def measure(s: dict) -> dict:
    d, f, b, steps, every = s["d_in"], s["d_sae"], s["batch"], s["steps"], s["every"]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    step, state = relu_l1_setup(d, f, x)
    state, _ = step(state, x)  # compile
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
    times = {"none": [], f"every {every}": []}
    with tempfile.TemporaryDirectory(prefix="saejax_ckpt_") as tmp:
        for r in range(s["rounds"]):
            for variant, runs in times.items():
                folder = None if variant == "none" else Path(tmp) / f"{r}-{variant.replace(' ', '')}"
                seconds, state = timed_run(step, state, x, steps, every, folder)
                runs.append(seconds)
    base = statistics.median(times["none"])
    rows = [{"variant": k, "run_s_median": statistics.median(v), "per_step_s": statistics.median(v) / steps,
             "overhead": statistics.median(v) / base - 1, "runs_s": v} for k, v in times.items()]
    return {"shape": {"d_in": d, "d_sae": f, "batch": b, "steps": steps, "every": every},
            "rounds": s["rounds"], "state_MB": state_bytes / 1e6, "rows": rows}


def table(result: dict) -> list[str]:
    shape = result["shape"]
    lines = [f"Checkpoints: ReLU+L1 Adam, d_in={shape['d_in']}, d_sae={shape['d_sae']}, batch {shape['batch']}, "
             f"{shape['steps']} steps per run, whole train state {result['state_MB']:.0f} MB, median of "
             f"{result['rounds']} alternating rounds", "",
             "| checkpoints | run (s) | per step (s) | overhead |", "|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {r['run_s_median']:.2f} | {r['per_step_s']:.4f} | {r['overhead']:+.1%} |"
                    for r in result["rows"]]
