r"""Train an SAE from a config file; the command-line entry point.

    python experiments/train.py --workdir=DIR [--config=experiments/configs/NAME.py] [--config.FIELD=VALUE ...]

Without --config it runs experiments/configs/default.py. Running again with the same --workdir
resumes from the latest good checkpoint there. SIGTERM or Ctrl-C finishes the current step, saves a
checkpoint and exits 0 (a second Ctrl-C stops at once). Bad input ends with one `error: ...` line and
exit status 1. On a CPU-only Linux host the process keeps freed heap memory for reuse
(`saejax.kernels.cpu.tune_malloc`; SAEJAX_NO_MALLOC_TUNING=1 turns it off).

Several processes (one per host of a TPU pod or GPU cluster, or `python -m saejax.launch` on one
machine) run the same command with --distributed (detects the peers on TPU pods, SLURM, Open MPI)
or --coordinator_address/--num_processes/--process_id, and parallel.strategy=mesh or pmap.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import saejax
from saejax import distributed, runtime
from saejax.kernels import cpu
from saejax.errors import SaejaxError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the export.")


def define_config_flag():
    """--config and its --config.FIELD overrides. ml_collections reads the overrides from sys.argv
    while defining the flag when --config is not given, so an unknown field may fail here."""
    try:
        return config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.", lock_config=True)
    except (KeyError, AttributeError) as e:
        sys.exit(unknown_field_error(e, sys.argv[1:]))


def unknown_field_error(e: KeyError | AttributeError, argv: list[str]) -> str:
    """The `error:` line for a --config.FIELD override naming a field the config does not have."""
    field = str(e).strip("\"' ")
    given = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
    named = next((arg for arg in given if arg.split(".")[-1] == field), "--config." + field)
    return f"error: {named}: the config has no field {field!r} (see saejax/config.py for the fields)"


_CONFIG = define_config_flag()
flags.mark_flag_as_required("workdir")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-process run: let jax.distributed.initialize() "
                                 "find the other processes (Cloud TPU pods, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process run: process 0's host:port "
                                   "(default: $SAEJAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes "
                                      "(default: $SAEJAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process run: this process's id in "
                                   "[0, num_processes) (default: $SAEJAX_PROCESS_ID).")


def parse_flags(argv):
    """absl's parser, with any flag or config-override error turned into one `error: ...` line."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:
        sys.exit(unknown_field_error(e, argv[1:]))
    except (flags.Error, TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 brings it back
    cpu.tune_malloc()  # reuse freed scratch: faster CPU steps (SAEJAX_NO_MALLOC_TUNING=1: off)
    runtime.enable_compilation_cache()  # a rerun loads its programs (SAEJAX_COMPILATION_CACHE=off: off)
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
        summary = saejax.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    if summary.get("preempted"):
        return  # stopped by SIGTERM/SIGINT after saving a checkpoint: exit status 0
    if "eval" not in summary:
        return  # a process other than 0 of a multi-process run: process 0 reports
    shown = {"split": summary["eval_split"], **summary["eval"]} if summary["eval"] else {}
    print("final:", ", ".join(f"{k}={_number(v)}" for k, v in shown.items()), flush=True)


def _number(value) -> str:
    """A metric for the `final:` line: whole numbers (row counts) as they are, others to 4 digits."""
    if isinstance(value, str) or float(value).is_integer() and abs(value) >= 1:
        return str(value if isinstance(value, str) else int(value))
    return f"{value:.4g}"


if __name__ == "__main__":
    runtime.run_then_exit(app.run, main, flags_parser=parse_flags)
