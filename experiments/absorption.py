r"""Feature absorption of a trained SAE on a text model, on the first-letter task (Chanin et al. 2024,
as SAEBench measures it): for each letter a probe on the model's activations at words in a spelling
prompt, the SAE latents standing for the letter (k-sparse probing), and how often other latents
absorb it.

    python experiments/absorption.py --workdir=DIR [--words=2000] [--point=3/resid_post]

DIR is a run made with a `model.*` config (experiments/configs/minilm.py, gemma3.py, any
data.source); writes DIR/absorption/first_letter.json (per letter: full absorption rate, mean
absorption fraction, main latents, probe F1, k-sparse probe F1 for k = 1 .. 10; the means over the
letters whose probe reaches F1 0.6) and first_letter.png, and prints the means.
"""

import sys
from pathlib import Path

from absl import app, flags

import saejax
from saejax import analysis, cli, first_letter
from saejax.errors import ConfigError, SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a text model's activations.")
_WORDS = flags.DEFINE_integer("words", 2000, "Words of the vocabulary to prompt with.", lower_bound=52)
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the SAE to measure (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    try:
        params, config = saejax.load(_WORKDIR.value, point=_POINT.value or None)
        m = config.model
        if m.get("target_site"):
            raise ConfigError(f"--workdir={_WORKDIR.value} holds a transcoder (model.target_site="
                              f"{m.target_site!r}); absorption is measured on an SAE of one hook point")
        model = model_of_run(config, _WORKDIR.value, "first-letter prompts")
        report = first_letter.measure_sae(model, m.layer, m.site, lambda x: analysis.encode(params, config, x),
                                          analysis.decoder_rows(params, config), n_words=_WORDS.value)
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    path = first_letter.save(report, Path(_WORKDIR.value) / "absorption" / _POINT.value)
    print(f"first-letter absorption of {m.name} layer {m.layer} {m.site}: {first_letter.summary(report)}; {path}")


if __name__ == "__main__":
    app.run(main)
