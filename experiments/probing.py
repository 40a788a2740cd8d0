r"""Sparse probing of a trained SAE on a text model: which language a snippet of source code is in
(windows of the files of the installed packages, `saejax.snippets`), read by k-sparse probes on the
SAE's mean-pooled latents (k = 1, 2, 5, 20) beside a dense probe on the model's mean-pooled activations.

    python experiments/probing.py --workdir=DIR [--per_language=200] [--point=3/resid_post]

DIR is a run made with a `model.*` config; writes DIR/probing/snippets.json (per language and k: the
probe's accuracy and F1 on the held-out half) and prints the means.
"""

import json
import sys
import time
from pathlib import Path

from absl import app, flags

import saejax
from saejax import analysis, cli, snippets, text_probing
from saejax.errors import SaejaxError
from saejax.models.loading import model_of_run

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained on a text model's activations.")
_PER_LANGUAGE = flags.DEFINE_integer("per_language", 200, "Snippets of each language.", lower_bound=10)
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the SAE to probe (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    start = time.perf_counter()
    try:
        params, config = saejax.load(_WORKDIR.value, point=_POINT.value or None)
        m, model = config.model, model_of_run(config, _WORKDIR.value, "probes on texts")
        texts, labels, names = snippets.snippets(per_language=_PER_LANGUAGE.value)
        x, z = text_probing.pooled(model, texts, m.layer, m.site, lambda rows: analysis.encode(params, config, rows),
                                   context_length=m.context_length)
        report = {"task": "language of a source snippet", "languages": names, "texts": len(texts),
                  **text_probing.sparse_probing(x, z, labels, names), "seconds": 0.0}
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    report["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(_WORKDIR.value) / "probing" / _POINT.value
    out.mkdir(parents=True, exist_ok=True)
    (out / "snippets.json").write_text(json.dumps(report, indent=1) + "\n")
    sparse = ", ".join(f"k={k} {accuracy:.3f}" for k, accuracy in report["sparse_accuracy"].items())
    print(f"sparse probing of {m.name} layer {m.layer} {m.site} on {len(texts)} snippets ({', '.join(names)}): "
          f"dense probe {report['dense_accuracy']:.3f}; SAE latents {sparse}; {report['seconds']} s; "
          f"{out / 'snippets.json'}")


if __name__ == "__main__":
    app.run(main)
