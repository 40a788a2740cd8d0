r"""Sparse probing of a trained SAE on a text model: which language a snippet of source code is in
(windows of the files of the installed packages, `saejax.snippets`), read by k-sparse probes on the
SAE's mean-pooled latents (k = 1, 2, 5, 20) beside a dense probe on the model's mean-pooled activations.

    python experiments/probing.py --workdir=DIR [--per_language=200] [--point=3/resid_post]

DIR is a run made with a `model.*` config; writes DIR/probing/snippets.json (per language and k: the
probe's accuracy and F1 on the held-out half) and prints the means.
"""

import sys
from pathlib import Path

from absl import app, flags

import saejax
from saejax import analysis, cli, text_probing
from saejax.errors import SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a text model's activations.")
_PER_LANGUAGE = flags.DEFINE_integer("per_language", 200, "Snippets of each language.", lower_bound=10)
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the SAE to probe (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    try:
        params, config = saejax.load(_WORKDIR.value, point=_POINT.value or None)
        m, model = config.model, model_of_run(config, _WORKDIR.value, "probes on texts")
        report = text_probing.snippet_report(model, m.layer, m.site, lambda rows: analysis.encode(params, config, rows),
                                             per_language=_PER_LANGUAGE.value, context_length=m.context_length)
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    path = text_probing.save(report, Path(_WORKDIR.value) / "probing" / _POINT.value)
    sparse = ", ".join(f"k={k} {accuracy:.3f}" for k, accuracy in report["sparse_accuracy"].items())
    print(f"sparse probing of {m.name} layer {m.layer} {m.site} on {report['texts']} snippets "
          f"({', '.join(report['languages'])}): dense probe {report['dense_accuracy']:.3f}; SAE latents {sparse}; "
          f"{report['seconds']} s; {path}")

if __name__ == "__main__":
    app.run(main)
