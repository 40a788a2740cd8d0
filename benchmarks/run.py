r"""The performance suite: every measurement of saejax itself, one command, one JSON + one markdown table.

    python -m benchmarks.run [--sections=NAME,...] [--plan=full|quick|gpu] [--quick] [--repeats=5] [--out=DIR]
        [--sizes=DxFxB,...] [--variants=REGEX] [--sae_options=KEY=VALUE,...] [--set=SECTION.KEY=VALUE ...]

Default sections (each timed in this one process, medians, so that ratios compare like with like):
- limits: the matmul rate this machine reaches on the step's own shapes: numpy f32 into preallocated
  outputs (on CPU, the ceiling) and jax.jit(jnp.matmul) in f32 and bf16 (on GPU/TPU, the ceiling).
- steps: train-step time of relu+L1, topk (sparse and dense; sparse also with 5 % and 20 % of the
  latents dead, so that AuxK runs as it does through most of a long run, and without the bf16
  pre-screen of `saejax.screening`, which "auto" takes on CPUs with bf16 dots at d_sae >= 1024·k),
  batchtopk and jumprelu at each size, with FLOP/s counted as the 10·B·d·F FLOPs a minimal dense step
  needs, that rate as a fraction of the limit, and XLA's memory for the step (arguments + outputs +
  scratch). On CPU in f32 the fraction is paired: each timed step alternates with numpy's three
  matmuls on the same shapes, and the median of the per-round ratios is reported, so the machine's
  drift cancels (±15 % over minutes here); those rows also count the minor page faults of each timed
  step. Elsewhere the fraction uses the limits section's rate.
- speedups: the sparse TopK step against the dense relu and dense TopK steps of the same size (and
  against itself unscreened), timed in alternation (one step of each per round, median of the
  per-round ratios): the acceptance point "TopK ≥ 4× the dense relu step" without the drift between
  rows of the steps table.
- scaling: step time over d_sae = 2^12…2^16 (batch 1024) and over batch = 2^8…2^12 (d_sae 8192) for
  relu, topk dense and topk sparse, plus the decoder alone (forward + backward, dense matmul vs
  gather/scatter-add): OUT/scaling.png.
- precision: sae.dtype=bfloat16 (bf16 matmul inputs, f32 accumulation and master params) against
  float32: step time, and the held-out FVU of the same training run (experiments/train.py on the
  default image-patch config, relu and topk).
- peers: PyTorch 2.13 CPU reference steps (SAELens' own training step; sparsify's SparseCoder with
  its Trainer's update, TopK only; a plain module, eager and torch.compile) against saejax on the
  same SAE, sizes and optimizer (Adam), each in a fresh process (`benchmarks.peer_step`), in
  alternating rounds; ratio = peer time / saejax time. Needs torch and sae-lens (the `test` extra).
  In one process, torch's threads slowed saejax's TopK step at d_sae 32768 from 1.9 s to 4.4 s,
  hence the separate processes.

Sections run when named (`benchmarks.sections`: each module says what it measures and how; its
sizes are its own, `--set=SECTION.KEY=VALUE` changes one, e.g. --set=topk_crossover.d_sae=1024,4096):
checkpoint (step time with checkpoints vs none), loader (loader rows/s vs the step's), overhead (the
fixed cost of a CLI run), dense_step (the dense step vs numpy's matmul rate and a plain-autodiff
step), topk_crossover (sparse vs dense TopK over d_sae), screen_certification (the bf16 screen's
certified share while training on MiniLM activations).

Narrowing a run (for A/Bs, `benchmarks.ab`): --sizes replaces the plan's (d_in, d_sae, batch) sizes
of limits, steps, speedups and precision; --variants (a regular expression matched against the
whole variant name) picks the steps and speedups variants; --sae_options passes make_sae options to
every saejax step the suite builds (a variant's own options win), e.g. --sae_options=screen=True
with --variants='topk sparse(, unscreened)?' --sections=speedups times the screen against none.

Writes OUT/suite.json and OUT/suite.md (and OUT/scaling.png with scaling; OUT:
benchmarks/results/latest/suite). Plans: full (d_in 512; the default sections take 20–26 min on 2
CPU cores), quick (tiny sizes, about two minutes; the test suite runs it; --quick is the same) and
gpu (the accelerator sizes: d_in 2304, d_sae 16384 and 65536, batch 4096, every step in f32 and
bf16, each against jax's own matmul rate in its dtype; with --peak_tflops the bf16 rows also get MFU
against that nominal peak; the other sections take their full sizes). On an accelerator:

    python -m benchmarks.run --plan=gpu --sections=limits,steps,scaling --peak_tflops=989 --out=DIR

The process applies `saejax.kernels.cpu.tune_malloc()` first, as experiments/train.py does.
"""

import ast
import importlib.util
import json
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import (median_seconds, numpy_matmul_rate, paired_speedup, paired_step_and_limit, sections,
                        time_steps, train_setup, write_results)
from saejax.kernels import cpu
from saejax.sae import linear

DEFAULT_SECTIONS = ("limits", "steps", "speedups", "scaling", "precision", "peers")
SECTIONS = DEFAULT_SECTIONS + sections.NAMES
_SECTIONS = flags.DEFINE_list("sections", list(DEFAULT_SECTIONS), f"Which sections to run, in this order: "
                              f"{', '.join(SECTIONS)} (default: {', '.join(DEFAULT_SECTIONS)}).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions per measurement (medians are reported).")
_QUICK = flags.DEFINE_bool("quick", False, "Same as --plan=quick.")
_PLAN = flags.DEFINE_enum("plan", "full", ["full", "quick", "gpu"], "Sizes: full (CPU, d_in 512), quick (tiny: "
                          "checks that every section runs) or gpu (d_in 2304, d_sae 16384/65536, f32 and bf16).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "The device's nominal dense bf16 peak (TFLOP/s; H100/H200 "
                                  "SXM: 989); when set, bf16 step rows also report MFU against it.")
_PEERS_MALLOC = flags.DEFINE_enum("peers_malloc", "tuned", ["tuned", "default"], "peers: every contender's process "
                                  "with saejax.kernels.cpu.tune_malloc() (tuned: equal conditions) or glibc's defaults.")
_PEER_CONTENDERS = flags.DEFINE_list("peer_contenders", ["saejax", "saelens", "sparsify", "plain", "compiled"],
                                     "peers: which contenders to time (saejax is always timed: ratios are to it).")
_SIZES = flags.DEFINE_list("sizes", None, "D_INxD_SAExBATCH,...: replaces the plan's sizes of limits, steps, "
                          "speedups and precision (e.g. 512x32768x4096).")
_VARIANTS = flags.DEFINE_string("variants", None, "steps, speedups: only the variants whose whole name matches "
                                "this regular expression (e.g. 'relu|topk sparse').")
_SAE_OPTIONS = flags.DEFINE_list("sae_options", [], "KEY=VALUE,...: make_sae options for every saejax step the "
                                 "suite builds (Python literals or text; a variant's own options win).")
_SET = flags.DEFINE_multi_string("set", [], "SECTION.KEY=VALUE: one setting of a section of benchmarks.sections "
                                 "(e.g. checkpoint.d_sae=8192).")
_OUT = flags.DEFINE_string("out", str(Path(__file__).parent / "results" / "latest" / "suite"), "Output directory.")

ROOT = Path(__file__).resolve().parents[1]
K = 32
FULL = {
    "sizes": [(512, 8192, 4096), (512, 32768, 4096)],  # (d_in, d_sae, batch)
    "step_dtypes": ("float32",), "scaling_d_in": 512,
    "d_saes": [2**12, 2**13, 2**14, 2**15, 2**16], "scaling_batch": 1024,
    "batches": [2**8, 2**9, 2**10, 2**11, 2**12], "scaling_d_sae": 8192,
    # the sizes people train TopK at (d_in 384: MiniLM, 640: Gemma-3-270M), and one ReLU point
    "peer_sizes": [("relu", (512, 8192, 4096))] + [("topk", (d, f, 4096)) for d in (384, 640) for f in (3072, 16384, 65536)],
    "compile_peers_up_to": 8192, "precision_steps": 2000, "precision_archs": ("relu", "topk"),
}
QUICK = {
    "sizes": [(64, 2048, 256)], "step_dtypes": ("float32", "bfloat16"), "scaling_d_in": 64,
    "d_saes": [2**10, 2**11], "scaling_batch": 128,
    "batches": [64, 128], "scaling_d_sae": 2048,
    "peer_sizes": [("relu", (64, 2048, 256)), ("topk", (64, 2048, 256))],
    "compile_peers_up_to": 0, "precision_steps": 30, "precision_archs": ("relu",),
}
GPU = {  # the accelerator acceptance point: MFU at d_in 2304, d_sae 16384 / 65536, batch 4096, f32 and bf16
    **FULL, "sizes": [(2304, 16384, 4096), (2304, 65536, 4096)], "step_dtypes": ("float32", "bfloat16"),
    "scaling_batch": 4096, "batches": [2**10, 2**11, 2**12, 2**13, 2**14],
}
PLANS = {"full": FULL, "quick": QUICK, "gpu": GPU}
VARIANTS = {  # name -> (arch, train_setup options)
    "relu": ("relu", {}), "topk sparse": ("topk", {"sparse": True}), "topk dense": ("topk", {"sparse": False}),
    "topk sparse, 5% dead": ("topk", {"sparse": True, "dead_fraction": 0.05}),
    "topk sparse, 20% dead": ("topk", {"sparse": True, "dead_fraction": 0.2}),
    "topk sparse, unscreened": ("topk", {"sparse": True, "screen": False}),
    "batchtopk": ("batchtopk", {}), "jumprelu": ("jumprelu", {}),
}


def parse_sizes(items: list[str]) -> list[tuple[int, int, int]]:
    """["512x8192x4096", ...] -> [(d_in, d_sae, batch), ...]."""
    sizes = [tuple(int(v) for v in item.lower().split("x")) for item in items]
    if any(len(size) != 3 for size in sizes):
        raise ValueError(f"--sizes={','.join(items)}: write D_INxD_SAExBATCH, e.g. 512x8192x4096")
    return sizes


def literal(text: str):
    """A Python literal (True, 16, 0.5, 'auto') from text, or the text itself where it is none."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: list[str]) -> dict:
    """["KEY=VALUE", ...] -> {KEY: literal(VALUE)}."""
    pairs = [item.partition("=") for item in items]
    if any(not (key and sep) for key, sep, _ in pairs):
        raise ValueError(f"--sae_options={','.join(items)}: write KEY=VALUE,...")
    return {key: literal(value) for key, _, value in pairs}


def chosen_variants(pattern: str | None) -> list[str]:
    """The VARIANTS names that `pattern` matches whole (None: all)."""
    return [name for name in VARIANTS if pattern is None or re.fullmatch(pattern, name)]


def random_batch(b: int, d: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, d), dtype=np.float32))


_COMPILED: dict = {}  # (arch, d, f, batch shape and dtype, options) -> compiled step, reused across sections


def saejax_setup(arch: str, d: int, f: int, x: jax.Array, **sae_options):
    """(compiled step, initial state, its memory analysis) of `benchmarks.train_setup` for `arch`, k = K.
    A step already compiled in this process for the same arch, sizes, batch and options is reused
    (the steps, speedups and scaling sections share many): the state is always built afresh, since
    a step may donate it."""
    options = {"k": K, "dtype": "float32", **sae_options}
    step, state = train_setup(arch, d, f, x, **options)
    key = (arch, d, f, x.shape, str(x.dtype), repr(sorted(options.items())))
    if key not in _COMPILED:
        _COMPILED[key] = step.lower(state, x).compile()
    compiled = _COMPILED[key]
    return compiled, state, compiled.memory_analysis()


def variant_setup(name: str, d: int, f: int, x: jax.Array, **extra):
    """`saejax_setup` of the variant `name`: --sae_options, then `extra`, then the variant's own options."""
    arch, options = VARIANTS[name]
    return saejax_setup(arch, d, f, x, **{**parse_options(_SAE_OPTIONS.value), **extra, **options})


def memory_mib(analysis) -> dict:
    """XLA's buffer sizes for a compiled step, MiB (None where the backend does not say)."""
    if analysis is None:
        return {}
    mib = 2.0**20
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
             + analysis.temp_size_in_bytes)
    return {"arguments_mib": analysis.argument_size_in_bytes / mib, "scratch_mib": analysis.temp_size_in_bytes / mib,
            "total_mib": total / mib}


def time_variant(name: str, d: int, f: int, b: int, repeats: int, paired: bool = True, **extra) -> dict:
    """One variant's step: median seconds, FLOP/s on 10·B·d·F, XLA memory and (paired, on CPU in f32)
    its fraction of numpy's matmul rate measured in alternation with it (`paired_step_and_limit`)."""
    x = random_batch(b, d)
    step, state, analysis = variant_setup(name, d, f, x, **extra)
    row = {"variant": name, "d_in": d, "d_sae": f, "batch": b}
    if paired and jax.default_backend() == "cpu" and extra.get("dtype", "float32") == "float32":
        row.update(paired_step_and_limit(step, state, x, f, repeats), limit="numpy f32, paired")
    else:
        row["step_s"] = time_steps(step, state, x, repeats, warmup=1)
    return {**row, "flops_per_s_on_10BdF": 10.0 * b * d * f / row["step_s"], **memory_mib(analysis)}


# ---------------------------------------------------------------------------------------------
# Sections.


def jax_matmul_rate(b: int, d: int, f: int, dtype: str, repeats: int) -> float:
    """FLOP/s of jit(jnp.matmul) [B, d] x [d, F] in `dtype` with f32 accumulation."""
    a = random_batch(b, d).astype(dtype)
    w = random_batch(d, f, seed=2).astype(dtype)
    matmul = jax.jit(lambda a, w: jnp.matmul(a, w, preferred_element_type=jnp.float32))
    return 2.0 * b * d * f / median_seconds(lambda: matmul(a, w).block_until_ready(), repeats)


def limits(plan: dict, repeats: int) -> dict:
    out = {}
    for d, f, b in plan["sizes"]:
        out[f"{d}x{f}x{b}"] = {
            "numpy_f32": numpy_matmul_rate(b, d, f, repeats)["flops_per_s"] if jax.default_backend() == "cpu" else None,
            "jax_f32": jax_matmul_rate(b, d, f, "float32", repeats),
            "jax_bf16": jax_matmul_rate(b, d, f, "bfloat16", repeats),
        }
    return out


def limit_for(result: dict, d: int, f: int, b: int, dtype: str = "float32") -> float | None:
    """The ceiling a step is compared with: numpy's f32 rate on CPU, jax's own rate elsewhere."""
    rates = result.get("limits", {}).get(f"{d}x{f}x{b}")
    if not rates:
        return None
    if jax.default_backend() == "cpu" and dtype == "float32":
        return rates["numpy_f32"]
    return rates["jax_bf16" if dtype == "bfloat16" else "jax_f32"]


def steps(plan: dict, repeats: int, result: dict) -> list[dict]:
    rows = []
    for d, f, b in plan["sizes"]:
        for dtype in plan["step_dtypes"]:
            for name in chosen_variants(_VARIANTS.value):
                row = {**time_variant(name, d, f, b, repeats, dtype=dtype), "dtype": dtype}
                if "fraction_of_limit" not in row:  # not paired: the limits section's rate
                    limit = limit_for(result, d, f, b, dtype)
                    row["fraction_of_limit"] = row["flops_per_s_on_10BdF"] / limit if limit else None
                if dtype == "bfloat16" and _PEAK_TFLOPS.value:
                    row["mfu"] = row["flops_per_s_on_10BdF"] / (_PEAK_TFLOPS.value * 1e12)
                rows.append(row)
                print(f"steps: {name} {dtype} d_in={d} d_sae={f} batch={b}: {row['step_s']:.3f} s", flush=True)
    return rows


SPEEDUP_PAIRS = [("relu", "topk sparse"), ("topk dense", "topk sparse"), ("relu", "topk sparse, 5% dead"),
                 ("topk sparse, unscreened", "topk sparse")]


def speedups(plan: dict, repeats: int) -> list[dict]:
    """(slow, fast) variant pairs of SPEEDUP_PAIRS (both chosen by --variants) at each size in f32, timed
    in alternation."""
    chosen = chosen_variants(_VARIANTS.value)
    rows = []
    for d, f, b in plan["sizes"]:
        x = random_batch(b, d)
        for slow, fast in (pair for pair in SPEEDUP_PAIRS if set(pair) <= set(chosen)):
            pair = [variant_setup(name, d, f, x)[:2] for name in (slow, fast)]
            row = {"slow": slow, "fast": fast, "d_in": d, "d_sae": f, "batch": b,
                   **paired_speedup(pair[0], pair[1], x, repeats)}
            del pair
            rows.append(row)
            print(f"speedups: {fast} vs {slow} d_sae={f}: {row['speedup']:.2f}x", flush=True)
    return rows


def decoder_only_seconds(d: int, f: int, b: int, sparse: bool, repeats: int) -> float:
    """Forward + backward of the decoder alone (gradients for W_dec and the latents) for a batch whose
    latents are K per row: dense [B, F] x [F, d] matmul or gather / scatter-add of K rows."""
    w_dec = random_batch(f, d, seed=3)
    keys = jax.random.split(jax.random.key(0), 2)
    indices = jax.random.randint(keys[0], (b, K), 0, f)
    values = jax.random.uniform(keys[1], (b, K))
    target = random_batch(b, d)

    def loss(w_dec, values):
        params = {"W_dec": w_dec, "b_dec": jnp.zeros(d)}
        if sparse:
            x_hat = linear.sparse_decode(params, values, indices, "float32")
        else:
            x_hat = linear.linear_decode(params, linear.scatter_rows(values, indices, f), "float32")
        return jnp.sum(jnp.square(x_hat - target))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return median_seconds(lambda: jax.block_until_ready(grad(w_dec, values)), repeats, warmup=1)


def scaling(plan: dict, repeats: int) -> dict:
    d, b, f = plan["scaling_d_in"], plan["scaling_batch"], plan["scaling_d_sae"]
    over_d_sae, over_batch = [], []
    for f_i in plan["d_saes"]:
        for name in ("relu", "topk dense", "topk sparse"):
            over_d_sae.append(time_variant(name, d, f_i, b, repeats, paired=False))
        for sparse in (False, True):
            over_d_sae.append({"variant": f"decoder only ({'sparse' if sparse else 'dense'})", "d_in": d,
                               "d_sae": f_i, "batch": b, "step_s": decoder_only_seconds(d, f_i, b, sparse, repeats)})
        print(f"scaling: d_sae={f_i} done", flush=True)
    for b_i in plan["batches"]:
        for name in ("relu", "topk sparse"):
            over_batch.append(time_variant(name, d, f, b_i, repeats, paired=False))
    return {"over_d_sae": over_d_sae, "over_batch": over_batch}


def train_fvu(dtype: str, arch: str, steps_: int) -> dict:
    """Held-out eval of experiments/train.py on the default image-patch config with sae.dtype=`dtype`."""
    extra = ["--config.sae.arch=topk", "--config.sae.k=16", "--config.loss.l1=0"] if arch == "topk" else []
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}",
                        f"--config.sae.dtype={dtype}", f"--config.train.steps={steps_}", "--config.log.progress=False",
                        *extra], check=True, capture_output=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        evaluation = json.loads((Path(workdir) / "summary.json").read_text())["eval"]
    return {"arch": arch, "dtype": dtype, "steps": steps_, "fvu": evaluation["fvu"], "l0": evaluation["l0"],
            "run_s": seconds}


def precision(plan: dict, repeats: int, result: dict) -> dict:
    d, f, b = plan["sizes"][0]
    timing = []
    for dtype in ("float32", "bfloat16"):
        for name in ("relu", "topk sparse"):
            row = time_variant(name, d, f, b, repeats, dtype=dtype)
            if "fraction_of_limit" not in row:
                limit = limit_for(result, d, f, b, dtype)
                row["fraction_of_limit"] = row["flops_per_s_on_10BdF"] / limit if limit else None
            row["dtype"] = dtype
            timing.append(row)
    runs = [train_fvu(dtype, arch, plan["precision_steps"]) for arch in plan["precision_archs"]
            for dtype in ("float32", "bfloat16")]
    return {"timing": timing, "training": runs}


CONTENDERS = {"saejax": "saejax", "saelens": "SAELens training step", "sparsify": "sparsify (SparseCoder + Trainer step)",
              "plain": "PyTorch plain, eager", "compiled": "PyTorch plain, torch.compile"}


def peer_seconds(contender: str, arch: str, d: int, f: int, b: int, steps_: int, malloc: str) -> float:
    """Median step seconds of one contender in a fresh process (benchmarks/peer_step.py)."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.peer_step", f"--contender={contender}", f"--arch={arch}",
                             f"--d_in={d}", f"--d_sae={f}", f"--batch={b}", f"--steps={steps_}", f"--malloc={malloc}"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["step_s"]


def _version(distribution: str) -> str | None:
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def peers(plan: dict, repeats: int) -> dict:
    missing = [name for name in ("torch", "sae_lens") if importlib.util.find_spec(name) is None]
    if missing:  # (found, not imported: each contender runs in a process of its own)
        return {"skipped": f"PyTorch or sae-lens not installed (no {', '.join(missing)}); pip install -e '.[test]'"}
    rows, rounds = [], max(1, min(3, repeats))
    for arch, (d, f, b) in plan["peer_sizes"]:
        contenders = [c for c in CONTENDERS if (c == "saejax" or c in _PEER_CONTENDERS.value)
                      and (c != "compiled" or f <= plan["compile_peers_up_to"]) and (c != "sparsify" or arch == "topk")]
        times = {c: [] for c in contenders}
        for _ in range(rounds):  # alternating rounds of fresh processes: drift hits every contender alike
            for c in contenders:
                times[c].append(peer_seconds(c, arch, d, f, b, repeats, _PEERS_MALLOC.value))
        medians = {c: float(np.median(t)) for c, t in times.items()}
        for c, seconds in medians.items():
            rows.append({"arch": arch, "d_in": d, "d_sae": f, "batch": b, "contender": CONTENDERS[c], "step_s": seconds,
                         "peer_over_saejax": seconds / medians["saejax"], "rounds": times[c]})
        print(f"peers: {arch} d_sae={f}: " + ", ".join(f"{c} {s:.3f} s" for c, s in medians.items()), flush=True)
    return {"rows": rows, "torch": _version("torch"), "sparsify": _version("eai-sparsify"), "malloc": _PEERS_MALLOC.value, "rounds": rounds}


# ---------------------------------------------------------------------------------------------
# Report.


def plot_scaling(scaling_result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, x_key in ((axes[0], "over_d_sae", "d_sae"), (axes[1], "over_batch", "batch")):
        rows = scaling_result[key]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            ax.plot([r[x_key] for r in mine], [r["step_s"] for r in mine], "o-" if "decoder" not in variant else "s--",
                    label=variant)
        xs = sorted({r[x_key] for r in rows})
        first = min(r["step_s"] for r in rows if r[x_key] == xs[0] and r["variant"] == "relu")
        ax.plot(xs, [first * x / xs[0] for x in xs], ":", color="gray", label="linear (from relu)")
        ax.set(xscale="log", yscale="log", xlabel=x_key, ylabel="seconds per step")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    first = scaling_result["over_d_sae"][0]
    axes[0].set_title(f"step time vs d_sae (d_in {first['d_in']}, batch {first['batch']})")
    first = scaling_result["over_batch"][0]
    axes[1].set_title(f"step time vs batch (d_in {first['d_in']}, d_sae {first['d_sae']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gflops(rate) -> str:
    return f"{rate / 1e9:.1f}" if rate else "–"


def _fraction(value) -> str:
    return f"{value:.1%}" if value is not None else "–"


def markdown(result: dict) -> list[str]:
    lines = [f"saejax benchmark suite · {result['machine']} · backend {result['backend']} · jax {result['jax']} · "
             f"medians of {result['repeats']}", ""]
    if "limits" in result:
        lines += ["Matmul limit, same run ([B,d]x[d,F] etc.; GFLOP/s)", "",
                  "| d_in×d_sae×batch | numpy f32 | jax f32 | jax bf16 |", "|---|---|---|---|"]
        lines += [f"| {key} | {_gflops(r['numpy_f32'])} | {_gflops(r['jax_f32'])} | {_gflops(r['jax_bf16'])} |"
                  for key, r in result["limits"].items()]
        lines.append("")
    if "steps" in result:
        lines += ["Train steps (Adam; FLOP/s counted as 10·B·d·F, the minimal dense step; on CPU f32, \"of limit\" is "
                  "the median per-round ratio to numpy's matmul rate timed in alternation with the step)", "",
                  "| variant | dtype | d_in | d_sae | batch | step (s) | GFLOP/s | of limit | MFU | XLA memory (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r.get('dtype', 'float32')} | {r['d_in']} | {r['d_sae']} | {r['batch']} | "
                  f"{r['step_s']:.3f} | {_gflops(r['flops_per_s_on_10BdF'])} | {_fraction(r['fraction_of_limit'])} | "
                  f"{_fraction(r.get('mfu'))} | {r.get('total_mib', 0):.0f} |" for r in result["steps"]]
        lines.append("")
    if "speedups" in result:
        lines += ["Speed-ups, timed in alternation (median of per-round ratios)", "",
                  "| faster step | than | d_in | d_sae | batch | its step (s) | the other's (s) | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['fast']} | {r['slow']} | {r['d_in']} | {r['d_sae']} | {r['batch']} | {r['fast_s']:.3f} | "
                  f"{r['slow_s']:.3f} | {r['speedup']:.2f}× |" for r in result["speedups"]]
        lines.append("")
    for title, key in (("Scaling with d_sae", "over_d_sae"), ("Scaling with batch", "over_batch")):
        if "scaling" in result:
            lines += [f"{title} (step seconds; scaling.png)", "", "| variant | d_in | d_sae | batch | step (s) |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r['variant']} | {r['d_in']} | {r['d_sae']} | {r['batch']} | {r['step_s']:.4f} |"
                      for r in result["scaling"][key]]
            lines.append("")
    if "precision" in result:
        lines += ["bf16 matmuls (f32 accumulation and master params) vs f32", "",
                  "| variant | dtype | d_sae | batch | step (s) | of limit |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['dtype']} | {r['d_sae']} | {r['batch']} | {r['step_s']:.3f} | "
                  f"{_fraction(r['fraction_of_limit'])} |" for r in result["precision"]["timing"]]
        lines += ["", "| training run (image patches) | dtype | steps | held-out FVU | L0 |", "|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['dtype']} | {r['steps']} | {r['fvu']:.4f} | {r['l0']:.1f} |"
                  for r in result["precision"]["training"]]
        lines.append("")
    if "peers" in result:
        if "skipped" in result["peers"]:
            lines += [f"Peers: skipped ({result['peers']['skipped']})", ""]
        else:
            lines += [f"PyTorch peers (torch {result['peers']['torch']}; each contender in its own process, malloc "
                      f"{result['peers']['malloc']}; median of {result['peers']['rounds']} alternating rounds)", "", "| arch | d_in | d_sae | batch | contender | step (s) | × saejax's time |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['arch']} | {r['d_in']} | {r['d_sae']} | {r['batch']} | {r['contender']} | {r['step_s']:.3f} | "
                      f"{r['peer_over_saejax']:.2f} |" for r in result["peers"]["rows"]]
            lines.append("")
    for name in sections.NAMES:
        if name in result:
            lines += [*sections.module(name).table(result[name]), ""]
    return lines


def anon_huge_mib() -> float:
    """MiB of this process's anonymous memory in transparent huge pages (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")) / 1024
    except (OSError, StopIteration):
        return 0.0


def check_flags(overrides: dict) -> None:
    """UsageError for unknown sections, --set on a section that is not run or takes no settings, a
    --variants that matches nothing, and malformed --sizes / --sae_options."""
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    not_run = set(overrides) - (set(_SECTIONS.value) & set(sections.NAMES))
    if not_run:
        raise app.UsageError(f"--set: {sorted(not_run)} not among the sections run that take settings "
                             f"({', '.join(sections.NAMES)})")
    if _VARIANTS.value is not None and not chosen_variants(_VARIANTS.value):
        raise app.UsageError(f"--variants={_VARIANTS.value!r} matches none of: {', '.join(VARIANTS)}")
    try:
        parse_options(_SAE_OPTIONS.value)
        parse_sizes(_SIZES.value or [])
        for name, values in overrides.items():
            sections.settings(name, "full", values)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def run_section(name: str, plan_name: str, plan: dict, repeats: int, result: dict, out: Path, overrides: dict):
    """What section `name` measures (JSON-able): with the plan's sizes and --repeats, or (the sections
    of `benchmarks.sections`) with its own settings for the plan and `overrides`."""
    if name in sections.NAMES:
        return sections.module(name).measure(sections.settings(name, plan_name, overrides.get(name, {})))
    if name == "limits":
        return limits(plan, repeats)
    if name == "steps":
        return steps(plan, repeats, result)
    if name == "speedups":
        return speedups(plan, repeats)
    if name == "scaling":
        scaled = scaling(plan, max(3, repeats // 2))
        plot_scaling(scaled, out / "scaling.png")
        return scaled
    if name == "precision":
        return precision(plan, repeats, result)
    return peers(plan, repeats)


def main(argv):
    del argv
    try:
        overrides = sections.parse_overrides(_SET.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    check_flags(overrides)
    malloc_tuned = cpu.tune_malloc()  # before the first computation, as in experiments/train.py
    plan_name = "quick" if _QUICK.value else _PLAN.value
    plan, repeats = PLANS[plan_name], _REPEATS.value
    if _SIZES.value:
        plan = {**plan, "sizes": parse_sizes(_SIZES.value)}
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(),
              "devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "numpy": np.__version__,
              "repeats": repeats, "plan": plan_name, "quick": plan_name == "quick", "malloc_tuned": malloc_tuned,
              "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]])}
    start = time.perf_counter()
    for name in (s for s in SECTIONS if s in _SECTIONS.value):
        result[name] = run_section(name, plan_name, plan, repeats, result, out, overrides)
        print(f"{name}: done at {time.perf_counter() - start:.0f} s", flush=True)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["anon_huge_mib"] = anon_huge_mib()
    result["seconds"] = time.perf_counter() - start
    write_results(out, "suite", result, markdown(result))


if __name__ == "__main__":
    app.run(main)
