"""Runs over several processes: TPU pod hosts, GPU cluster nodes, or local CPU processes.

One process per host (or, for tests, several on one machine) runs the same command. Before JAX
touches a device, `initialize` joins them through ``jax.distributed.initialize``:

- explicitly: a coordinator ``host:port`` (process 0's machine), the number of processes and this
  process's id, from experiments/train.py's ``--coordinator_address/--num_processes/--process_id``
  flags or the ``SAEJAX_COORDINATOR_ADDRESS/SAEJAX_NUM_PROCESSES/SAEJAX_PROCESS_ID`` environment
  variables (which `saejax.launch` sets);
- or automatically (``--distributed``): ``jax.distributed.initialize()`` with no arguments, which
  finds its peers on Cloud TPU pods, SLURM and Open MPI.

Afterwards ``jax.devices()`` lists every process's devices and the mesh spans them all. Each
process reads and feeds only its own rows of every batch; process 0 alone writes metrics, plots,
the summary and the export; Orbax writes checkpoints from all of them. On CPU, cross-process
collectives go through gloo.
"""

import os

import jax

from saejax.errors import ConfigError

ENV_COORDINATOR = "SAEJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SAEJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SAEJAX_PROCESS_ID"
ENV_HEARTBEAT = "SAEJAX_HEARTBEAT_TIMEOUT_S"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Join the other processes of a multi-process run; returns whether it did.

    Arguments left None come from the SAEJAX_* environment variables. With none of them set and
    `auto` False this is a single-process run and nothing happens. ConfigError for an incomplete
    or inconsistent set.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    if not auto and all(v is None for v in given.values()):
        return False
    if not auto:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise ConfigError(f"a multi-process run needs {', '.join(missing)} as well (or "
                              f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}), or --distributed "
                              "to detect them on a TPU pod or a SLURM / Open MPI cluster")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
    heartbeat = _env_int(ENV_HEARTBEAT)
    options = {"heartbeat_timeout_seconds": heartbeat} if heartbeat else {}
    if auto:
        jax.distributed.initialize(**options)
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **options)
    return True


def is_main_process() -> bool:
    """Whether this process writes the run's files (metrics, plots, summary, export): process 0."""
    return jax.process_index() == 0


def row_range(batch_size: int) -> tuple[int, int]:
    """This process's rows [lo, hi) of every global batch of `batch_size`: [p·B/P, (p+1)·B/P)."""
    from saejax.data import process_rows  # noqa: PLC0415

    return process_rows(batch_size, jax.process_index(), jax.process_count())
