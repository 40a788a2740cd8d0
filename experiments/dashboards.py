r"""Feature dashboards for a trained SAE on a text model: one HTML page per latent (top-activating
contexts, activation histogram, promoted tokens for causal LMs) and an index.

    python experiments/dashboards.py --workdir=DIR [--latents=32] [--texts=300] [--point=3/resid_post]

DIR is a run made with a `model.*` config (experiments/configs/minilm.py, gemma3.py); the pages are
built on its held-out texts and written to DIR/dashboards/ (open DIR/dashboards/index.html). For a
run on several hook points (model.hookpoints), --point names the SAE; its pages go to
DIR/dashboards/POINT/. The index also shows the run's first-letter absorption and sparse-probing
reports (DIR/absorption, DIR/probing) when it has them.
"""

import sys
from pathlib import Path

from absl import app, flags

import saejax
from saejax import cli, dashboards, first_letter, harvest, text_probing
from saejax.errors import SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a text model's activations.")
_LATENTS = flags.DEFINE_integer("latents", 32, "Pages for this many of the most frequently firing latents.", lower_bound=1)
_TEXTS = flags.DEFINE_integer("texts", 300, "Held-out texts to look for top-activating contexts in.", lower_bound=1)
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the SAE to show (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    try:
        params, config = saejax.load(_WORKDIR.value, point=_POINT.value or None)
        m, model = config.model, model_of_run(config, _WORKDIR.value, "dashboards")
        sae = saejax.sae_from_config(config.sae, model.d_model)
        index = dashboards.write(model, sae, params, harvest.run_texts(m, held_out=True), layer=m.layer, site=m.site,
                                 out_dir=Path(_WORKDIR.value) / "dashboards" / _POINT.value, n_latents=_LATENTS.value,
                                 max_texts=_TEXTS.value, context_length=m.context_length,
                                 absorption=first_letter.load_report(Path(_WORKDIR.value) / "absorption"
                                                                     / _POINT.value),
                                 probing=text_probing.load_reports(Path(_WORKDIR.value) / "probing" / _POINT.value))
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    print(f"dashboards: {index}")


if __name__ == "__main__":
    app.run(main)
