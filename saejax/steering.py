"""Steering: a multiple of a direction (an SAE latent's decoder row) added to a causal LM's activations
at a hook point, at every position, and what it does to the next-token distribution and to text.

    direction = params["W_dec"][latent]                  # params on raw activations (saejax.load)
    shift = next_token_shift(model, texts, layer=6, site="resid_post", direction=direction, strengths=(-8, 8))
    shift[8]["promoted"]                                 # [(token, mean change of its probability)], top first
    text = generate(model, "The weather", layer=6, site="resid_post", direction=direction, strength=8)

`next_token_shift` reads each text's next-token distribution after its last token, clean and steered:
per strength, the mean KL(steered || clean) in nats, the tokens whose probability rises most (mean
over the texts) and those that fall most, and the probability change of `target` tokens if given.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from saejax.errors import ConfigError
from saejax.models.hooks import check_points
from saejax.models.loading import padded_batch, padded_rows


def _check(model, layer: int, site: str, direction) -> jnp.ndarray:
    """The direction as float32 [d_model], after checking the model is a causal LM and the hook point exists."""
    if model.kind != "causal":
        raise ConfigError(f"steering reads a next-token distribution: {model.name} is a {model.kind} model, not a "
                          "causal LM (use gemma3-270m or a Gemma-3 directory)")
    check_points([(layer, site)], model.n_layers)
    direction = jnp.asarray(direction, jnp.float32)
    if direction.shape != (model.d_model,):
        raise ConfigError(f"a steering direction has shape {tuple(direction.shape)}; {model.name}'s activations "
                          f"have width {model.d_model}")
    return direction


@functools.partial(jax.jit, static_argnames=("apply", "layer", "site"))
def _last_log_probs(params, ids, mask, direction, strength, apply, layer: int, site: str):
    """Log-probabilities of the next token after each row's last real token, float32 [B, vocab], with
    strength·direction added at (layer, site) at every position."""
    def hook(at_layer, at_site, x):
        return x + strength * direction if (at_layer, at_site) == (layer, site) else x

    logits, _ = apply(params, ids, mask, hook=hook)
    last = jnp.sum(mask, axis=1) - 1
    return jax.nn.log_softmax(logits[jnp.arange(ids.shape[0]), last].astype(jnp.float32), axis=-1)


def log_probs(model, texts: list[str], layer: int, site: str, direction, strength: float,
              context_length: int = 128) -> np.ndarray:
    """float32 [len(texts), vocab]: each text's next-token log-probabilities, steered by strength·direction."""
    direction = _check(model, layer, site, direction)
    ids, mask, _ = padded_batch(model, texts, context_length, drop_special=False)
    return np.asarray(_last_log_probs(model.params, ids, mask, direction, jnp.float32(strength), model.apply,
                                      layer, site))


def next_token_shift(model, texts: list[str], layer: int, site: str, direction, strengths=(-8.0, 8.0), top: int = 10,
                     target: list[int] | None = None, context_length: int = 128, batch_size: int = 4) -> dict:
    """{strength: {"kl", "promoted": [(token, Δp)], "suppressed": [(token, Δp)], "target": [Δp of each target id]}}
    (module docstring), over `texts` in batches of `batch_size`."""
    def over_texts(strength):
        return np.concatenate([log_probs(model, texts[i:i + batch_size], layer, site, direction, strength,
                                         context_length) for i in range(0, len(texts), batch_size)])

    clean = over_texts(0.0)
    report = {}
    for strength in strengths:
        steered = over_texts(strength)
        change = (np.exp(steered) - np.exp(clean)).mean(0)
        order = np.argsort(-change)
        report[float(strength)] = {
            "kl": float(np.mean(np.sum(np.exp(steered) * (steered - clean), axis=-1))),
            "promoted": list(zip(model.token_strings(order[:top]), change[order[:top]].tolist())),
            "suppressed": list(zip(model.token_strings(order[::-1][:top]), change[order[::-1][:top]].tolist())),
            "target": [float(change[t]) for t in (target or [])],
        }
    return report


def generate(model, prompt: str, layer: int, site: str, direction, strength: float, n_tokens: int = 20,
             context_length: int = 128) -> str:
    """`prompt` continued greedily by `n_tokens` tokens, steered by strength·direction (0: the clean text)."""
    direction = _check(model, layer, site, direction)
    tokens, mask = model.tokenize([prompt], context_length)
    ids, new = [int(t) for t in tokens[0][mask[0] > 0]], []
    for _ in range(n_tokens):
        if len(ids) >= context_length:
            break
        row = np.asarray([ids], np.int32)
        padded_ids, mask, _ = padded_rows(model, row, np.ones_like(row), context_length, drop_special=False)
        step = _last_log_probs(model.params, padded_ids, mask, direction, jnp.float32(strength), model.apply,
                               layer, site)
        token = int(np.argmax(np.asarray(step)[0]))
        ids.append(token)
        new.append(token)
    return prompt + "".join(model.token_strings(new))

