"""The benchmark suite runs end to end (tiny sizes) and writes its JSON, table and plot; the malloc
tuning of the training entry point applies once and can be turned off. Speed itself is measured by
`python -m benchmarks.run`, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saejax import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_suite_writes_every_section(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--repeats=1", "--peak_tflops=1",
                             f"--out={tmp_path}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert {"limits", "steps", "speedups", "scaling", "precision", "peers"} <= suite.keys()
    assert all(r["speedup"] > 0 and r["fast_s"] > 0 for r in suite["speedups"])
    assert suite["plan"] == "quick" and {r["dtype"] for r in suite["steps"]} == {"float32", "bfloat16"}
    assert {r["variant"] for r in suite["steps"]} == {"relu", "topk sparse", "topk dense", "topk sparse, 5% dead",
                                                      "topk sparse, 20% dead", "topk sparse, unscreened",
                                                      "batchtopk", "jumprelu"}
    assert {(r["slow"], r["fast"]) for r in suite["speedups"]} >= {("relu", "topk sparse"),
                                                                   ("topk sparse, unscreened", "topk sparse")}
    assert all(r["step_s"] > 0 and r["total_mib"] > 0 for r in suite["steps"])
    # on CPU in f32 each step's fraction of numpy's rate comes from rounds alternating the two; bf16
    # steps are compared with jax's bf16 matmul rate and, given a nominal peak, get an MFU
    f32, bf16 = ([r for r in suite["steps"] if r["dtype"] == t] for t in ("float32", "bfloat16"))
    assert all(r["limit"] == "numpy f32, paired" and r["fraction_of_limit"] > 0 for r in f32)
    assert all("limit" not in r and r["fraction_of_limit"] > 0 and r["mfu"] > 0 for r in bf16)
    assert {r["dtype"] for r in suite["precision"]["training"]} == {"float32", "bfloat16"}
    assert all(0 <= r["fvu"] < 2 for r in suite["precision"]["training"])
    if "skipped" not in suite["peers"]:
        assert {"saejax", "SAELens training step", "PyTorch plain, eager"} <= {r["contender"] for r in suite["peers"]["rows"]}
        topk_contenders = {r["contender"] for r in suite["peers"]["rows"] if r["arch"] == "topk"}
        assert "sparsify (SparseCoder + Trainer step)" in topk_contenders
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert "| relu |" in (tmp_path / "suite.md").read_text()


@pytest.mark.slow
def test_step_ab_times_one_variant_with_latents_kept_dead():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.step_ab", "--d_in=16", "--d_sae=256", "--batch=32",
                             "--dead_fraction=0.1", "--repeats=1", "--malloc=int_max_trim"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["d_sae"] == 256 and row["dead_fraction"] == 0.1 and row["step_s"] > 0 and row["faults_per_step"] >= 0


@pytest.mark.slow
def test_screen_ab_and_certification_scripts_run(tmp_path):
    """`benchmarks.screen_ab` (screened against unscreened step) and `benchmarks.screen_certification`
    (on a store of random rows instead of a harvested model) at tiny sizes."""
    import numpy as np

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.screen_ab", "--d_sae=1024", "--d_in=16", "--batch=64",
                             "--rounds=2", f"--out={tmp_path / 'ab'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "ab" / "screen_ab.json").read_text())["rows"]
    assert row["d_sae"] == 1024 and row["screened_s"] > 0 and row["unscreened_s"] > 0 and row["rounds"] == 2
    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "shard_000000.npy", np.random.default_rng(0).standard_normal((9000, 16), dtype=np.float32))
    result = subprocess.run([sys.executable, "-m", "benchmarks.screen_certification", f"--store={store}",
                             "--d_sae=512", "--k=4", "--steps=2", "--every=1", f"--out={tmp_path / 'cert'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cert = json.loads((tmp_path / "cert" / "certification.json").read_text())
    assert [r["step"] for r in cert["rows"]] == [0, 1, 2] and cert["d_in"] == 16
    assert all(0 <= r["certified_rows"] <= 1 and r["column_norm_max_over_median"] >= 1 for r in cert["rows"])


@pytest.mark.slow
def test_tune_malloc_is_idempotent_and_can_be_turned_off():
    """In subprocesses: the settings are process-wide and should not leak into the test session."""
    code = "from saejax import runtime; print(runtime.tune_malloc(), runtime.tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != runtime.DISABLE_ENV}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    linux = str(sys.platform.startswith("linux"))
    assert on.stdout.split() == [linux, linux]
    off = subprocess.run([sys.executable, "-c", code], env={**env, runtime.DISABLE_ENV: "1"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.split() == ["False", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_keeps_a_freed_block_over_2_gib():
    """A step's scratch past 2 GiB (d_sae 32768, batch 4096) must stay in the heap when freed: a trim
    threshold capped at INT_MAX returned it to the system, and the next step faulted it in again."""
    code = """if True:
        import ctypes
        from saejax import runtime
        assert runtime.tune_malloc()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
        block = libc.malloc(3 << 30)  # never touched: no page is faulted in
        top = libc.sbrk(0)
        libc.free(ctypes.c_void_p(block))
        print(block < top, libc.sbrk(0) == top)  # from the heap, and the heap did not shrink
    """
    env = {k: v for k, v in os.environ.items() if k != runtime.DISABLE_ENV}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not runtime.kernel_takes_huge_page_advice(),
                    reason="needs transparent huge pages on request ([madvise]) and overcommit that is not strict")
@pytest.mark.slow
def test_tune_malloc_backs_later_large_blocks_with_huge_pages_without_touching_them():
    """The reserved heap range is address space only (RSS does not grow by it), and a large block
    allocated afterwards, as XLA's scratch is, is faulted in as 2 MiB pages; SAEJAX_NO_HUGE_PAGES=1
    leaves the allocator settings on and the huge pages off."""
    code = """if True:
        import ctypes
        from saejax import runtime
        def rss():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) << 10
        before = rss()
        applied = runtime.tune_malloc()
        grown = rss() - before
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        huge, overlaps = 0, False
        for line in open("/proc/self/smaps"):  # the mappings that overlap the block
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(a, 16) for a in first.split("-"))
                overlaps = lo < block + (64 << 20) and block < hi
            elif first == "AnonHugePages:" and overlaps:
                huge += int(line.split()[1]) << 10
        print(applied, runtime.huge_page_bytes, grown, huge)
    """
    env = {k: v for k, v in os.environ.items() if k not in (runtime.DISABLE_ENV, runtime.NO_HUGE_PAGES_ENV)}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    applied, advised, grown, huge = on.stdout.split()
    assert applied == "True" and int(advised) >= 1 << 30
    assert int(grown) < 32 << 20  # the reservation itself is never written
    assert int(huge) >= 32 << 20  # most of the 64 MiB block came as 2 MiB pages
    off = subprocess.run([sys.executable, "-c", code], env={**env, runtime.NO_HUGE_PAGES_ENV: "1"},
                         capture_output=True, text=True, check=True)
    applied, advised, _, huge = off.stdout.split()
    assert applied == "True" and advised == "0" and huge == "0"
