"""Speed and memory benchmarks; each module writes results/NAME.{json,md} (see BUILD_NOTES.md).

Shared pieces: `median_seconds` / `time_steps` (timing), `relu_l1_setup` (the saejax step most
benchmarks compare against) and `write_results`.
"""

import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import optax

import saejax
from saejax import losses


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `repeats` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_steps(step, state, batch, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `step(state, batch) -> (state, out)`, threading the state through."""
    holder = [state]

    def one():
        new_state, out = step(holder[0], batch)
        jax.block_until_ready(out)
        holder[0] = new_state

    return median_seconds(one, repeats, warmup)


def relu_l1_setup(d_in: int, d_sae: int, x):
    """(jitted saejax ReLU + L1 (5.0) Adam (1e-4) train step, its initial state) for batches x [B, d_in];
    b_dec and the normalisation come from the first 1024 rows of x."""
    sae = saejax.make_sae("relu", d_in, d_sae)
    loss = losses.chain(losses.mse(), losses.l1(5.0))
    optimizer = saejax.make_optimizer(optax.adam(1e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), np.asarray(x[:1024]))
    return saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer)), state


def write_results(out_dir: str | Path, name: str, result: dict, table: list[str]) -> None:
    """Write `result` as out_dir/NAME.json and the markdown `table` lines as out_dir/NAME.md; print the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
