r"""Train an SAE from a config file; the command-line entry point.

    python experiments/train.py --workdir=DIR [--config=experiments/configs/NAME.py] [--config.FIELD=VALUE ...]

Without --config it runs experiments/configs/default.py. Running again with the same --workdir
resumes from the latest good checkpoint there. SIGTERM or Ctrl-C finishes the current step, saves a
checkpoint and exits 0 (a second Ctrl-C stops at once). Bad input ends with one `error: ...` line and
exit status 1.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import saejax
from saejax.errors import SaejaxError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the export.")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.", lock_config=True)
flags.mark_flag_as_required("workdir")


def parse_flags(argv):
    """absl's parser, with any flag or config-override error turned into one `error: ...` line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 brings it back
    try:
        summary = saejax.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    if summary.get("preempted"):
        return  # stopped by SIGTERM/SIGINT after saving a checkpoint: exit status 0
    print("final:", ", ".join(f"{k}={v:.4g}" for k, v in summary["eval"].items()), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
