r"""Sparse probing of a trained SAE on a text model, on labelled texts that install from the package
registries (`saejax.labelled_texts`): the programming language of a window of source code, the natural
language of a sentence (Django's translations), the sentiment of a word (the VADER lexicon). Each is
read by k-sparse probes on the SAE's mean-pooled latents (k = 1, 2, 5, 20) beside a dense probe on the
model's mean-pooled activations.

    python experiments/probing.py --workdir=DIR [--tasks=auto] [--per_class=200] [--point=3/resid_post]

DIR is a run made with a `model.*` config; `--tasks=auto` takes every task whose texts are installed
(`pip install -e ".[probing]"` brings django and vaderSentiment). Writes DIR/probing/TASK.json (per
class and k: the probe's accuracy and F1 on the held-out half) and prints each task's means.
"""

import sys
from pathlib import Path

from absl import app, flags

import saejax
from saejax import analysis, cli, text_probing
from saejax.errors import SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a text model's activations.")
_TASKS = flags.DEFINE_string("tasks", "auto", "Probing tasks, comma-separated (code, language, sentiment); auto = "
                             "every task whose texts are installed.")
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Texts of each class.", lower_bound=10)
flags.DEFINE_alias("per_language", "per_class")
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the SAE to probe (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    try:
        tasks = text_probing.task_names(_TASKS.value)
        params, config = saejax.load(_WORKDIR.value, point=_POINT.value or None)
        m, model = config.model, model_of_run(config, _WORKDIR.value, "probes on texts")
        def encode(rows):
            return analysis.encode(params, config, rows)

        for task in tasks:
            report = text_probing.task_report(model, m.layer, m.site, encode, task, per_class=_PER_CLASS.value,
                                              context_length=m.context_length)
            path = text_probing.save(report, Path(_WORKDIR.value) / "probing" / _POINT.value)
            sparse = ", ".join(f"k={k} {accuracy:.3f}" for k, accuracy in report["sparse_accuracy"].items())
            print(f"sparse probing of {m.name} layer {m.layer} {m.site}, {report['description']}, on {report['texts']} "
                  f"texts ({', '.join(report['class_names'])}): dense probe {report['dense_accuracy']:.3f}; SAE "
                  f"latents {sparse}; {report['seconds']} s; {path}", flush=True)
    except SaejaxError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
