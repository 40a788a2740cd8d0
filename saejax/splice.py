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

A transcoder (``target_site``: it reads `site` and reconstructs `target_site` of the same layer, e.g.
mlp_in -> mlp_out) is spliced in the same way at its target: in one forward pass the activations at
`site` are read as the pass computes them and those at `target_site` replaced by the transcoder's
reconstruction from them (zero-ablated: replaced by zeros); its FVU is the target's. For an MLP
transcoder this replaces the MLP's output by the transcoder's.
"""

from collections.abc import Iterable
from itertools import islice

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import ConfigError, DataError
from saejax.models.hooks import check_points, check_transcoder_sites
from saejax.models.loading import padded_batch


def check_width(sae, model, layer: int, site: str, target_site: str | None = None) -> None:
    """ConfigError when the SAE's d_in (a transcoder's d_in or d_out) is not the hook point's width."""
    widths = [("reads d_in", sae.d_in, site)] + ([("writes d_out", sae.d_out, target_site)] if target_site else [])
    for what, width, at in widths:
        if width != model.d_model:
            raise ConfigError(f"the SAE {what}={width}, but {model.name}'s {at} at layer {layer} has width "
                              f"{model.d_model}; train the SAE on this model's activations")


def _points(model, sae, layer: int, site: str, target_site: str | None) -> str:
    """The hook point the splice replaces (target_site for a transcoder, else site), after checking
    the points, the SAE's widths, and that a transcoder is spliced as one (and an SAE as one)."""
    check_points([(layer, site)] + ([(layer, target_site)] if target_site else []), model.n_layers)
    if target_site:
        check_transcoder_sites(site, target_site)
    if bool(target_site) != bool(getattr(sae, "transcoder", False)):
        raise ConfigError("a transcoder is spliced with its target site (model.target_site), an SAE without one")
    check_width(sae, model, layer, site, target_site)
    return target_site or site


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
             batch_size: int | None = None, max_texts: int = 1000, drop_special: bool = True,
             target_site: str | None = None) -> dict[str, float]:
    """The splice report (module docstring) of `sae` with `params` (acting on raw activations) at
    (layer, site) of `model` (a `saejax.models.loading.TextModel`), over at most `max_texts` texts
    (in batches of `batch_size`; default 32 texts for encoders, 4 for causal LMs, whose logits
    over a large vocabulary dominate memory). A transcoder reads (layer, site) and replaces
    (layer, `target_site`)."""
    out_site = _points(model, sae, layer, site, target_site)
    behaviour = {"bert": _encoder_behaviour, "causal": _causal_behaviour}.get(model.kind)
    if behaviour is None:
        raise ConfigError(f"splice evaluation does not know model kind {model.kind!r}")
    batch_size = batch_size or (32 if model.kind == "bert" else 4)

    @jax.jit
    def passes(model_params, params, ids, mask, keep):
        def replace(fn):
            """A hook replacing (layer, out_site) at the kept tokens by fn(activations at (layer, site),
            activations at (layer, out_site)); site's are read as this pass computes them."""
            read = {}

            def hook(at_layer, at_site, x):
                if at_layer != layer:
                    return x
                if at_site == site:
                    read["input"] = x
                return jnp.where(keep[..., None], fn(read["input"], x), x) if at_site == out_site else x
            return hook

        def reconstruct(x):
            rows = x.reshape(-1, x.shape[-1])
            if target_site:  # the whole forward: a skip transcoder's skip term reads x
                return sae.forward(params, rows, train=False).x_hat.reshape(*x.shape[:-1], -1)
            return sae.decode(params, sae.encode(params, rows)).reshape(x.shape)

        clean, captured = model.apply(model_params, ids, mask, capture=[(layer, site), (layer, out_site)])
        spliced, _ = model.apply(model_params, ids, mask, hook=replace(lambda x, _: reconstruct(x)))
        ablated, _ = model.apply(model_params, ids, mask, hook=replace(lambda _, y: jnp.zeros_like(y)))
        x = captured[(layer, site)]
        z = sae.encode(params, x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
        return {"x": captured[(layer, out_site)], "x_hat": reconstruct(x), "z_active": z != 0,
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
