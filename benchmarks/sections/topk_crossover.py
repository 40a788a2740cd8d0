"""Where the sparse TopK step overtakes the dense one: the measurement behind `sae.SPARSE_MIN_RATIO`.

For each d_sae, the dense and the sparse (unscreened) TopK train steps (MSE + AuxK, Adam;
`benchmarks.train_setup`) are timed in alternation on the same random batch
(`benchmarks.paired_speedup`), so drift on a noisy machine hits both alike. Reports d_sae / k, both
medians and the median per-round speed-up of sparse over dense. Both paths give the same loss and
gradients (tests/test_sparse_topk.py); only their speed differs.
"""

import jax.numpy as jnp
import numpy as np

from benchmarks import paired_speedup, train_setup

SIZES = {"full": {"d_in": 384, "k": 32, "batch": 4096, "d_sae": (1024, 2048, 3072, 4096, 8192), "repeats": 7},
         "quick": {"d_in": 32, "k": 4, "batch": 256, "d_sae": (64, 256), "repeats": 2}}


def measure(s: dict) -> dict:
    d, k, b = s["d_in"], s["k"], s["batch"]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    rows = []
    for d_sae in s["d_sae"]:
        dense = train_setup("topk", d, d_sae, x, k=k, sparse=False)
        sparse = train_setup("topk", d, d_sae, x, k=k, sparse=True, screen=False)
        timed = paired_speedup(dense, sparse, x, s["repeats"])
        rows.append({"d_sae": d_sae, "ratio": d_sae / k, "dense_s": timed["slow_s"], "sparse_s": timed["fast_s"],
                     "speedup": timed["speedup"]})
    return {"d_in": d, "k": k, "batch": b, "repeats": s["repeats"], "rows": rows}


def table(result: dict) -> list[str]:
    lines = [f"TopK sparse against dense (d_in {result['d_in']}, k {result['k']}, batch {result['batch']}; "
             f"{result['repeats']} alternating rounds)", "",
             "| d_sae | d_sae / k | dense s | sparse s | sparse speed-up |", "|---|---|---|---|---|"]
    return lines + [f"| {r['d_sae']} | {r['ratio']:.0f} | {r['dense_s']:.3f} | {r['sparse_s']:.3f} | "
                    f"{r['speedup']:.2f}x |" for r in result["rows"]]
