"""Held-out metrics: FVU, L0, cosine similarity, dead and dense latents of the trained SAE on rows no
training batch touched (or, for a source without a held-out split, far-future training batches,
with a warning), and the collapse guard on them.

    sums = [evaluation_sums(sae, params, norm_scale, batch) for batch in batches]
    metrics, density = combine_evaluation(jax.device_get(sums))
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from saejax import data, guards, metrics, normalization, writers
from saejax.data import batches
from saejax.sae import SAE, Params

# Evaluation batches of a source without a held-out split are drawn at these step indices, far from
# any training step.
EVAL_STEP_OFFSET = 10**12


def evaluation_sums(sae: SAE, params: Params, norm_scale: jax.Array, batch: jax.Array,
                    rows: jax.Array | None = None) -> dict[str, jax.Array]:
    """Inference-mode sums over the rows of one batch [B, d_in], which `combine_evaluation` turns
    into metrics of all rows exactly (FVU against the mean of all rows, not of each batch): rows,
    Σ‖x − x̂‖², Σx [d_in], Σ‖x‖², Σ L0, Σ cos(x, x̂), and the rows each latent fired on [d_sae]
    (float32 counts are exact up to 2^24 rows per batch). A transcoder's batch is (inputs [B, d_in],
    targets [B, d_out]): x is then the target (its FVU is the target's), each half normalised by its
    own scale.
    rows: [] how many of the batch's leading rows count (None: all); a short last batch padded to
    B rows (with finite values) then compiles into the same program as the others.
    The inference-mode forward, not encode + decode: a sparse TopK SAE then decodes from its k
    selected rows (1.44x faster at d_sae 16384, the same at 3072; BUILD_NOTES.md, "Performance")."""
    inputs, targets = batch if isinstance(batch, tuple) else (batch, None)
    out = sae.forward(params, normalization.normalize(inputs, normalization.input_scale(norm_scale)), train=False)
    x = normalization.normalize(inputs if targets is None else targets, normalization.target_scale(norm_scale))
    z, x_hat = out.z, out.x_hat
    counted = jnp.ones(x.shape[0], bool) if rows is None else jnp.arange(x.shape[0]) < rows
    weight = counted.astype(jnp.float32)  # [B]
    fired = ((z != 0) & counted[:, None]).astype(jnp.float32)
    return {
        # weighted sums as elementwise products: a TPU's default matmul precision would round them
        "rows": jnp.sum(weight),
        "sq_err": jnp.sum(weight * jnp.sum(jnp.square(x - x_hat), axis=-1)),
        "sum_x": jnp.sum(weight[:, None] * x, axis=0),
        "sq_x": jnp.sum(weight * jnp.sum(jnp.square(x), axis=-1)),
        "l0": jnp.sum(fired),
        "cos_sim": jnp.sum(weight * metrics.row_cosine_similarities(x, x_hat)),
        "fired": jnp.sum(fired, axis=0),
    }


def combine_evaluation(sums: list[dict], dense_above: float = 0.1) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, density [d_sae]) of all rows behind `sums` (`evaluation_sums` of each batch, as
    numpy): rows, l0, fvu (Σ‖x − x̂‖² / Σ‖x − mean‖², the mean over all rows), mse (per row),
    cos_sim, dead_fraction (latents that fired on none of the rows) and dense_fraction (latents that
    fired on more than `dense_above` of them)."""
    total = {key: np.sum([np.asarray(s[key], np.float64) for s in sums], axis=0) for key in sums[0]}
    n = float(total["rows"])
    variance = float(total["sq_x"] - np.sum(np.square(total["sum_x"])) / n)
    density = total["fired"] / n
    return {
        "rows": n,
        "l0": float(total["l0"] / n),
        "fvu": float(total["sq_err"] / variance) if variance > 0 else float("inf"),
        "mse": float(total["sq_err"] / n),
        "cos_sim": float(total["cos_sim"] / n),
        "dead_fraction": float(np.mean(density == 0)),
        "dense_fraction": float(np.mean(density > dense_above)),
    }, density


def compile_sums(sae: SAE, abstract_params, batch_size: int):
    """`evaluation_sums` of `sae` compiled ahead of time for params shaped like `abstract_params` and
    float32 batches [batch_size, d_in] (a transcoder's: ([batch_size, d_in], [batch_size, d_out]))
    (what `measure` calls), e.g. on a worker thread while training."""
    spec = jax.ShapeDtypeStruct
    batch = spec((batch_size, sae.d_in), jnp.float32)
    if sae.transcoder:
        batch = (batch, spec((batch_size, sae.d_out), jnp.float32))
    norm_scale = spec(np.shape(normalization.unit_scale(sae)), jnp.float32)
    return jax.jit(functools.partial(evaluation_sums, sae)).lower(
        abstract_params, norm_scale, batch, spec((), jnp.int32)).compile()


def measure(config, source, sae: SAE, state, sums_of=None) -> tuple[dict, np.ndarray, str]:
    """Inference-mode metrics on up to `train.eval_rows` rows of the source's held-out split (see
    `combine_evaluation`; "rows" says how many), the latents' firing density [d_sae] on them,
    and which split they come from: "held-out", or "train" for a source without a held-out split
    (then far-future batches of its training stream are measured, with a warning).
    sums_of: `compile_sums`' result for this SAE and batch size (None: compiled here)."""
    wanted, batch_size = config.train.eval_rows, config.train.batch_size
    available = getattr(source, "heldout_rows", 0)
    split = "train" if available == 0 else "held-out"
    rows = wanted if available is None or split == "train" else min(wanted, available)
    if rows == 0:
        return {}, np.zeros(sae.d_sae), split
    if split == "train":
        writers.say(f"warning: data.source={source.name!r} has no held-out split here; the final metrics are "
                    "measured on batches of the training stream")

    def read(i):  # batch i of the split, whole (the rows past `rows` are not counted)
        if split == "train":
            return batches.read_batch(source, EVAL_STEP_OFFSET + i, batch_size, sae.d_in)
        return batches.read_heldout_batch(source, i, batch_size, sae.d_in)

    def padded(batch):  # a short last batch filled up with zero rows: every batch has one shape
        if isinstance(batch, tuple):  # a transcoder's (inputs, targets)
            return tuple(padded(part) for part in batch)
        batch = np.asarray(batch, np.float32)[:batch_size]  # as evaluation_sums would cast it
        return np.pad(batch, [(0, batch_size - batch.shape[0]), (0, 0)]) if batch.shape[0] < batch_size else batch

    sums_of = sums_of or jax.jit(functools.partial(evaluation_sums, sae))  # compiled once: [batch_size, d_in]
    norm_scale = jnp.asarray(state.norm_scale, jnp.float32)
    sums = [jax.device_get(sums_of(state.params, norm_scale, padded(read(i)),
                                   np.int32(min(batch_size, rows - i * batch_size))))
            for i in range(-(-rows // batch_size))]
    scalars, density = combine_evaluation(sums)
    return scalars, density, split


def prepare(run):
    """What `evaluate` needs compiled, built ahead (on a worker thread while the run trains)."""
    return compile_sums(run.sae, jax.eval_shape(run.sae.init, jax.random.key(0)), run.config.train.batch_size)


def evaluate(run, state, found: dict, prepared=None) -> dict:
    """The evaluator: `measure` on the run's source, plus "density" [d_sae] and "eval_split"; stops
    the run (SaejaxError, no export) when the SAE collapsed after the warm-up (`guards.collapse`).
    prepared: `prepare(run)`'s result, or None."""
    source, config = run.source, run.config
    per_process = getattr(source, "process_count", 1) > 1
    if per_process and not (getattr(source, "whole_heldout", False) and source.heldout_rows):
        source = data.make_source(config.data, config.seed, whole_batches=True, model=config.model)  # whole batches
    scalars, density, split = measure(config, source, run.sae, state, prepared)
    if scalars:
        of_point = f" of hook point {run.point}" if run.point else ""
        guards.check_evaluation_not_collapsed(scalars["fvu"], scalars["l0"],
                                              f"{scalars['rows']:.0f} {split} rows{of_point}", int(state.step), config)
    return {**scalars, "density": density, "eval_split": split}
