r"""Steer a causal LM with an SAE latent: add a multiple of the latent's decoder row at the SAE's hook
point, at every position, and show what it does to the next-token distribution and to greedy text.

    python experiments/steer.py --workdir=DIR --latent=123 [--strengths=-4,4] [--prompt="The weather"]

DIR is a run on a causal LM (experiments/configs/gemma3.py); a strength is the activation the latent is
given, in the units the SAE was trained in (its decoder row acts on raw activations). Prints, per
strength, the KL of the steered next-token distribution from the clean one over the held-out texts,
the tokens whose probability rises most, and the clean and steered continuations of --prompt.
"""

import itertools
import sys

import numpy as np
from absl import app, flags

import saejax
from saejax import analysis, cli, harvest, steering
from saejax.errors import ConfigError, SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a causal LM's activations.")
_LATENT = flags.DEFINE_integer("latent", None, "The latent whose decoder row steers.", lower_bound=0)
_STRENGTHS = flags.DEFINE_list("strengths", ["-4", "4"],
                               "Multiples of the decoder row to add (the latent's activation).")
_PROMPT = flags.DEFINE_string("prompt", "The", "Text to continue, clean and steered.")
_TOKENS = flags.DEFINE_integer("tokens", 16, "Tokens to generate.", lower_bound=1)
_TEXTS = flags.DEFINE_integer("texts", 32, "Held-out texts the next-token shift is averaged over.", lower_bound=1)
flags.mark_flags_as_required(["workdir", "latent"])


def main(argv):
    cli.quiet_tool(argv)
    try:
        params, config = saejax.load(_WORKDIR.value)
        m, model = config.model, model_of_run(config, _WORKDIR.value, "steering runs")
        rows = analysis.decoder_rows(params, config)
        if _LATENT.value >= rows.shape[0]:
            raise ConfigError(f"--latent={_LATENT.value}: the SAE has {rows.shape[0]} latents")
        strengths = [float(s) for s in _STRENGTHS.value]
        direction = rows[_LATENT.value].astype(np.float32)
        texts = list(itertools.islice(harvest.run_texts(m, held_out=True), _TEXTS.value))
        shift = steering.next_token_shift(model, texts, m.layer, m.site, direction, strengths,
                                          context_length=m.context_length)
        print(f"latent {_LATENT.value} of {m.name} layer {m.layer} {m.site}: decoder row norm "
              f"{np.linalg.norm(direction):.3g}")
        for strength, found in shift.items():
            promoted = ", ".join(f"{token!r} {change:+.3f}" for token, change in found["promoted"][:8])
            print(f"strength {strength:+g}: KL {found['kl']:.3f} nats; promoted {promoted}")
        for strength in [0.0, *strengths]:
            text = steering.generate(model, _PROMPT.value, m.layer, m.site, direction, strength, _TOKENS.value,
                                     m.context_length)
            print(f"{strength:+g}: {text!r}")
    except (SaejaxError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
