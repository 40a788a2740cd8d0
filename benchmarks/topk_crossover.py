r"""Where the sparse TopK step overtakes the dense one: the measurement behind `sae.SPARSE_MIN_RATIO`.

    python -m benchmarks.topk_crossover [--d_in=384] [--k=32] [--batch=4096] \
        [--d_sae=1024,2048,3072,4096,8192] [--repeats=7] [--out=benchmarks/results/latest]

For each d_sae, the dense and the sparse TopK train steps (MSE + AuxK, Adam; `benchmarks.train_setup`)
are timed in alternation on the same random batch (`benchmarks.paired_speedup`), so drift on this
noisy machine hits both alike. Writes topk_crossover.json and a table: d_sae / k, both medians and
the per-round speed-up of sparse over dense. Both paths give the same loss and gradients
(tests/test_sparse_topk.py); only their speed differs.
"""

import numpy as np
from absl import app, flags

_D_IN = flags.DEFINE_integer("d_in", 384, "Input width.")
_K = flags.DEFINE_integer("k", 32, "Active latents per row.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per step.")
_D_SAE = flags.DEFINE_list("d_sae", ["1024", "2048", "3072", "4096", "8192"], "Dictionary sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Alternating rounds per size.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/latest", "Folder for topk_crossover.{json,md}.")


def main(argv):
    del argv
    import jax.numpy as jnp  # noqa: PLC0415

    from benchmarks import paired_speedup, train_setup, write_results  # noqa: PLC0415

    d, k, b = _D_IN.value, _K.value, _BATCH.value
    x = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    rows, table = [], ["| d_sae | d_sae / k | dense s | sparse s | sparse speed-up |", "|---|---|---|---|---|"]
    for d_sae in (int(v) for v in _D_SAE.value):
        dense = train_setup("topk", d, d_sae, x, sparse=False)
        sparse = train_setup("topk", d, d_sae, x, sparse=True, screen=False)
        result = paired_speedup(dense, sparse, x, _REPEATS.value)
        rows.append({"d_sae": d_sae, "ratio": d_sae / k, "dense_s": result["slow_s"], "sparse_s": result["fast_s"],
                     "speedup": result["speedup"]})
        table.append(f"| {d_sae} | {d_sae / k:.0f} | {result['slow_s']:.3f} | {result['fast_s']:.3f} | "
                     f"{result['speedup']:.2f}x |")
    write_results(_OUT.value, "topk_crossover", {"d_in": d, "k": k, "batch": b, "rows": rows}, table)


if __name__ == "__main__":
    app.run(main)
