r"""Does checkpointing stall training? Step time with a checkpoint every 50 steps vs none.

    python -m benchmarks.checkpoint_benchmark [--d_in=512 --d_sae=16384 --batch=512 --steps=100 --rounds=3]

Runs `steps` ReLU+L1 Adam steps without checkpoints and `steps` with the run loop's
`save_checkpoint` (health check + asynchronous Orbax save of the whole train state) every `every`
steps, alternating the two `rounds` times in one process; reports the median wall time per run and
the overhead. The final save is waited for inside the timed region. Results in
benchmarks/results/checkpoint_benchmark.{json,md}.
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

from benchmarks import relu_l1_setup, write_results
from saejax import checkpoint
from saejax.loop import save_checkpoint

_D_IN = flags.DEFINE_integer("d_in", 512, "Input width.")
_D_SAE = flags.DEFINE_integer("d_sae", 16384, "Dictionary size.")
_BATCH = flags.DEFINE_integer("batch", 512, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps per timed run.")
_EVERY = flags.DEFINE_integer("every", 50, "Checkpoint interval.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (median).")
_OUT = flags.DEFINE_string("out", str(Path(__file__).parent / "results"), "Output directory.")


def main(argv):
    del argv
    d, f, b, steps, every = _D_IN.value, _D_SAE.value, _BATCH.value, _STEPS.value, _EVERY.value
    x = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    step, state = relu_l1_setup(d, f, x)
    state, metrics = step(state, x)  # compile
    state_bytes = sum(a.nbytes for a in jax.tree.leaves(state))
    times = {"none": [], f"every {every}": []}
    with tempfile.TemporaryDirectory(prefix="saejax_ckpt_") as tmp:
        for r in range(_ROUNDS.value):
            for variant in times:
                ckpt = checkpoint.Checkpointer(Path(tmp) / f"{r}-{variant.replace(' ', '')}", max_to_keep=2)
                start = time.perf_counter()
                for i in range(1, steps + 1):
                    state, metrics = step(state, x)
                    if variant != "none" and i % every == 0:
                        save_checkpoint(ckpt, i, state, metrics["loss"], {}, None)
                jax.block_until_ready(metrics)
                ckpt.close()  # waits for the last save
                times[variant].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["none"]
    rows = [{"variant": k, "run_s_median": m, "per_step_s": m / steps, "overhead": m / base - 1,
             "runs_s": times[k]} for k, m in medians.items()]
    result = {"shape": {"d_in": d, "d_sae": f, "batch": b, "steps": steps, "every": every},
              "state_MB": state_bytes / 1e6, "rows": rows, "jax": jax.__version__,
              "machine": platform.processor() or platform.machine()}
    table = [f"ReLU+L1 Adam, d_in={d}, d_sae={f}, batch {b}, {steps} steps per run, whole train state "
             f"{state_bytes / 1e6:.0f} MB, median of {_ROUNDS.value} alternating rounds", "",
             "| checkpoints | run (s) | per step (s) | overhead |", "|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['run_s_median']:.2f} | {r['per_step_s']:.4f} | {r['overhead']:+.1%} |"
              for r in rows]
    write_results(_OUT.value, "checkpoint_benchmark", result, table)


if __name__ == "__main__":
    app.run(main)
