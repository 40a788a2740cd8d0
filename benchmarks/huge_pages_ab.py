r"""Steps with and without the heap's huge-page advice (`saejax.runtime.tune_malloc`), in fresh processes.

    python -m benchmarks.huge_pages_ab --pairs=5            # relu 512/8192/4096 against numpy, paired
    python -m benchmarks.huge_pages_ab --pairs=3 --speedup  # + sparse TopK vs relu at d_sae 32768

The advice is process-wide and taken when `tune_malloc` runs, so each contender is its own process:
"on" as the training entry point runs, "off" with SAEJAX_NO_HUGE_PAGES=1 (the allocator settings
stay). Pairs alternate their order. Each process reports the relu step's fraction of numpy's f32
matmul rate measured in alternating rounds (`paired_step_and_limit`; numpy advises huge pages for
its own large arrays in both), optionally the sparse TopK step's speed-up over the relu step at
d_sae 32768 (`paired_speedup`), and the huge pages the process held (AnonHugePages). Prints one JSON
line per process and a summary; --out writes huge_pages_ab.{json,md}.
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_PAIRS = flags.DEFINE_integer("pairs", 5, "Processes per contender, alternating.")
_REPEATS = flags.DEFINE_integer("repeats", 6, "Timed rounds per process.")
_SPEEDUP = flags.DEFINE_bool("speedup", False, "Also time sparse TopK against relu at d_sae 32768.")
_OUT = flags.DEFINE_string("out", None, "Directory for huge_pages_ab.{json,md} (none: print only).")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure in this process and print one JSON line.")

D_IN, D_SAE, BATCH, WIDE = 512, 8192, 4096, 32768


def anon_huge_mib() -> float:
    """MiB of this process's anonymous memory in transparent huge pages (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")) / 1024
    except (OSError, StopIteration):
        return 0.0


def child() -> dict:
    from saejax import runtime

    runtime.tune_malloc()
    import jax.numpy as jnp
    import numpy as np

    import benchmarks

    x = jnp.asarray(np.random.default_rng(1).standard_normal((BATCH, D_IN), dtype=np.float32))
    step, state = benchmarks.relu_l1_setup(D_IN, D_SAE, x)
    row = benchmarks.paired_step_and_limit(step.lower(state, x).compile(), state, x, D_SAE, _REPEATS.value)
    if _SPEEDUP.value:
        relu = benchmarks.relu_l1_setup(D_IN, WIDE, x)
        topk = benchmarks.train_setup("topk", D_IN, WIDE, x, k=32, sparse=True)
        pair = benchmarks.paired_speedup(relu, topk, x, _REPEATS.value)
        row.update(relu_32768_s=pair["slow_s"], topk_32768_s=pair["fast_s"], topk_speedup=pair["speedup"])
    return {**row, "huge_page_bytes": runtime.huge_page_bytes, "anon_huge_mib": anon_huge_mib()}


def summary_table(rows: list[dict]) -> list[str]:
    keys = ["fraction_of_limit", "step_s", "limit_flops_per_s"] + (["topk_speedup"] if _SPEEDUP.value else [])
    lines = ["| huge pages | processes | " + " | ".join(f"median {k}" for k in keys) + " | AnonHugePages MiB |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for mode in ("on", "off"):
        mine = [r for r in rows if r["mode"] == mode]
        cells = [f"{statistics.median(r[k] for r in mine):.4g}" for k in keys]
        lines.append(f"| {mode} | {len(mine)} | " + " | ".join(cells) +
                     f" | {statistics.median(r['anon_huge_mib'] for r in mine):.0f} |")
    return lines


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(child()), flush=True)
        return
    from saejax import runtime

    rows = []
    for pair in range(_PAIRS.value):
        for mode in (("on", "off") if pair % 2 == 0 else ("off", "on")):
            env = {k: v for k, v in os.environ.items() if k not in (runtime.NO_HUGE_PAGES_ENV, runtime.DISABLE_ENV)}
            if mode == "off":
                env[runtime.NO_HUGE_PAGES_ENV] = "1"
            cmd = [sys.executable, "-m", "benchmarks.huge_pages_ab", "--child", f"--repeats={_REPEATS.value}",
                   f"--speedup={_SPEEDUP.value}"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"child ({mode}) failed:\n{done.stderr[-3000:]}")
            row = {"mode": mode, "pair": pair, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = summary_table(rows)
    if _OUT.value:
        import benchmarks

        benchmarks.write_results(_OUT.value, "huge_pages_ab", {"rows": rows}, table)
    else:
        print("\n".join(table))


if __name__ == "__main__":
    app.run(main)
