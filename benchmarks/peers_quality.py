r"""Quality of saejax against SAELens and EleutherAI's sparsify, judged the way a researcher would:
every contender trains on THE SAME activation rows, in the same order, and every result is scored
by ONE numpy metric on held-out rows.

    python -m benchmarks.peers_quality --store=/tmp/peers_quality/minilm_l3 --mode=defaults --out=topk_defaults
    python -m benchmarks.peers_quality --store=/tmp/peers_quality/minilm_l3 --mode=forced --lr=1e-3 \
        --out=topk_forced_lr1e-3

1. Data. --store is a saejax shard store (`saejax.data.store`). With --synthetic it is built from
   saejax's superposition source (`saejax.data.synthetic`: --synthetic_features unit features in
   --synthetic_d dimensions, --synthetic_active firing per row on average, the most frequent firing
   --synthetic_freq_ratio times as often as the rarest; --synthetic_rows rows) and its true features
   are kept beside it (true_dictionary.npy), so every contender is also scored on dictionary
   recovery. With --synth_bench it is built from SAELens' own generator with SynthSAEBench's settings
   (`sae_lens.synthetic`: Zipf frequencies, a 4-way hierarchy 3 deep, low-rank correlations,
   orthogonalised superposition, bias; 16384 features in 768 dimensions unless --synth_bench_features /
   --synth_bench_d), and scored the same way, with SynthSAEBench's MCC as well. Otherwise, if it does
   not exist it is harvested
   first (experiments/harvest.py --model=--model --layer=--layer --site=resid_post
   --max_tokens=--max_tokens, timed). All rows are permuted once (--split_seed); the first
   1 - --heldout of them are written to STORE_train (float32), the rest to STORE_heldout.
2. Contenders, each in a fresh process (its whole-process wall time is measured too), all fed the
   rows of STORE_train in the order saejax's npy reader streams them (`NpySource.rows`):
   - saejax: experiments/train.py (SAELens-layout export in W/export, which acts on raw rows);
     s/step from the arrival times of its progress lines (--config.train.log_every=10).
   - saelens: `SAETrainer` with `TopKTrainingSAE` (relu: `StandardTrainingSAE`, jumprelu:
     `JumpReLUTrainingSAE`, batchtopk: `BatchTopKTrainingSAE`, matryoshka:
     `MatryoshkaBatchTopKTrainingSAE` with --matryoshka_widths, as saejax's prefixes), its own defaults; the weights of
     `save_inference_model` (decoder norms folded in).
   - sparsify: `SparseCoder` and the update sequence of sparsify's `Trainer` with its Adam branch
     (b_dec = first batch's mean, unit-norm decoder before each forward, FVU loss (+ AuxK when
     auxk_alpha > 0, dead after dead_feature_threshold tokens), gradient parallel to the decoder
     rows removed, Adam, linear warm-up/decay schedule). topk only.
   - sparsify_signum: the same with sparsify's *default* optimizer in 1.3.3: sign-SGD wrapped in
     schedule-free (momentum 0.95); the saved weights are the schedule-free average (`eval()`), as
     the Trainer saves them. topk only.
   --mode=defaults sets only the data, the architecture, d_sae, k, batch and steps; --mode=forced
   also sets a constant --lr with no warm-up and no decay for all of them. --sparsity sets the L1
   (relu) or L0 (jumprelu) coefficient of every contender; --target_l0 has every JumpReLU aim at
   one L0 (SAELens: its quadratic "Gemma Scope 2" mode, --sparsity its coefficient; saejax:
   loss.target_l0).
3. Metric (numpy, all held-out rows, in batches): FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖²; L0 = mean
   number of nonzero latents per row; dead % = latents that never fire on the held-out rows;
   dense % = latents firing on more than 10 % of them; with --synthetic or --synth_bench, MMCS = the
   mean over true features of the largest cosine with any decoder row (Sharkey et al. 2022, as
   `saejax.metrics.mmcs`) and MCC = the mean |cos| of a one-to-one (Hungarian) matching of decoder rows
   to true features over the matched pairs (SynthSAEBench's; checked against SAELens'
   `mean_correlation_coefficient`). Every contender's weights are written as
   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (+ threshold [d_sae])
   acting on raw rows: pre = (x − b_dec) @ W_enc + b_enc (SAELens' apply_b_dec_to_input, sparsify's
   encode, saejax's encoders all subtract b_dec first). The metric is checked against SAELens'
   own `SAE.load_from_disk` + encode/decode on the saejax export and on SAELens' saved SAE.

Writes benchmarks/results/latest/peers_quality/OUT.json and OUT.md (--out_dir); training folders and
logs go to --work_dir (default: the temp folder).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("saejax", "saelens", "sparsify", "sparsify_signum")
ARCHS = ("topk", "relu", "batchtopk", "jumprelu", "matryoshka")
TORCH_ARCHS = {"saelens": ARCHS, "sparsify": ("topk",), "sparsify_signum": ("topk",)}
DENSE_FRACTION = 0.1
SAEJAX_LOG_EVERY = 10

_STORE = flags.DEFINE_string("store", None, "Shard store of activation rows (harvested first if missing).")
_MODEL = flags.DEFINE_string("model", "minilm", "Harvest: the text model (minilm, gemma3-270m, a path).")
_LAYER = flags.DEFINE_integer("layer", 3, "Harvest: block whose resid_post is read.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 600_000, "Harvest: rows to collect.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Build --store from saejax's superposition source (if missing) "
                                "and score MMCS against its true features.")
_SYN_FEATURES = flags.DEFINE_integer("synthetic_features", 400, "--synthetic: ground-truth features.")
_SYN_D = flags.DEFINE_integer("synthetic_d", 200, "--synthetic: dimensions of a row.")
_SYN_ACTIVE = flags.DEFINE_float("synthetic_active", 6.0, "--synthetic: mean number of active features per row.")
_SYN_FREQ_RATIO = flags.DEFINE_float("synthetic_freq_ratio", 400.0, "--synthetic: firing rate of the most "
                                     "frequent feature over the rarest's.")
_SYN_ROWS = flags.DEFINE_integer("synthetic_rows", 1_100_000, "--synthetic, --synth_bench: rows in the store (before "
                                 "the split).")
_SYNTH_BENCH = flags.DEFINE_bool("synth_bench", False, "Build --store (if missing) from SAELens' SynthSAEBench model: "
                                 "its generator and settings (sae_lens.synthetic), --synth_bench_features features in "
                                 "--synth_bench_d dimensions; scored on dictionary recovery like --synthetic.")
_SB_FEATURES = flags.DEFINE_integer("synth_bench_features", 16384, "--synth_bench: features (the benchmark: 16384).")
_SB_D = flags.DEFINE_integer("synth_bench_d", 768, "--synth_bench: dimensions of a row (the benchmark: 768).")
_MATRYOSHKA_WIDTHS = flags.DEFINE_list("matryoshka_widths", ["128", "512", "2048"], "matryoshka: the nested widths "
                                       "below d_sae (SynthSAEBench's), for every contender.")
_HELDOUT = flags.DEFINE_float("heldout", 0.1, "Share of the rows held out for the metric.")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the one permutation that splits the rows.")
_ARCH = flags.DEFINE_enum("arch", "topk", ARCHS, "SAE architecture (sparsify: topk only).")
_D_SAE = flags.DEFINE_integer("d_sae", 3072, "Dictionary size.")
_K = flags.DEFINE_integer("k", 32, "Active latents per row (topk, batchtopk).")
_BATCH = flags.DEFINE_integer("batch", 4096, "Rows per training step.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps.")
_MODE = flags.DEFINE_enum("mode", "defaults", ["defaults", "forced"],
                          "defaults: each framework's own settings; forced: constant --lr, no warm-up, no decay.")
_LR = flags.DEFINE_float("lr", 1e-3, "forced mode: the learning rate of every contender.")
_SPARSITY = flags.DEFINE_float("sparsity", None, "relu: the L1 coefficient, jumprelu: the L0 coefficient, of every "
                               "contender (saejax: loss.l1 / loss.l0; SAELens: l1_coefficient / l0_coefficient); "
                               "unset: each framework's default. Their scales differ (saejax normalises the "
                               "rows): sweep it per framework (--contenders) to compare at a matched L0.")
_TARGET_L0 = flags.DEFINE_float("target_l0", None, "jumprelu: every contender aims at this L0 (SAELens: its "
                                 "quadratic, Gemma Scope 2 sparsity mode; saejax: loss.target_l0); --sparsity is "
                                 "then SAELens' coefficient of that penalty.")
_SCALE_ROWS = flags.DEFINE_bool("scale_rows", False, "Train the torch contenders on rows scaled by saejax's "
                                 "normalisation (one scalar s with E||s·x||² = d_in over the training rows; their "
                                 "weights folded back to raw rows for the metric) instead of raw rows: their own "
                                 "defaults assume activations of moderate norm, which a Gemma residual stream is not.")
_CONTENDERS = flags.DEFINE_list("contenders", list(CONTENDERS), f"Subset of {', '.join(CONTENDERS)}.")
_SAEJAX_FLAGS = flags.DEFINE_list("saejax_flags", [], "Extra experiments/train.py flags, e.g. --config.loss.l1=0.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed of every contender (saejax: config.seed).")
_EVAL_ROWS = flags.DEFINE_integer("eval_batch", 8192, "Held-out rows scored at a time.")
_OUT = flags.DEFINE_string("out", "peers_quality", "Name of the result files (OUT.json, OUT.md).")
_OUT_DIR = flags.DEFINE_string("out_dir", str(ROOT / "benchmarks" / "results" / "latest" / "peers_quality"),
                                "Result folder.")
_WORK_DIR = flags.DEFINE_string("work_dir", "", "Training folders and logs (default: TMP/peers_quality_runs/OUT).")
# Internal: a torch contender in its own process (python benchmarks/peers_quality.py --worker=NAME ...).
_WORKER = flags.DEFINE_string("worker", "", "Internal: train this torch contender and exit.")
_WORKER_DIR = flags.DEFINE_string("worker_dir", "", "Internal: the worker's folder (order.npy in, weights out).")
_TRAIN_STORE = flags.DEFINE_string("train_store", "", "Internal: the worker's training store.")


# ---------------------------------------------------------------------------------------------
# Stores, in plain numpy (the torch workers import neither jax nor saejax).


def read_store(directory) -> np.ndarray:
    """Every row of a shard store, float32 [N, d_in], shards in manifest order (float32/float16 stores)."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    if manifest["dtype"] not in ("float32", "float16", "float64"):
        raise ValueError(f"{directory}: dtype {manifest['dtype']!r}; rewrite the store as float32")
    return np.concatenate([np.load(Path(directory) / s["file"], allow_pickle=False).astype(np.float32)
                           for s in manifest["shards"]])


def harvest(store: Path) -> dict:
    """Run experiments/harvest.py into `store`; -> {"seconds", "command"}."""
    command = [sys.executable, "experiments/harvest.py", f"--model={_MODEL.value}", f"--layer={_LAYER.value}",
               "--site=resid_post", f"--out={store.resolve()}", f"--max_tokens={_MAX_TOKENS.value}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    info = {"seconds": round(time.perf_counter() - start, 1), "command": " ".join(command[1:])}
    (store / "peers_quality_harvest.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def synthetic_recipe() -> dict:
    """What --synthetic builds (recorded beside the store; a store built otherwise is rebuilt)."""
    return {"source": "saejax.data.synthetic", "seed": _SPLIT_SEED.value, "n_features": _SYN_FEATURES.value,
            "d": _SYN_D.value, "avg_active": _SYN_ACTIVE.value, "freq_ratio": _SYN_FREQ_RATIO.value,
            "rows": _SYN_ROWS.value}


def synthesize(store: Path) -> dict:
    """Write --synthetic_rows rows of saejax's superposition source (seed --split_seed) as the store
    `store` and its true features [n_features, d] as store/true_dictionary.npy; -> the recipe."""
    from saejax.data.store import write_store  # noqa: PLC0415
    from saejax.data.synthetic import SyntheticSource  # noqa: PLC0415

    recipe = synthetic_recipe()
    source = SyntheticSource(_SPLIT_SEED.value, d=_SYN_D.value, n_features=_SYN_FEATURES.value,
                             avg_active=_SYN_ACTIVE.value, freq_ratio=_SYN_FREQ_RATIO.value)
    block = 100_000
    blocks = (source.batch(i, min(block, _SYN_ROWS.value - i * block)) for i in range(-(-_SYN_ROWS.value // block)))
    write_store(store, blocks, dtype="float32", overwrite=True)
    np.save(store / "true_dictionary.npy", source.dictionary, allow_pickle=False)
    (store / "peers_quality_synthetic.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


def synth_bench_recipe() -> dict:
    """What --synth_bench builds: SynthSAEBench-16k's generator settings (SAELens' docs, "SynthSAEBench";
    the model decoderesearch/synth-sae-bench-16k-v2) at --synth_bench_features features in --synth_bench_d
    dimensions (hierarchy roots scaled as features / 128), --synthetic_rows rows sampled with torch seed
    --split_seed."""
    return {"source": "sae_lens.synthetic (SynthSAEBench settings)", "num_features": _SB_FEATURES.value,
            "hidden_dim": _SB_D.value, "zipf": {"exponent": 0.5, "max_prob": 0.4, "min_prob": 5e-4},
            "hierarchy": {"total_root_nodes": max(1, _SB_FEATURES.value // 128), "branching_factor": 4, "max_depth": 3,
                          "mutually_exclusive_portion": 1.0, "mutually_exclusive_min_depth": 0,
                          "compensate_probabilities": True, "scale_children_by_parent": True},
            "orthogonalization": {"num_steps": 100, "lr": 3e-4}, "correlation": {"rank": 25, "correlation_scale": 0.1},
            "magnitudes": {"mean": [5.0, 4.0], "std_folded_normal": [0.5, 0.5]}, "bias": 0.5, "model_seed": 42,
            "rows": _SYN_ROWS.value, "sample_seed": _SPLIT_SEED.value}


def synth_bench(store: Path) -> dict:
    """Write --synthetic_rows rows of SAELens' SyntheticModel built with `synth_bench_recipe` as the store
    `store`, its feature vectors [n_features, d] as store/true_dictionary.npy; -> the recipe (with the
    rows' true L0 and the seconds taken). The model is kept in STORE_model (SyntheticModel.save; building
    it orthogonalises the features, ~30 min at 16384 in 768 dimensions on 2 cores) for a store of other
    rows from the same model."""
    import torch  # noqa: PLC0415
    from sae_lens import synthetic as sl  # noqa: PLC0415

    from saejax.data.store import write_store  # noqa: PLC0415

    recipe, start = synth_bench_recipe(), time.perf_counter()
    model_dir = Path(f"{store}_model")
    model_recipe = {key: value for key, value in recipe.items() if key not in ("rows", "sample_seed")}
    marker = model_dir / "peers_quality_model.json"
    if marker.exists() and json.loads(marker.read_text()) == model_recipe:
        model = sl.SyntheticModel.load_from_disk(str(model_dir))
    else:
        model = build_synth_model(recipe)
        model.save(str(model_dir))
        marker.write_text(json.dumps(model_recipe, indent=1) + "\n")
    built = time.perf_counter() - start
    print(f"   SyntheticModel ready in {built:.0f} s; sampling {recipe['rows']:,} rows", flush=True)
    torch.manual_seed(recipe["sample_seed"])  # SAELens samples from torch's global generator
    active = []

    def blocks(block: int = 16384):
        for first in range(0, recipe["rows"], block):
            rows, features = model.sample_with_features(min(block, recipe["rows"] - first))
            active.append(float((features > 0).sum(1).float().mean()) * rows.shape[0])
            yield rows.numpy().astype(np.float32)

    write_store(store, blocks(), dtype="float32", overwrite=True)
    np.save(store / "true_dictionary.npy", model.feature_dict.feature_vectors.detach().numpy().astype(np.float32),
            allow_pickle=False)
    recipe = {**recipe, "true_l0": sum(active) / recipe["rows"], "build_s": round(built, 1),
              "seconds": round(time.perf_counter() - start, 1)}
    (store / "peers_quality_synth_bench.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


def build_synth_model(recipe: dict):
    """SAELens' SyntheticModel of a `synth_bench_recipe`."""
    from sae_lens import synthetic as sl  # noqa: PLC0415

    h, zipf = recipe["hierarchy"], recipe["zipf"]
    return sl.SyntheticModel(sl.SyntheticModelConfig(
        num_features=recipe["num_features"], hidden_dim=recipe["hidden_dim"],
        firing_probability=sl.ZipfianFiringProbabilityConfig(**zipf), hierarchy=sl.HierarchyConfig(**h),
        orthogonalization=sl.OrthogonalizationConfig(**recipe["orthogonalization"]),
        correlation=sl.LowRankCorrelationConfig(**recipe["correlation"]),
        mean_firing_magnitudes=sl.LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=sl.FoldedNormalMagnitudeConfig(mean=0.5, std=0.5), bias=recipe["bias"],
        seed=recipe["model_seed"]))


def unit_rows(a: np.ndarray) -> np.ndarray:
    """The rows of a [n, d] scaled to unit norm, float64 (all-zero rows stay zero)."""
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def mcc(w_dec: np.ndarray, true: np.ndarray) -> float:
    """SynthSAEBench's MCC: the mean |cos| over the pairs of a one-to-one (Hungarian) matching of decoder
    rows w_dec [m, d] to true features [n, d] (min(m, n) pairs, as SAELens' mean_correlation_coefficient)."""
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    abs_cos = np.abs(unit_rows(w_dec) @ unit_rows(true).T)
    rows, cols = linear_sum_assignment(abs_cos, maximize=True)
    return float(abs_cos[rows, cols].mean())


def saelens_mcc(w_dec: np.ndarray, true: np.ndarray) -> float:
    """SAELens' own sae_lens.synthetic.mean_correlation_coefficient of w_dec [m, d] against true [n, d]."""
    import torch  # noqa: PLC0415
    from sae_lens.synthetic import mean_correlation_coefficient  # noqa: PLC0415

    return mean_correlation_coefficient(torch.from_numpy(np.asarray(w_dec, np.float32)),
                                        torch.from_numpy(np.asarray(true, np.float32)))


def mmcs(w_dec: np.ndarray, true: np.ndarray) -> float:
    """Mean over the true features [n, d] of their largest cosine with a decoder row of w_dec [m, d]."""
    return float(np.mean(np.max(unit_rows(true) @ unit_rows(w_dec).T, axis=1)))


def split_store(store: Path, heldout: float, seed: int) -> tuple[Path, np.ndarray]:
    """(STORE_train, held-out rows float32 [n_h, d_in]): one permutation of all rows, the first
    1 - heldout to STORE_train (float32), the rest to STORE_heldout; both reused when they exist
    and were made from the same store (path, rows and the writer's statistics), seed and share."""
    from saejax.data.store import write_store  # noqa: PLC0415

    train_dir, heldout_dir = Path(f"{store}_train"), Path(f"{store}_heldout")
    manifest = json.loads((store / "manifest.json").read_text())
    # the writer's statistics (row mean, E‖x‖²) tell a rewritten store from the one split before
    recipe = {"store": str(store.resolve()), "rows": manifest["total_rows"], "stats": manifest.get("stats"),
              "heldout": heldout, "seed": seed}
    marker = train_dir / "peers_quality_split.json"
    if not (marker.exists() and json.loads(marker.read_text()) == recipe and (heldout_dir / "manifest.json").exists()):
        rows = read_store(store)
        order = np.random.default_rng(seed).permutation(rows.shape[0])
        n_train = rows.shape[0] - int(round(heldout * rows.shape[0]))
        write_store(train_dir, rows[order[:n_train]], dtype="float32", overwrite=True)
        write_store(heldout_dir, rows[order[n_train:]], dtype="float32", overwrite=True)
        marker.write_text(json.dumps(recipe, indent=1) + "\n")
    return train_dir, read_store(heldout_dir)


def stream_order(train_dir: Path, steps: int, batch: int, seed: int) -> np.ndarray:
    """Row ids of STORE_train in the order saejax's npy reader streams them to experiments/train.py
    (the source `saejax.data.make_source` builds from the run's data config), int64 [steps, batch];
    checked against the reader's own first batch."""
    from saejax import data as data_lib  # noqa: PLC0415
    from saejax.config import base_config  # noqa: PLC0415

    config = base_config().data
    config.source, config.path = "npy", str(train_dir)
    if "heldout_fraction" in config:
        config.heldout_fraction = 0.0
    source = data_lib.make_source(config, seed)
    order = np.stack([source.rows(step, batch) for step in range(steps)])
    if not np.array_equal(source.read(order[0]), source.batch(0, batch)):
        raise AssertionError("NpySource.rows(0) does not give the rows of NpySource.batch(0)")
    return order


# ---------------------------------------------------------------------------------------------
# The one metric.


def encode(weights: dict, arch: str, k: int, x: np.ndarray) -> np.ndarray:
    """Latents [n, d_sae] of raw rows x [n, d_in]: pre = (x − b_dec) @ W_enc + b_enc, then relu
    (relu), relu of the k largest (topk), relu(pre)·(pre > threshold) (jumprelu, batchtopk, matryoshka)."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if arch == "topk":
        top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        z = np.zeros_like(pre)
        np.put_along_axis(z, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0.0), axis=1)
        return z
    z = np.maximum(pre, 0.0)
    return z * (pre > weights["threshold"]) if arch in ("jumprelu", "batchtopk", "matryoshka") else z


def decode(weights: dict, z: np.ndarray) -> np.ndarray:
    """Reconstruction [n, d_in] of latents z [n, d_sae]: z @ W_dec + b_dec."""
    return z @ weights["W_dec"] + weights["b_dec"]


def score(weights: dict, arch: str, k: int, x: np.ndarray, batch_rows: int = 8192,
          true_dictionary: np.ndarray | None = None) -> dict:
    """FVU, L0, dead % and dense % of an SAE (weights on raw rows) over every row of x [n, d_in];
    and its MMCS and MCC (`mcc`) against true_dictionary [n_features, d_in] when given."""
    n, d_sae = x.shape[0], weights["W_enc"].shape[1]
    total_var = float(np.sum((x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)) ** 2))
    sq_err, fires = 0.0, np.zeros(d_sae, np.int64)
    for start in range(0, n, batch_rows):
        rows = x[start:start + batch_rows]
        z = encode(weights, arch, k, rows)
        sq_err += float(np.sum((rows - decode(weights, z)).astype(np.float64) ** 2))
        fires += np.count_nonzero(z, axis=0)
    result = {"fvu": sq_err / total_var, "l0": float(fires.sum() / n), "dead_pct": 100.0 * float(np.mean(fires == 0)),
              "dense_pct": 100.0 * float(np.mean(fires > DENSE_FRACTION * n))}
    if true_dictionary is not None:
        result["mmcs"] = mmcs(weights["W_dec"], true_dictionary)
        result["mcc"] = mcc(weights["W_dec"], true_dictionary)
    return result


def saelens_check(sae_dir: Path, weights: dict, arch: str, k: int, x: np.ndarray, row_scale: float = 1.0) -> dict:
    """SAELens' own SAE.load_from_disk(sae_dir) encode/decode against ours on rows x [n, d_in]
    (an SAE trained on row_scale · x sees row_scale · x, its reconstruction divided by it):
    {"max_abs_dx_hat", "max_abs_dz", "fvu_saelens", "fvu_ours", "fvu_rel_diff"}."""
    import torch  # noqa: PLC0415
    from sae_lens import SAE  # noqa: PLC0415

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    with torch.no_grad():
        z_ref = sae.encode(torch.from_numpy(np.asarray(x * row_scale, np.float32)))
        x_ref = sae.decode(z_ref).numpy() / row_scale
    z = encode(weights, arch, k, x)
    x_hat = decode(weights, z)
    var = float(np.sum((x - x.mean(0)) ** 2))
    fvu_ref, fvu = float(np.sum((x - x_ref) ** 2)) / var, float(np.sum((x - x_hat) ** 2)) / var
    return {"max_abs_dx_hat": float(np.abs(x_hat - x_ref).max()), "max_abs_dz": float(np.abs(z - z_ref.numpy()).max()),
            "fvu_saelens": fvu_ref, "fvu_ours": fvu, "fvu_rel_diff": abs(fvu - fvu_ref) / fvu_ref}


# ---------------------------------------------------------------------------------------------
# Torch workers (each in its own process).


def timed_batches(rows: np.ndarray, order: np.ndarray, step_s: list):
    """Yield torch batches rows[order[i]] [B, d_in]; the time from one yield to the next request
    (the trainer's step, without reading the batch) is appended to step_s."""
    import torch  # noqa: PLC0415

    for ids in order:
        batch = torch.from_numpy(rows[ids])
        handed = time.perf_counter()
        yield batch
        step_s.append(time.perf_counter() - handed)


def saelens_sae(arch: str, d_in: int, d_sae: int, k: int):
    """SAELens' training SAE for `arch` with its own defaults apart from d_in, d_sae (and k)."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig  # noqa: PLC0415
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig  # noqa: PLC0415
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig  # noqa: PLC0415
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: PLC0415

    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    if arch == "matryoshka":
        from sae_lens.saes.matryoshka_batchtopk_sae import (  # noqa: PLC0415
            MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig)

        widths = [int(w) for w in _MATRYOSHKA_WIDTHS.value] + [d_sae]
        return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                                                                  matryoshka_widths=widths))
    coefficient = {} if _SPARSITY.value is None else {
        "jumprelu": {"l0_coefficient": _SPARSITY.value}, "relu": {"l1_coefficient": _SPARSITY.value}}[arch]
    if arch == "jumprelu":
        target = {} if _TARGET_L0.value is None else {"jumprelu_sparsity_loss_mode": "quadratic",
                                                       "target_l0": _TARGET_L0.value}
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, **coefficient, **target))
    return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, **coefficient))


def train_saelens(rows: np.ndarray, order: np.ndarray, out: Path) -> tuple[dict, dict, list]:
    """SAETrainer.fit over the batches; -> (weights on raw rows, settings, step seconds). The
    inference SAE (decoder norms folded in) is saved to out/saelens_sae for the metric's check."""
    import dataclasses  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415
    from sae_lens.config import SAETrainerConfig  # noqa: PLC0415
    from sae_lens.training.sae_trainer import SAETrainer  # noqa: PLC0415

    torch.manual_seed(_SEED.value)
    batch, steps = order.shape[1], order.shape[0]
    sae = saelens_sae(_ARCH.value, rows.shape[1], _D_SAE.value, _K.value)
    forced = {"lr": _LR.value, "lr_scheduler_name": "constant", "lr_warm_up_steps": 0, "lr_decay_steps": 0}
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, device="cpu",
                           **(forced if _MODE.value == "forced" else {}))
    cfg.lr_end = cfg.lr / 10  # what LanguageModelSAERunnerConfig.__post_init__ sets (unused by "constant")
    step_s: list[float] = []
    SAETrainer(cfg, sae, data_provider=timed_batches(rows, order, step_s)).fit()
    sae.save_inference_model(str(out / "saelens_sae"))
    weights = load_file(str(out / "saelens_sae" / "sae_weights.safetensors"))
    settings = {"trainer": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "logger"},
                "sae": {key: value for key, value in dataclasses.asdict(sae.cfg).items() if key != "metadata"},
                "grad_clip_norm": 1.0}
    return weights, settings, step_s


def sparsify_optimizer(sae, kind: str, steps: int, defaults):
    """(optimizer, scheduler or None, settings) as sparsify's Trainer builds them for `kind`
    (adam: lr 2e-4/sqrt(d_sae/2^14), linear warm-up over lr_warmup_steps then linear decay;
    signum: schedule-free sign-SGD, lr 5e-3/sqrt(d_sae/2^14), momentum 0.95); forced mode: --lr,
    constant."""
    import torch  # noqa: PLC0415
    from transformers import get_linear_schedule_with_warmup  # noqa: PLC0415

    forced = _MODE.value == "forced"
    scale = (sae.num_latents / 2**14) ** 0.5
    if kind == "signum":
        from schedulefree import ScheduleFreeWrapper  # noqa: PLC0415
        from sparsify.sign_sgd import SignSGD  # noqa: PLC0415

        lr = _LR.value if forced else defaults.lr or 5e-3 / scale
        optimizer = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
        optimizer.train()
        return optimizer, None, {"optimizer": "schedule-free sign-SGD", "lr": lr, "momentum": 0.95}
    lr = _LR.value if forced else defaults.lr or 2e-4 / scale
    optimizer = torch.optim.Adam([{"params": sae.parameters(), "lr": lr}])
    warmup = 0 if forced else defaults.lr_warmup_steps
    scheduler = None if forced else get_linear_schedule_with_warmup(optimizer, warmup, steps)
    return optimizer, scheduler, {"optimizer": "adam", "lr": lr, "lr_warmup_steps": warmup,
                                  "schedule": "constant" if forced else "linear warm-up, then linear decay to 0"}


def sparsify_step(sae, optimizer, scheduler, x, fired_since, auxk_alpha: float, dead_after: int, first: bool):
    """One step of sparsify's Trainer (fvu loss, no accumulation) on x [B, d_in]; fired_since:
    tokens since each latent last fired [d_sae], updated in place."""
    import torch  # noqa: PLC0415

    if first:
        sae.b_dec.data = x.mean(0)
    sae.set_decoder_norm_to_unit_norm()
    dead_mask = fired_since > dead_after if auxk_alpha > 0 else None
    out = sae(x, dead_mask=dead_mask, total_variance=(x - x.mean(0)).pow(2).sum())
    loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
    loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()
    with torch.no_grad():
        did_fire = torch.zeros_like(fired_since, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        fired_since += x.shape[0]
        fired_since[did_fire] = 0


def train_sparsify(rows: np.ndarray, order: np.ndarray, kind: str) -> tuple[dict, dict, list]:
    """sparsify's SparseCoder trained with its Trainer's update sequence (`sparsify_step`);
    -> (weights on raw rows, settings, step seconds)."""
    import dataclasses  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from sparsify import SparseCoder, SparseCoderConfig  # noqa: PLC0415
    from sparsify.config import TrainConfig  # noqa: PLC0415

    defaults = TrainConfig(sae=SparseCoderConfig())
    torch.manual_seed(_SEED.value)
    sae = SparseCoder(rows.shape[1], SparseCoderConfig(num_latents=_D_SAE.value, k=_K.value), "cpu", torch.float32)
    optimizer, scheduler, settings = sparsify_optimizer(sae, kind, order.shape[0], defaults)
    fired_since = torch.zeros(sae.num_latents, dtype=torch.long)
    step_s: list[float] = []
    for i, x in enumerate(timed_batches(rows, order, step_s)):
        sparsify_step(sae, optimizer, scheduler, x, fired_since, defaults.auxk_alpha,
                      defaults.dead_feature_threshold, i == 0)
    if kind == "signum":
        optimizer.eval()  # the schedule-free average, which the Trainer saves
    weights = {"W_enc": sae.encoder.weight.detach().T.numpy(), "b_enc": sae.encoder.bias.detach().numpy(),
               "W_dec": sae.W_dec.detach().numpy(), "b_dec": sae.b_dec.detach().numpy()}
    settings.update({"auxk_alpha": defaults.auxk_alpha,
                     "dead_feature_threshold_tokens": defaults.dead_feature_threshold,
                     "sae": dataclasses.asdict(sae.cfg), "default_optimizer": defaults.optimizer,
                     "encoder_init": "nn.Linear default (row norm ~0.58), bias 0; W_dec = unit-norm copy"})
    return weights, settings, step_s


def run_worker(name: str) -> None:
    """Train contender `name` on STORE_train in the order of WORKER_DIR/order.npy; write
    WORKER_DIR/weights.npz (float32, on raw rows) and WORKER_DIR/worker.json (settings, step seconds)."""
    out = Path(_WORKER_DIR.value)
    rows = read_store(_TRAIN_STORE.value)
    order = np.load(out / "order.npy", allow_pickle=False)
    if _SCALE_ROWS.value:
        from saejax.normalization import scale_of  # noqa: PLC0415

        row_scale = scale_of(rows)
        rows = rows * np.float32(row_scale)
    else:
        row_scale = 1.0
    if name == "saelens":
        weights, settings, step_s = train_saelens(rows, order, out)
    else:
        weights, settings, step_s = train_sparsify(rows, order, "signum" if name == "sparsify_signum" else "adam")
    # trained on row_scale · x: the same SAE on raw rows (pre-activations and thresholds unchanged)
    weights = {**weights, "W_enc": weights["W_enc"] * row_scale, "W_dec": weights["W_dec"] / row_scale,
               "b_dec": weights["b_dec"] / row_scale}
    settings["row_scale"] = row_scale
    np.savez(out / "weights.npz", **{key: np.asarray(v, np.float32) for key, v in weights.items()})
    (out / "worker.json").write_text(json.dumps({"settings": settings, "step_s": step_s}, indent=1, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# The parent: one contender after the other, each in a fresh process.


def steady_step_s(step_s: list[float]) -> float | None:
    """Median seconds per step, without the first two steps (warm-up); None with none left."""
    steady = step_s[2:]
    return statistics.median(steady) if steady else None


def run_logged(command: list[str], log: Path, env: dict | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Run `command` from the repository root, its output into `log`; -> (wall seconds, [(arrival
    second, line)] of its stdout). Raises with the log's tail when it fails."""
    start = time.perf_counter()
    lines = []
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line))
            fh.write(line)
        code = proc.wait()
    wall = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({code}); {log}:\n{''.join(l for _, l in lines[-30:])}")
    return wall, lines


def saejax_flags(train_dir: Path, workdir: Path, steps: int) -> list[str]:
    """experiments/train.py's flags for this run (see the module docstring)."""
    from saejax.config import base_config  # noqa: PLC0415

    c = "--config."
    flags_ = [f"--workdir={workdir}", f"{c}data.source=npy", f"{c}data.path={train_dir}",
              f"{c}sae.arch={_ARCH.value}", f"{c}sae.d_sae={_D_SAE.value}", f"{c}sae.k={_K.value}",
              f"{c}train.batch_size={_BATCH.value}", f"{c}train.steps={steps}", f"{c}seed={_SEED.value}",
              f"{c}log.tensorboard=False", f"{c}train.log_every={SAEJAX_LOG_EVERY}"]
    if "heldout_fraction" in base_config().data:  # the rows held out are already in STORE_heldout
        flags_.append(f"{c}data.heldout_fraction=0")
    if _MODE.value == "forced":
        flags_ += [f"{c}optim.lr={_LR.value}", f"{c}optim.warmup_steps=0", f"{c}optim.decay=constant"]
    if _ARCH.value == "matryoshka":
        flags_.append(f"{c}sae.matryoshka_prefixes={','.join([*_MATRYOSHKA_WIDTHS.value, str(_D_SAE.value)])}")
    if _ARCH.value == "jumprelu" and _TARGET_L0.value is not None:
        flags_.append(f"{c}loss.target_l0={_TARGET_L0.value}")
    elif _SPARSITY.value is not None and _ARCH.value in ("relu", "jumprelu"):
        flags_.append(f"{c}loss.{'l1' if _ARCH.value == 'relu' else 'l0'}={_SPARSITY.value}")
    return flags_ + list(_SAEJAX_FLAGS.value)


def progress_step_s(lines: list[tuple[float, str]]) -> list[float]:
    """Seconds per step between consecutive `[train] step N/...` progress lines (by arrival time)."""
    marks = []
    for arrived, line in lines:
        if line.startswith("[train] step "):
            marks.append((int(line.split()[2].split("/")[0]), arrived))
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks, marks[1:])]


def run_saejax(train_dir: Path, work: Path, steps: int) -> dict:
    """experiments/train.py in a fresh process; -> {"weights", "settings", "step_s" (per step, from
    the progress lines, the first interval dropped), "wall_s", "export"}."""
    from saejax.export import load_saelens  # noqa: PLC0415

    workdir = work / "saejax"
    shutil.rmtree(workdir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "experiments/train.py", *saejax_flags(train_dir, workdir, steps)]
    wall, lines = run_logged(command, work / "saejax.log", {**os.environ, "JAX_PLATFORMS": "cpu"})
    weights, cfg = load_saelens(workdir / "export")
    config = json.loads((workdir / "config.json").read_text())
    settings = {"command": "python " + " ".join(command[1:]), "optim": config["optim"], "loss": config["loss"],
                "sae": config["sae"], "norm_scale_folded": cfg["metadata"]["saejax"]["norm_scale_folded"]}
    per_interval = progress_step_s(lines)[1:]  # the first interval holds initialisation and compilation
    return {"weights": weights, "settings": settings, "wall_s": wall, "export": workdir / "export",
            "step_s_median": statistics.median(per_interval) if per_interval else None}


def run_torch(name: str, train_dir: Path, work: Path, order: np.ndarray) -> dict:
    """A torch contender in a fresh process (`run_worker`); -> like `run_saejax`."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.save(folder / "order.npy", order)
    passed = [flags.FLAGS[f].serialize()
              for f in ("arch", "d_sae", "k", "mode", "lr", "seed", "sparsity", "target_l0", "scale_rows",
                        "matryoshka_widths")
              if flags.FLAGS[f].value is not None]
    command = [sys.executable, str(Path(__file__).resolve()), f"--worker={name}", f"--worker_dir={folder}",
               f"--train_store={train_dir}", *passed]
    wall, _ = run_logged(command, work / f"{name}.log")
    report = json.loads((folder / "worker.json").read_text())
    with np.load(folder / "weights.npz", allow_pickle=False) as archive:
        weights = {key: archive[key] for key in archive.files}
    return {"weights": weights, "settings": report["settings"], "wall_s": wall,
            "step_s_median": steady_step_s(report["step_s"]), "export": folder / "saelens_sae"}


def contenders() -> list[str]:
    """The --contenders that can train --arch (sparsify only has topk)."""
    unknown = set(_CONTENDERS.value) - set(CONTENDERS)
    if unknown:
        raise app.UsageError(f"unknown --contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    return [c for c in _CONTENDERS.value if c == "saejax" or _ARCH.value in TORCH_ARCHS[c]]


def table(rows: list[dict], settings: dict) -> list[str]:
    """The markdown result table, then each contender's training settings in one line."""
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    synthetic = all("mmcs" in r for r in rows) and bool(rows)

    lines = [f"Held-out metric on {settings['heldout_rows']:,} rows ({settings['d_in']}-d, {settings['store']}); "
             f"{settings['arch']} d_sae={settings['d_sae']} k={settings['k']} batch={settings['batch']} "
             f"steps={settings['steps']}, mode={settings['mode']}"
             + (f" lr={settings['lr']:g}" if settings["mode"] == "forced" else "")
             + (f" sparsity={settings['sparsity']:g}" if settings.get("sparsity") is not None else ""), "",
             "| contender | held-out FVU | L0 | dead % | dense % |" + (" MMCS | MCC |" if synthetic else "")
             + " s/step | wall s |", "|---|---|---|---|---|" + ("---|---|" if synthetic else "") + "---|---|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['fvu']:.4f} | {r['l0']:.1f} | {r['dead_pct']:.1f} "
                     f"| {r['dense_pct']:.1f} " + (f"| {r['mmcs']:.4f} | {r['mcc']:.4f} " if synthetic else "")
                     + f"| {num(r['step_s'], '.3f')} | {r['wall_s']:.1f} |")
    lines += ["", "Settings:"] + [f"- {r['contender']}: {r['summary']}" for r in rows]
    if all("load_1m" in r for r in rows):  # the machine is shared: timings are only comparable at similar load
        lines += ["", f"1-minute load average before/after each contender ({os.cpu_count()} CPUs): "
                  + "; ".join(f"{r['contender']} {r['load_1m'][0]:.1f}/{r['load_1m'][1]:.1f}" for r in rows)]
    return lines


def summary_line(name: str, settings: dict) -> str:
    """One line of the settings that matter for quality: optimizer, lr, schedule, AuxK, init."""
    scaled = settings.get("row_scale", 1.0)
    return _summary(name, settings) + (f"; trained on rows scaled by {scaled:.4g}" if scaled != 1.0 else "")


def _summary(name: str, settings: dict) -> str:
    if name == "saejax":
        o, l, s = settings["optim"], settings["loss"], settings["sae"]
        return (f"{o.get('name')} lr {o.get('lr')}, warm-up {o.get('warmup_steps')}, decay {o.get('decay')}, clip "
                f"{o.get('grad_clip')}; l1 {l.get('l1')}, l0 {l.get('l0')}, target_l0 {l.get('target_l0')}, auxk {l.get('auxk')} "
                f"(dead after {l.get('dead_steps')} steps); "
                f"dec_init_norm {s.get('dec_init_norm')}, b_dec {s.get('init_b_dec')}, normalize "
                f"{s.get('normalize_activations')} (scale {settings['norm_scale_folded']:.4g})")
    if name == "saelens":
        t, s = settings["trainer"], settings["sae"]
        aux = s.get("aux_loss_coefficient")
        return (f"Adam lr {t['lr']:g}, scheduler {t['lr_scheduler_name']}, warm-up {t['lr_warm_up_steps']}, "
                f"clip 1.0; aux {aux} (dead after {t['dead_feature_window']} steps); decoder_init_norm "
                f"{s.get('decoder_init_norm')}, rescale_acts_by_decoder_norm {s.get('rescale_acts_by_decoder_norm')}, "
                f"b_dec 0, normalize {s.get('normalize_activations')}"
                + "".join(f", {key} {s[key]}" for key in ("l1_coefficient", "l0_coefficient", "jumprelu_bandwidth",
                                                           "jumprelu_init_threshold", "jumprelu_sparsity_loss_mode",
                                                           "target_l0") if key in s))
    return (f"{settings['optimizer']} lr {settings['lr']:.3g}" + (f", warm-up {settings['lr_warmup_steps']}, "
            f"{settings['schedule']}" if "schedule" in settings else "") + f"; auxk_alpha {settings['auxk_alpha']} "
            f"(dead after {settings['dead_feature_threshold_tokens']:,} tokens); FVU loss; b_dec = first batch mean; "
            "encoder nn.Linear init, unit-norm decoder")


def main(argv):
    del argv
    if _WORKER.value:
        return run_worker(_WORKER.value)
    if not _STORE.value:
        raise app.UsageError("--store is required")
    from benchmarks import write_results  # noqa: PLC0415

    store = Path(_STORE.value)
    true_dictionary = None
    if _SYNTH_BENCH.value:
        recipe_file = store / "peers_quality_synth_bench.json"
        recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
        if {key: recipe.get(key) for key in synth_bench_recipe()} != synth_bench_recipe():
            recipe = synth_bench(store)
        true_dictionary = np.load(store / "true_dictionary.npy", allow_pickle=False)
        harvest_info = {"synth_bench": recipe}
    elif _SYNTHETIC.value:
        recipe_file = store / "peers_quality_synthetic.json"
        if not (recipe_file.exists() and json.loads(recipe_file.read_text()) == synthetic_recipe()):
            synthesize(store)
        true_dictionary = np.load(store / "true_dictionary.npy", allow_pickle=False)
        harvest_info = {"synthetic": json.loads(recipe_file.read_text())}
    else:
        harvest_info = harvest(store) if not (store / "manifest.json").exists() else None
    if harvest_info is None and (store / "peers_quality_harvest.json").exists():
        harvest_info = json.loads((store / "peers_quality_harvest.json").read_text())
    train_dir, heldout = split_store(store, _HELDOUT.value, _SPLIT_SEED.value)
    order = stream_order(train_dir, _STEPS.value, _BATCH.value, _SEED.value)
    work = Path(_WORK_DIR.value or Path(tempfile.gettempdir()) / "peers_quality_runs" / _OUT.value)
    rows, checks = [], {}
    for name in contenders():
        print(f"== {name}", flush=True)
        load_before = os.getloadavg()[0]
        result = (run_saejax(train_dir, work, _STEPS.value) if name == "saejax"
                  else run_torch(name, train_dir, work, order))
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        metric = score(result["weights"], _ARCH.value, _K.value, heldout, _EVAL_ROWS.value, true_dictionary)
        if true_dictionary is not None:
            metric["mcc_saelens"] = saelens_mcc(result["weights"]["W_dec"], true_dictionary)
        if name in ("saejax", "saelens"):
            checks[name] = saelens_check(result["export"], result["weights"], _ARCH.value, _K.value, heldout[:4096],
                                         result["settings"].get("row_scale", 1.0) if name == "saelens" else 1.0)
        rows.append({"contender": name, **metric, "step_s": result["step_s_median"], "wall_s": result["wall_s"],
                     "load_1m": load, "summary": summary_line(name, result["settings"]),
                     "settings": result["settings"]})
        print(f"   {name}: FVU {metric['fvu']:.4f}, L0 {metric['l0']:.1f}, dead {metric['dead_pct']:.1f} %"
              + (f", MMCS {metric['mmcs']:.4f}, MCC {metric['mcc']:.4f}" if "mmcs" in metric else "")
              + f", wall {result['wall_s']:.0f} s",
              flush=True)
    settings = {"store": str(store), "train_rows": json.loads((train_dir / "manifest.json").read_text())["total_rows"],
                "heldout_rows": int(heldout.shape[0]), "d_in": int(heldout.shape[1]), "arch": _ARCH.value,
                "d_sae": _D_SAE.value, "k": _K.value, "batch": _BATCH.value, "steps": _STEPS.value,
                "mode": _MODE.value, "lr": _LR.value if _MODE.value == "forced" else None, "seed": _SEED.value,
                "sparsity": _SPARSITY.value,
                "split_seed": _SPLIT_SEED.value,
                "command": " ".join(["python -m benchmarks.peers_quality", *sys.argv[1:]])}
    result = {"settings": settings, "harvest": harvest_info, "rows": rows, "saelens_check": checks}
    write_results(_OUT_DIR.value, _OUT.value, result, table(rows, settings))


if __name__ == "__main__":
    app.run(main)
