r"""The bf16 pre-screen of the sparse TopK encoder (`saejax.screening`): the train step with and without
it, both compiled in one process and timed in alternating rounds, at several d_sae.

    python -m benchmarks.screen_ab [--d_sae=16384,32768,65536] [--rounds=10] [--out=benchmarks/results/screen_ab]

Steps as the suite's (`benchmarks.train_setup`: MSE + AuxK, Adam, k 32, batch 4096, d_in 512, random
rows); `screen=True` is forced, so widths where `auto` would not screen are timed too. Writes
OUT/screen_ab.{json,md}: per width the median step of each, the median per-round ratio and how many
rounds the screened step won.
"""

import json
import time
from pathlib import Path

from absl import app, flags

from saejax import runtime

_D_SAE = flags.DEFINE_list("d_sae", ["16384", "32768", "65536"], "Dictionary sizes.")
_D_IN = flags.DEFINE_integer("d_in", 512, "Input width.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Alternating rounds (one step of each per round).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/screen_ab", "Output folder.")
K = 32


def compare(d_in: int, d_sae: int, batch: int, rounds: int) -> dict:
    """Median seconds of the unscreened and the screened step, alternating, and their per-round ratios."""
    import jax  # noqa: PLC0415 (after tune_malloc)
    import numpy as np  # noqa: PLC0415

    from benchmarks import train_setup  # noqa: PLC0415

    x = jax.numpy.asarray(np.random.default_rng(1).standard_normal((batch, d_in), dtype=np.float32))
    runs = {}
    for name, screen in (("unscreened", False), ("screened", True)):
        step, state = train_setup("topk", d_in, d_sae, x, k=K, sparse=True, screen=screen)
        runs[name] = [step.lower(state, x).compile(), state]
        for _ in range(2):  # warm-up
            runs[name][1], metrics = runs[name][0](runs[name][1], x)
            jax.block_until_ready(metrics)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run[1], metrics = run[0](run[1], x)
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - start)
    ratios = [u / s for u, s in zip(times["unscreened"], times["screened"])]
    return {"d_in": d_in, "d_sae": d_sae, "batch": batch, "k": K,
            "unscreened_s": float(np.median(times["unscreened"])), "screened_s": float(np.median(times["screened"])),
            "speedup": float(np.median(ratios)), "screened_won": sum(r > 1 for r in ratios), "rounds": rounds}


def main(argv):
    del argv
    runtime.tune_malloc()
    rows = []
    for d_sae in (int(v) for v in _D_SAE.value):
        rows.append(compare(_D_IN.value, d_sae, _BATCH.value, _ROUNDS.value))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen_ab.json").write_text(json.dumps(rows, indent=1))
    lines = ["Sparse TopK step, unscreened against screened (alternating rounds, medians)", "",
             "| d_in | d_sae | batch | unscreened (s) | screened (s) | speed-up | screened faster in |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['d_in']} | {r['d_sae']} | {r['batch']} | {r['unscreened_s']:.3f} | {r['screened_s']:.3f} | "
              f"{r['speedup']:.2f}× | {r['screened_won']}/{r['rounds']} |" for r in rows]
    (out / "screen_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
