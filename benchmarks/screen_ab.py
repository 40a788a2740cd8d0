r"""The bf16 pre-screen of the sparse TopK encoder (`saejax.screening`): the train step with and without
it, both compiled in one process and timed in alternating rounds, at several d_sae.

    python -m benchmarks.screen_ab [--d_sae=16384,32768,65536] [--rounds=10] [--out=benchmarks/results/screen_ab]

Steps as the suite's (`benchmarks.train_setup`: MSE + AuxK, Adam, k 32, batch 4096, d_in 512, random
rows); `screen=True` is forced, so widths where `auto` would not screen are timed too. Writes
OUT/screen_ab.{json,md}: per width the median step of each and the median per-round ratio.
"""

import json

from absl import app, flags

from saejax import runtime

_D_SAE = flags.DEFINE_list("d_sae", ["16384", "32768", "65536"], "Dictionary sizes.")
_D_IN = flags.DEFINE_integer("d_in", 512, "Input width.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per step.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Alternating rounds (one step of each per round).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/screen_ab", "Output folder.")
K = 32


def compare(d_in: int, d_sae: int, batch: int, rounds: int) -> dict:
    """`benchmarks.paired_speedup` of the screened step over the unscreened one at this width."""
    import jax.numpy as jnp  # noqa: PLC0415 (after tune_malloc)
    import numpy as np  # noqa: PLC0415

    from benchmarks import paired_speedup, train_setup  # noqa: PLC0415

    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, d_in), dtype=np.float32))
    unscreened, screened = (train_setup("topk", d_in, d_sae, x, k=K, sparse=True, screen=screen)
                            for screen in (False, True))
    timed = paired_speedup(unscreened, screened, x, rounds, warmup=2)
    return {"d_in": d_in, "d_sae": d_sae, "batch": batch, "k": K, "rounds": rounds,
            "unscreened_s": timed["slow_s"], "screened_s": timed["fast_s"], "speedup": timed["speedup"]}


def main(argv):
    del argv
    runtime.tune_malloc()
    from benchmarks import write_results  # noqa: PLC0415

    rows = []
    for d_sae in (int(v) for v in _D_SAE.value):
        rows.append(compare(_D_IN.value, d_sae, _BATCH.value, _ROUNDS.value))
        print(json.dumps(rows[-1]), flush=True)
    table = ["Sparse TopK step, unscreened against screened (alternating rounds, medians)", "",
             "| d_in | d_sae | batch | unscreened (s) | screened (s) | speed-up |", "|---|---|---|---|---|---|"]
    table += [f"| {r['d_in']} | {r['d_sae']} | {r['batch']} | {r['unscreened_s']:.3f} | {r['screened_s']:.3f} | "
              f"{r['speedup']:.2f}× |" for r in rows]
    write_results(_OUT.value, "screen_ab", {"rows": rows}, table)


if __name__ == "__main__":
    app.run(main)
