r"""How often the bf16 pre-screen (`saejax.screening`) certifies its rows while a TopK SAE trains on real
transformer activations: uncertified rows are re-selected in float32, which costs time, never
correctness.

    python -m benchmarks.screen_certification [--model=minilm] [--layer=3] [--tokens=150000]
        [--d_sae=32768] [--k=32] [--steps=500] [--every=50] [--out=benchmarks/results/screen_certification]

Harvests the model's residual stream (`saejax.harvest`, into --store, by default a folder in the
temp directory, unless a finished store is there; minilm and gemma3-270m install from PyPI), scales the rows to mean squared norm d_in, holds
out 4096 of them, and trains a sparse TopK SAE (AuxK, Adam 2e-4, batch 4096) with the screen on.
Every `every` steps it screens the held-out rows (`screening.screen_rows`) and records the certified
share of rows, the share of 1024-row chunks with none uncertified, the share that stay within
`screening.REPAIR_ROWS`, and the spread of the encoder's column norms. Writes OUT/certification.json
and OUT/certification.md.
"""

import json
import tempfile
import time
from pathlib import Path

from absl import app, flags

from saejax import runtime

_MODEL = flags.DEFINE_string("model", "minilm", "A text model `saejax.models.loading` knows (name or path).")
_LAYER = flags.DEFINE_integer("layer", 3, "Layer whose resid_post is harvested.")
_TOKENS = flags.DEFINE_integer("tokens", 150_000, "Tokens to harvest.")
_D_SAE = flags.DEFINE_integer("d_sae", 32768, "Dictionary size.")
_K = flags.DEFINE_integer("k", 32, "Active latents per row.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps.")
_EVERY = flags.DEFINE_integer("every", 50, "Steps between measurements.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/screen_certification", "Output folder.")
_STORE = flags.DEFINE_string("store", "", "Activation store to read or harvest into (default: the temp folder).")
BATCH, HELD_OUT, CHUNK = 4096, 4096, 1024


def activations(store: Path):
    """The harvested rows [n, d_in] float32, scaled to mean squared norm d_in."""
    import numpy as np  # noqa: PLC0415

    from saejax import harvest  # noqa: PLC0415
    from saejax.models import loading  # noqa: PLC0415

    if not sorted(store.glob("shard_*.npy")):
        harvest.harvest(loading.load_text_model(_MODEL.value), harvest.corpus_texts("", 128), layer=_LAYER.value,
                        site="resid_post", out_dir=store, max_tokens=_TOKENS.value)
    rows = np.concatenate([np.load(p, allow_pickle=False) for p in sorted(store.glob("shard_*.npy"))]).astype(np.float32)
    return rows * np.sqrt(rows.shape[1] / np.mean(np.sum(rows**2, axis=1)))


def main(argv):
    del argv
    runtime.tune_malloc()
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import optax  # noqa: PLC0415

    import saejax  # noqa: PLC0415
    from benchmarks import write_results  # noqa: PLC0415
    from saejax import losses, screening  # noqa: PLC0415
    from saejax import sae as sae_lib  # noqa: PLC0415

    out = Path(_OUT.value)
    store = _STORE.value or Path(tempfile.gettempdir()) / f"saejax_{_MODEL.value}_layer{_LAYER.value}_{_TOKENS.value}"
    data = activations(Path(store))
    np.random.default_rng(0).shuffle(data)
    held_out, train = jnp.asarray(data[:HELD_OUT]), data[HELD_OUT:]
    d, k = data.shape[1], _K.value
    sae = saejax.make_sae("topk", d, _D_SAE.value, k=k, sparse=True, screen=True)
    loss = losses.chain(losses.mse(), losses.auxk(1 / 32, d // 2, 1000, sae.pre_acts_of))
    optimizer = saejax.make_optimizer(optax.adam(2e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), train[:BATCH])
    step = saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer))

    @jax.jit
    def certification(params, x):
        w = sae_lib.encoder_weight(params)
        norms = jnp.sqrt(jnp.sum(w * w, axis=0))
        centered = x * state.norm_scale - params["b_dec"]
        certified = screening.screen_rows(centered, screening.screen_weight(w, norms), w.T, params["b_enc"],
                                          jnp.max(norms), k)[2]
        uncertified = jnp.sum(~certified.reshape(-1, CHUNK), axis=1)
        return {"certified_rows": jnp.mean(certified), "chunks_all_certified": jnp.mean(uncertified == 0),
                "chunks_repairable": jnp.mean(uncertified <= screening.REPAIR_ROWS),
                "column_norm_max_over_median": jnp.max(norms) / jnp.median(norms)}

    rows, start = [], time.perf_counter()
    for i in range(_STEPS.value + 1):
        if i % _EVERY.value == 0:
            rows.append({"step": i, **{name: float(v) for name, v in certification(state.params, held_out).items()}})
            print(json.dumps(rows[-1]), f"{time.perf_counter() - start:.0f} s", flush=True)
        j = i * BATCH % (len(train) - BATCH)
        state, metrics = step(state, jnp.asarray(train[j:j + BATCH]))
    result = {"model": _MODEL.value, "layer": _LAYER.value, "d_in": d, "d_sae": _D_SAE.value, "k": k,
              "final_fvu": float(metrics["fvu"]), "rows": rows}
    lines = [f"bf16 screen on {_MODEL.value} layer {_LAYER.value} (d_in {d}), TopK d_sae {_D_SAE.value}, k {k}; "
             f"held-out batch of {HELD_OUT} rows in chunks of {CHUNK}; final FVU {result['final_fvu']:.3f}", "",
             "| step | certified rows | chunks all certified | chunks within REPAIR_ROWS | column norms max/median |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {100 * r['certified_rows']:.2f} % | {100 * r['chunks_all_certified']:.0f} % | "
              f"{100 * r['chunks_repairable']:.0f} % | {r['column_norm_max_over_median']:.2f} |" for r in rows]
    write_results(out, "certification", result, lines)

if __name__ == "__main__":
    app.run(main)
