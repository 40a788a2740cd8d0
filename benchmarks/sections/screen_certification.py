"""How often the bf16 pre-screen (`saejax.screening`) certifies its rows while a TopK SAE trains on real
transformer activations: uncertified rows are re-selected in float32, which costs time, never
correctness.

Harvests the model's residual stream (`saejax.harvest`, into `store`, by default a folder in the temp
directory, unless a finished store is there; minilm and gemma3-270m install from PyPI; model
"random": standard-normal rows of width `random_d_in`, the smoke setting), scales the rows to mean
squared norm d_in, holds out 4096 of them, and trains a sparse TopK SAE (AuxK, Adam 2e-4, batch 4096)
with the screen on. Every `every` steps it screens the held-out rows (`screening.screen_rows`) and
records the certified share of rows, the share of 1024-row chunks with none uncertified, the share
that stay within `screening.REPAIR_ROWS`, and the spread of the encoder's column norms.
"""

import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import saejax
from saejax import losses
from saejax.kernels import screening
from saejax.sae import linear

SIZES = {
    "full": {"model": "minilm", "layer": 3, "tokens": 150_000, "d_sae": 32768, "k": 32, "steps": 500, "every": 50,
             "store": "", "random_d_in": 16},
    "quick": {"model": "random", "layer": 3, "tokens": 9000, "d_sae": 512, "k": 4, "steps": 2, "every": 1,
              "store": "", "random_d_in": 16},
}
BATCH, HELD_OUT, CHUNK = 4096, 4096, 1024


def store_folder(s: dict) -> Path:
    """`store`, or a folder in the temp directory named after the model, layer (or width) and tokens."""
    where = f"d{s['random_d_in']}" if s["model"] == "random" else f"layer{s['layer']}"
    return Path(s["store"] or Path(tempfile.gettempdir()) / f"saejax_{s['model']}_{where}_{s['tokens']}")


def fill_store(store: Path, s: dict) -> None:
    """Harvest `tokens` tokens of the model's resid_post at `layer` into `store` (random: Gaussian rows)."""
    if s["model"] == "random":
        store.mkdir(parents=True, exist_ok=True)
        rows = np.random.default_rng(0).standard_normal((s["tokens"], s["random_d_in"]), dtype=np.float32)
        np.save(store / "shard_000000.npy", rows)
        return
    from saejax import harvest  # noqa: PLC0415
    from saejax.models import loading  # noqa: PLC0415

    harvest.harvest(loading.load_text_model(s["model"]), harvest.corpus_texts("", 128), layer=s["layer"],
                    site="resid_post", out_dir=store, max_tokens=s["tokens"])


def activations(store: Path) -> np.ndarray:
    """The store's rows [n, d_in] float32, scaled to mean squared norm d_in."""
    shards = sorted(store.glob("shard_*.npy"))
    rows = np.concatenate([np.load(p, allow_pickle=False) for p in shards]).astype(np.float32)
    return rows * np.sqrt(rows.shape[1] / np.mean(np.sum(rows**2, axis=1)))


def certification_fn(norm_scale, k: int):
    """jitted (params, held-out rows) -> the screen's certification shares and the column-norm spread."""
    @jax.jit
    def certification(params, x):
        w = linear.encoder_weight(params)
        norms = jnp.sqrt(jnp.sum(w * w, axis=0))
        centered = x * norm_scale - params["b_dec"]
        certified = screening.screen_rows(centered, screening.screen_weight(w, norms), w.T, params["b_enc"],
                                          jnp.max(norms), k)[2]
        uncertified = jnp.sum(~certified.reshape(-1, CHUNK), axis=1)
        return {"certified_rows": jnp.mean(certified), "chunks_all_certified": jnp.mean(uncertified == 0),
                "chunks_repairable": jnp.mean(uncertified <= screening.REPAIR_ROWS),
                "column_norm_max_over_median": jnp.max(norms) / jnp.median(norms)}

    return certification


def measure(s: dict) -> dict:
    store = store_folder(s)
    if not sorted(store.glob("shard_*.npy")):
        fill_store(store, s)
    data = activations(store)
    np.random.default_rng(0).shuffle(data)
    held_out, train = jnp.asarray(data[:HELD_OUT]), data[HELD_OUT:]
    d, k = data.shape[1], s["k"]
    sae = saejax.make_sae("topk", d, s["d_sae"], k=k, sparse=True, screen=True)
    loss = losses.chain(losses.mse(), losses.auxk(1 / 32, d // 2, 1000, sae.pre_acts_of))
    optimizer = saejax.make_optimizer(optax.adam(2e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), train[:BATCH])
    step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer))
    certification = certification_fn(state.norm_scale, k)
    rows, start = [], time.perf_counter()
    for i in range(s["steps"] + 1):
        if i % s["every"] == 0:
            rows.append({"step": i, **{name: float(v) for name, v in certification(state.params, held_out).items()}})
            print(json.dumps(rows[-1]), f"{time.perf_counter() - start:.0f} s", flush=True)
        j = i * BATCH % (len(train) - BATCH)
        state, metrics = step(state, jnp.asarray(train[j:j + BATCH]))
    return {"model": s["model"], "layer": s["layer"], "d_in": d, "d_sae": s["d_sae"], "k": k,
            "final_fvu": float(metrics["fvu"]), "rows": rows}


def table(result: dict) -> list[str]:
    source = "random rows" if result["model"] == "random" else f"{result['model']} layer {result['layer']}"
    lines = [f"bf16 screen on {source} (d_in {result['d_in']}), TopK d_sae "
             f"{result['d_sae']}, k {result['k']}; held-out batch of {HELD_OUT} rows in chunks of {CHUNK}; final FVU "
             f"{result['final_fvu']:.3f}", "",
             "| step | certified rows | chunks all certified | chunks within REPAIR_ROWS | column norms max/median |",
             "|---|---|---|---|---|"]
    return lines + [f"| {r['step']} | {100 * r['certified_rows']:.2f} % | {100 * r['chunks_all_certified']:.0f} % | "
                    f"{100 * r['chunks_repairable']:.0f} % | {r['column_norm_max_over_median']:.2f} |"
                    for r in result["rows"]]
