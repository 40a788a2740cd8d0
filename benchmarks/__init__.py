"""Speed and memory benchmarks of saejax, and the peers it is compared with (see BUILD_NOTES.md).

- ``python -m benchmarks.run --sections=...``: every measurement of saejax itself, as sections of one
  suite (run.py; the sections that measure one thing of their own are in `benchmarks.sections`), one
  JSON and one markdown table per run.
- The peers: ``benchmarks.peers_quality`` (held-out quality against SAELens and sparsify on the same
  rows), ``benchmarks.peer_step`` and ``benchmarks.torch_reference`` (their step speed; the suite's
  peers section starts them).
- ``python -m benchmarks.ab``: any of these (or any command) under two or more variants, in
  alternating fresh processes.

Shared pieces: `median_seconds` / `time_steps` / `step_runner` (timing), `numpy_matmul_rate` (the
limit), `paired_step_and_limit` (a step's fraction of it) and `paired_speedup` (two steps' ratio), both
timed in alternation, `train_setup` / `relu_l1_setup` (saejax's steps, and the one most benchmarks
compare against) and `write_results`. Results go to benchmarks/results/latest/.
"""

import json
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import optax

import saejax
from saejax import losses


def seconds(fn) -> float:
    """Wall time of one call of fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def minor_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `repeats` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def step_runner(step, state, batch):
    """A zero-argument function that runs `step(state, batch) -> (state, out)` once, waits for out
    and keeps the new state for the next call (the step may donate the old one)."""
    holder = [state]

    def one():
        holder[0], out = step(holder[0], batch)
        jax.block_until_ready(out)

    return one


def time_steps(step, state, batch, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `step(state, batch) -> (state, out)`, threading the state through."""
    return median_seconds(step_runner(step, state, batch), repeats, warmup)


AUXK_DEAD_STEPS = 1000


def train_setup(arch: str, d_in: int, d_sae: int, x, dead_fraction: float = 0.0, **sae_options):
    """(jitted saejax train step, its initial state) for batches x [B, d_in] of `arch` (k = 32):
    MSE + L1 5.0 (relu), + AuxK 1/32 (topk, batchtopk), + L0 1e-3 (jumprelu); Adam 1e-4. b_dec and
    the normalisation come from the first 1024 rows of x. dead_fraction (AuxK archs): that share of
    the latents starts dead (silent for AUXK_DEAD_STEPS steps) and stays dead (encoder bias -1000), so
    AuxK runs on every step, as through most of a long run; otherwise nothing is dead for 1000 steps."""
    sae = saejax.make_sae(arch, d_in, d_sae, **sae_options)
    terms = [losses.mse()]
    if arch == "relu":
        terms.append(losses.l1(5.0))
    elif arch in ("topk", "batchtopk"):
        terms.append(losses.auxk(1 / 32, d_in // 2, AUXK_DEAD_STEPS, sae.pre_acts_of))
    elif arch == "jumprelu":
        terms.append(losses.jumprelu_l0(1e-3, sae.hparams["bandwidth"]))
    if dead_fraction and arch not in ("topk", "batchtopk"):
        raise ValueError(f"dead_fraction is for the AuxK archs (topk, batchtopk), not {arch!r}")
    loss = losses.chain(*terms)
    optimizer = saejax.make_optimizer(optax.adam(1e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), np.asarray(x[:1024]))
    if dead_fraction:  # dead from the first step, and kept dead by a very negative encoder bias
        n_dead = int(dead_fraction * d_sae)
        params = {**state.params, "b_enc": state.params["b_enc"].at[:n_dead].set(-1e3)}
        state = state._replace(params=params, steps_since_fired=state.steps_since_fired.at[:n_dead].set(AUXK_DEAD_STEPS))
    return saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer)), state


def relu_l1_setup(d_in: int, d_sae: int, x):
    """`train_setup` of the ReLU + L1 step most benchmarks compare against."""
    return train_setup("relu", d_in, d_sae, x)


def numpy_matmuls(b: int, d: int, f: int) -> dict:
    """The dense step's three matmul shapes as numpy f32 calls into preallocated outputs:
    {name: zero-argument function}, each 2·B·d·F FLOPs."""
    rng = np.random.default_rng(0)
    x, w_enc, z = (rng.standard_normal(s, dtype=np.float32) for s in [(b, d), (d, f), (b, f)])
    w_dec, x_t = np.ascontiguousarray(w_enc.T), np.ascontiguousarray(x.T)
    shapes = {
        "[B,d]x[d,F]": (x, w_enc, np.empty((b, f), np.float32)),
        "[B,F]x[F,d]": (z, w_dec, np.empty((b, d), np.float32)),
        "[d,B]x[B,F]": (x_t, z, np.empty((d, f), np.float32)),
    }
    return {name: (lambda a=a, w=w, o=o: np.matmul(a, w, out=o)) for name, (a, w, o) in shapes.items()}


def numpy_matmul_rate(b: int, d: int, f: int, repeats: int) -> dict:
    """numpy f32 FLOP/s on the step's three matmul shapes, into preallocated outputs."""
    seconds = {name: median_seconds(fn, repeats) for name, fn in numpy_matmuls(b, d, f).items()}
    flops = 2.0 * b * d * f
    rates = {name: flops / s for name, s in seconds.items()}
    return {"per_shape_flops_per_s": rates, "flops_per_s": 3 * flops / sum(seconds.values())}


def paired_step_and_limit(step, state, batch, d_sae: int, repeats: int, warmup: int = 1) -> dict:
    """A dense [B, d] -> [B, F] step against numpy's f32 matmul rate, measured in alternation: each of
    `repeats` rounds times one step, then numpy's three matmul shapes once each. This machine's speed
    drifts by ±15 % over minutes, so a limit measured at another time can move a step's fraction of
    it by as much; a ratio per round cancels the drift. batch [B, d], F = d_sae.
    -> {"step_s": median step seconds, "limit_flops_per_s": median numpy rate over the rounds,
        "fraction_of_limit": median over rounds of (10·B·d·F / step seconds) / numpy rate,
        "minor_faults_per_step": median of the minor page faults during each timed step}"""
    (b, d), f = batch.shape, d_sae
    one = step_runner(step, state, batch)
    matmuls = numpy_matmuls(b, d, f)

    def all_matmuls():
        for fn in matmuls.values():
            fn()

    for _ in range(warmup):
        one()
    all_matmuls()
    step_s, limits, faults = [], [], []
    for _ in range(repeats):
        before = minor_faults()
        step_s.append(seconds(one))
        faults.append(minor_faults() - before)
        limits.append(3 * 2.0 * b * d * f / seconds(all_matmuls))
    fractions = [10.0 * b * d * f / s / limit for s, limit in zip(step_s, limits)]
    return {"step_s": statistics.median(step_s), "limit_flops_per_s": statistics.median(limits),
            "fraction_of_limit": statistics.median(fractions), "minor_faults_per_step": statistics.median(faults)}


def paired_speedup(slow, fast, batch, repeats: int, warmup: int = 1) -> dict:
    """How many times faster `fast` is than `slow`, each a (jitted step, state) pair taking the same
    batch, timed in alternation: `repeats` rounds of one step of each, the median of the per-round
    ratios reported (drift over the run hits both alike).
    -> {"slow_s", "fast_s": median seconds, "speedup": median of slow_s / fast_s per round}"""
    slow_step, fast_step = step_runner(*slow, batch), step_runner(*fast, batch)
    for _ in range(warmup):
        slow_step()
        fast_step()
    rounds = [(seconds(slow_step), seconds(fast_step)) for _ in range(repeats)]
    return {"slow_s": statistics.median(r[0] for r in rounds), "fast_s": statistics.median(r[1] for r in rounds),
            "speedup": statistics.median(r[0] / r[1] for r in rounds)}


def write_results(out_dir: str | Path, name: str, result: dict, table: list[str]) -> None:
    """Write `result` as out_dir/NAME.json and the markdown `table` lines as out_dir/NAME.md; print the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
