"""Evaluation by splicing: run the model with an SAE's reconstruction in place of the activations
at its hook point, and measure how much of the model's behaviour survives.

    params, config = saejax.load(workdir)              # params act on raw activations
    report = splice.evaluate(model, sae, params, texts, layer=3, site="resid_post")

For every batch of texts three forward passes run: clean, spliced (x → x̂ at the real, non-special
tokens; padding and [CLS]/[SEP]/BOS keep their activations, as they were left out of training), and
zero-ablated (x → 0 at the same positions). Reported, over all texts:

- encoders (BERT): the mean cosine similarity of the mean-pooled sentence embedding with the clean
  one, spliced (cos_sim) and zero-ablated (ablation_cos_sim);
- causal LMs (Gemma-3): next-token cross-entropy clean, spliced and zero-ablated (nats per token),
  the fraction of CE loss recovered, (CE_ablated − CE_spliced) / (CE_ablated − CE_clean), and the
  KL of the spliced next-token distribution from the clean one;
- every model: L0, FVU and the dead fraction of the SAE on the same tokens.
"""

from collections.abc import Iterable
from itertools import islice

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import ConfigError, DataError
from saejax.models.hooks import check_points
from saejax.models.loading import padded_batch


def check_width(sae, model, layer: int, site: str) -> None:
    """ConfigError when the SAE's d_in is not the hook point's width."""
    if sae.d_in != model.d_model:
        raise ConfigError(f"the SAE reads d_in={sae.d_in}, but {model.name}'s {site} at layer {layer} has width "
                          f"{model.d_model}; train the SAE on this model's activations")


def _cosine(a, b):
    return jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)


def _encoder_behaviour(clean, spliced, ablated, ids, mask) -> dict:
    """Per-text sums for an encoder: cosine of the mean-pooled embedding with the clean one."""
    from saejax.models import bert  # noqa: PLC0415

    pooled = [bert.mean_pool(h, mask) for h in (clean, spliced, ablated)]
    return {"cos_sim": jnp.sum(_cosine(pooled[0], pooled[1])), "ablation_cos_sim": jnp.sum(_cosine(pooled[0], pooled[2])),
            "units": jnp.asarray(ids.shape[0], jnp.float32)}


def _causal_behaviour(clean, spliced, ablated, ids, mask) -> dict:
    """Per-position sums for a causal LM: next-token CE clean / spliced / zero-ablated, and the KL of
    the spliced next-token distribution from the clean one."""
    from saejax.models import gemma3  # noqa: PLC0415

    losses = [gemma3.token_losses(logits, ids, mask) for logits in (clean, spliced, ablated)]
    valid = losses[0][1]
    log_p = jax.nn.log_softmax(clean[:, :-1].astype(jnp.float32), -1)
    log_q = jax.nn.log_softmax(spliced[:, :-1].astype(jnp.float32), -1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)
    return {"ce_clean": jnp.sum(losses[0][0] * valid), "ce_spliced": jnp.sum(losses[1][0] * valid),
            "ce_ablated": jnp.sum(losses[2][0] * valid), "kl": jnp.sum(kl * valid),
            "units": jnp.sum(valid).astype(jnp.float32)}


def _summary(kind: str, sums: dict) -> dict[str, float]:
    if kind == "bert":
        return {"cos_sim": sums["cos_sim"] / sums["units"], "ablation_cos_sim": sums["ablation_cos_sim"] / sums["units"]}
    ce = {key: sums[key] / sums["units"] for key in ("ce_clean", "ce_spliced", "ce_ablated")}
    recovered = (ce["ce_ablated"] - ce["ce_spliced"]) / max(ce["ce_ablated"] - ce["ce_clean"], 1e-12)
    return {**ce, "ce_loss_recovered": recovered, "kl": sums["kl"] / sums["units"]}


def evaluate(model, sae, params, texts: Iterable[str], *, layer: int, site: str, context_length: int = 128,
             batch_size: int | None = None, max_texts: int = 1000, drop_special: bool = True) -> dict[str, float]:
    """The splice report (module docstring) of `sae` with `params` (acting on raw activations) at
    (layer, site) of `model` (a `saejax.models.loading.TextModel`), over at most `max_texts` texts
    (in batches of `batch_size`; default 32 texts for encoders, 4 for causal LMs, whose logits
    over a large vocabulary dominate memory)."""
    check_points([(layer, site)], model.n_layers)
    check_width(sae, model, layer, site)
    behaviour = {"bert": _encoder_behaviour, "causal": _causal_behaviour}.get(model.kind)
    if behaviour is None:
        raise ConfigError(f"splice evaluation does not know model kind {model.kind!r}")
    batch_size = batch_size or (32 if model.kind == "bert" else 4)

    @jax.jit
    def passes(model_params, params, ids, mask, keep):
        def replace(fn):
            def hook(at_layer, at_site, x):
                if (at_layer, at_site) != (layer, site):
                    return x
                return jnp.where(keep[..., None], fn(x), x)
            return hook

        def reconstruct(x):
            return sae.decode(params, sae.encode(params, x.reshape(-1, x.shape[-1]))).reshape(x.shape)

        clean, captured = model.apply(model_params, ids, mask, capture=[(layer, site)])
        spliced, _ = model.apply(model_params, ids, mask, hook=replace(reconstruct))
        ablated, _ = model.apply(model_params, ids, mask, hook=replace(jnp.zeros_like))
        x = captured[(layer, site)]
        z = sae.encode(params, x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
        return {"x": x, "x_hat": reconstruct(x), "z_active": z != 0,
                "behaviour": behaviour(clean, spliced, ablated, ids, mask)}

    sums: dict[str, float] = {"texts": 0, "tokens": 0, "active": 0.0, "err": 0.0}
    x_sum, x_sq, fired = np.zeros(model.d_model), 0.0, np.zeros(sae.d_sae, bool)
    texts = iter(texts)
    while batch := list(islice(texts, min(batch_size, max_texts - sums["texts"]))):
        ids, mask, keep = padded_batch(model, batch, context_length, drop_special)
        out = jax.device_get(passes(model.params, params, ids, mask, keep))
        x, x_hat = out["x"][keep].astype(np.float64), out["x_hat"][keep].astype(np.float64)
        for key, value in out["behaviour"].items():
            sums[key] = sums.get(key, 0.0) + float(value)
        sums["texts"] += len(batch)
        sums["tokens"] += int(keep.sum())
        sums["active"] += float(out["z_active"][keep].sum())
        sums["err"] += float(np.sum(np.square(x - x_hat)))
        x_sum += x.sum(0)
        x_sq += float(np.sum(np.square(x)))
        fired |= out["z_active"][keep].any(0)
    if sums["tokens"] == 0:
        raise DataError("the evaluation texts gave no tokens")
    n = sums["tokens"]
    variance = x_sq - float(np.sum(np.square(x_sum))) / n
    return {
        **_summary(model.kind, sums),
        "l0": sums["active"] / n,
        "fvu": sums["err"] / variance,
        "dead_fraction": float(np.mean(~fired)),
        "tokens": float(n),
        "texts": float(sums["texts"]),
    }
