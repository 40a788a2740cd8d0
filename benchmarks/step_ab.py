r"""One train step variant in a fresh process, for A/B comparisons across allocator settings and commits.

    python -m benchmarks.step_ab --arch=topk --d_sae=32768 --dead_fraction=0.05 [--malloc=tuned]

Prints one JSON line: median step seconds, minor page faults per step, XLA scratch. It builds the
step itself (MSE + AuxK 1/32 for topk, MSE + L1 5.0 for relu; Adam 1e-4, k 32) and needs only
`make_sae`, `losses` and the train step, so an older checkout can be timed with the same script:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python benchmarks/step_ab.py --arch=topk --d_sae=32768   # saejax from /tmp/old

--malloc: tuned (mallopt as `saejax.runtime.tune_malloc` does now: never trim), int_max_trim (the
earlier setting, trim threshold 2**31 - 1), default (glibc's). --huge_pages (default on, as
`tune_malloc` does): the heap reservation advised for transparent huge pages, taken from
the `saejax/runtime.py` beside this script, so an older checkout on PYTHONPATH is timed under the
same advice. Alternate contenders over several rounds and compare medians: this machine is noisy
(BUILD_NOTES, "Performance suite").
"""

import ctypes
import importlib.util
import json
import resource
import statistics
import time
from pathlib import Path

from absl import app, flags

_ARCH = flags.DEFINE_enum("arch", "topk", ["relu", "topk"], "SAE architecture.")
_SPARSE = flags.DEFINE_bool("sparse", True, "topk: the sparse path.")
_D_IN = flags.DEFINE_integer("d_in", 512, "Input width.")
_D_SAE = flags.DEFINE_integer("d_sae", 32768, "Dictionary size.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per step.")
_DEAD = flags.DEFINE_float("dead_fraction", 0.0, "topk: share of latents dead from the start and kept dead.")
_MALLOC = flags.DEFINE_enum("malloc", "tuned", ["tuned", "int_max_trim", "default"], "Allocator settings.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps (after one untimed).")
_HUGE_PAGES = flags.DEFINE_bool("huge_pages", True, "Advise the heap for transparent huge pages, as tune_malloc does.")

DEAD_STEPS = 1000
_TRIM = {"tuned": -1, "int_max_trim": 2**31 - 1}


def set_malloc(mode: str) -> None:
    if mode == "default":
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for param, value in ((-8, 1), (-4, 0), (-1, _TRIM[mode])):  # arena_max, mmap_max, trim_threshold
        assert mallopt(param, value) == 1


def advise_huge_pages() -> int:
    """The huge-page heap reservation of the saejax/runtime.py beside this script (loaded by path, not
    from PYTHONPATH). Returns the bytes advised (0 where the kernel or the environment says no)."""
    path = Path(__file__).resolve().parents[1] / "saejax" / "runtime.py"
    spec = importlib.util.spec_from_file_location("_step_ab_runtime", path)
    here = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(here)
    if not here.wants_huge_page_advice():
        return 0
    return here.reserve_huge_page_heap(ctypes.CDLL("libc.so.6"), here.huge_page_reserve_bytes())


def main(argv):
    del argv
    set_malloc(_MALLOC.value)
    huge_page_bytes = advise_huge_pages() if _HUGE_PAGES.value and _MALLOC.value != "default" else 0
    import jax
    import numpy as np
    import optax

    import saejax
    from saejax import losses

    d, f, b = _D_IN.value, _D_SAE.value, _BATCH.value
    x = jax.numpy.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    options = {"k": 32, "sparse": _SPARSE.value} if _ARCH.value == "topk" else {}
    sae = saejax.make_sae(_ARCH.value, d, f, **options)
    if _ARCH.value == "topk":
        encoder = getattr(sae, "pre_acts_of", None) or getattr(sae, "pre_acts_at", None)
        loss = losses.chain(losses.mse(), losses.auxk(1 / 32, d // 2, DEAD_STEPS, encoder))
    else:
        loss = losses.chain(losses.mse(), losses.l1(5.0))
    optimizer = saejax.make_optimizer(optax.adam(1e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), np.asarray(x[:1024]))
    n_dead = int(_DEAD.value * f)
    if n_dead:
        state = state._replace(steps_since_fired=state.steps_since_fired.at[:n_dead].set(DEAD_STEPS),
                               params={**state.params, "b_enc": state.params["b_enc"].at[:n_dead].set(-1e3)})
    step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer)).lower(state, x).compile()
    state, out = step(state, x)
    jax.block_until_ready(out)
    seconds, faults = [], []
    for _ in range(_REPEATS.value):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        state, out = step(state, x)
        jax.block_until_ready(out)
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({
        "saejax": saejax.__file__, "arch": _ARCH.value, "sparse": _SPARSE.value, "d_in": d, "d_sae": f, "batch": b,
        "dead_fraction": _DEAD.value, "malloc": _MALLOC.value, "huge_page_bytes": huge_page_bytes, "step_s": statistics.median(seconds),
        "faults_per_step": statistics.median(faults), "scratch_gib": step.memory_analysis().temp_size_in_bytes / 2**30,
    }))


if __name__ == "__main__":
    app.run(main)
