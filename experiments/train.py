r"""Train an SAE from a config file; the command-line entry point.

    python experiments/train.py --workdir=DIR [--config=experiments/configs/NAME.py] [--config.FIELD=VALUE ...]

    python experiments/train.py --config.help [--config=...]         # every field, its value and doc
    python experiments/train.py --workdir=DIR --dry_run [...]         # the resolved config and the plan

Without --config it runs experiments/configs/default.py. Running again with the same --workdir
resumes from the latest good checkpoint there. SIGTERM or Ctrl-C finishes the current step, saves a
checkpoint and exits 0; a second Ctrl-C (or one outside training) stops at once with exit status 130.
Bad input (a flag, config file, field or value) ends with one `error: ...` line and exit status 1.
On a CPU-only Linux host the process keeps freed heap memory for reuse
(`saejax.kernels.cpu.tune_malloc`; SAEJAX_NO_MALLOC_TUNING=1 turns it off).

Several processes (one per host of a TPU pod or GPU cluster, or `python -m saejax.launch` on one
machine) run the same command with --distributed (detects the peers on TPU pods, SLURM, Open MPI)
or --coordinator_address/--num_processes/--process_id, and parallel.strategy=mesh or pmap.
"""

import os
import sys

from saejax import runtime

# Ctrl-C outside the training loop (while importing, compiling, evaluating) and a second Ctrl-C inside
# it (the first saves and stops) end the process at once: one line, exit status 130
runtime.exit_at_once_on_interrupt("error: interrupted (Ctrl-C): stopped at once; checkpoints saved before are "
                                  "kept (run the same command to resume)")

from absl import app, flags, logging  # noqa: E402 (after the Ctrl-C handler: these imports take seconds)
from ml_collections import config_flags  # noqa: E402

import saejax  # noqa: E402
from saejax import cli, distributed  # noqa: E402
from saejax.kernels import cpu  # noqa: E402
from saejax.errors import SaejaxError  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the export.")
# No default here: ml_collections would load a default config file, and read the --config.FIELD
# overrides from sys.argv, while defining the flag, outside parse_flags' error handling;
# parse_flags inserts --config=experiments/configs/default.py when the command line names none.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, PATH[:VARIANT] (default: experiments/configs/default.py). "
    "--config.FIELD=VALUE overrides a field; --config.help lists every field with its value and doc.",
    lock_config=True)
flags.mark_flag_as_required("workdir")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config and what the run would do (data rows, "
                             "d_in, parameters, memory, steps, outputs), then exit without training or writing.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Multi-process run: let jax.distributed.initialize() "
                                 "find the other processes (Cloud TPU pods, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process run: process 0's host:port "
                                   "(default: $SAEJAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process run: how many processes "
                                      "(default: $SAEJAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process run: this process's id in "
                                   "[0, num_processes) (default: $SAEJAX_PROCESS_ID).")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser behind `saejax.cli`'s checks: any bad flag, config file or override ends the
    process with one `error: ...` line (exit status 1); --config.help prints the fields and exits 0."""
    try:
        argv, config = cli.prepare(argv, _DEFAULT_CONFIG)
        if cli.asks_for_help(argv):
            print(cli.field_table(config, cli.config_spec(argv)))
            sys.exit(0)
        sys.argv[:] = argv  # ml_collections reads the overrides from sys.argv
        positional = flags.FLAGS(argv)
    except SaejaxError as e:
        sys.exit(f"error: {e}")
    except (flags.Error, TypeError, ValueError, KeyError, AttributeError, OSError) as e:
        sys.exit(f"error: {cli.first_line(e)}")
    if len(positional) > 1:
        sys.exit(f"error: unexpected argument {positional[1]!r}: every option is a flag, --name=value "
                 "(--helpfull lists them)")
    return positional


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; -v 0 brings it back
    if _DRY_RUN.value:
        from saejax import plan  # noqa: PLC0415 (builds the run's parts: only for a dry run)

        try:
            print(plan.describe(_CONFIG.value, _WORKDIR.value), flush=True)
        except SaejaxError as e:
            sys.exit(f"error: {e}")
        return
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
