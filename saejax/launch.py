r"""Run N cooperating processes on this machine: a multi-host run in miniature.

    python -m saejax.launch --processes=2 --devices_per_process=4 -- \
        experiments/train.py --workdir=/tmp/run --config.parallel.strategy=mesh

starts the command (a ``.py`` script runs under this Python) once per process with
``SAEJAX_COORDINATOR_ADDRESS`` (localhost, a free port), ``SAEJAX_NUM_PROCESSES`` and
``SAEJAX_PROCESS_ID`` set, which `saejax.distributed.initialize` reads; with
``--devices_per_process=M`` each process gets M fake CPU devices (``XLA_FLAGS``) and CPU collectives
over gloo. Process 0's output passes through; the others' lines are prefixed with ``[p]`` (gloo's
connection messages are left out).

SIGTERM / SIGINT to the launcher go to every process (a run then saves a checkpoint and exits 0).
When a process fails, the others normally end with an error of their own within seconds (their next
collective or JAX's heartbeat notices); any still running after ``--grace_s`` are killed. The exit
status is 0 when all processes succeed, else the first failing one's (128 + signal for a signal).
On real clusters use one process per host instead (see the README).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

from saejax import distributed

_PROCESSES = flags.DEFINE_integer("processes", 2, "How many processes to start.", lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 0, "Fake CPU devices per process (0: leave the "
                                "devices and XLA_FLAGS as they are).", lower_bound=0)
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port on localhost (0: a free one).")
_GRACE = flags.DEFINE_float("grace_s", 30.0, "After a process fails, seconds the others get to end by "
                            "themselves before they are killed.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 20, "JAX's heartbeat timeout: how soon a process "
                                  "notices that a peer has gone silent.")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int, heartbeat_s: int) -> dict:
    """The environment of process `index` of `count`."""
    env = {**os.environ, distributed.ENV_COORDINATOR: f"localhost:{port}", distributed.ENV_NUM_PROCESSES: str(count),
           distributed.ENV_PROCESS_ID: str(index), distributed.ENV_HEARTBEAT: str(heartbeat_s)}
    if devices:
        flags_ = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags_ + [f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def command_line(command: list[str]) -> list[str]:
    """A ``.py`` script runs under this interpreter; anything else as given."""
    return [sys.executable, *command] if command[0].endswith(".py") else list(command)


def _relay(stream, target, prefix: str) -> None:
    """Copy `stream`'s lines to `target` with `prefix`, leaving out gloo's connection chatter."""
    for line in iter(stream.readline, ""):
        if "[Gloo] Rank" not in line:
            target.write(prefix + line)
            target.flush()


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it (128 + signal number when a signal ended it)."""
    return 128 - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def launch(command: list[str], processes: int, *, devices: int = 0, port: int = 0, grace_s: float = 30.0,
           heartbeat_s: int = 20) -> int:
    """Run `command` as `processes` cooperating processes; returns the exit status (see module doc)."""
    port = port or free_port()
    children = []
    relays = []
    for index in range(processes):
        child = subprocess.Popen(command_line(command), env=process_env(index, processes, port, devices, heartbeat_s),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)  # signals reach it through the launcher only
        prefix = f"[{index}] " if index else ""
        for stream, target in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
            relays.append(threading.Thread(target=_relay, args=(stream, target, prefix), daemon=True))
            relays[-1].start()
        children.append(child)

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(children, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for relay in relays:
            relay.join(timeout=5)


def _wait(children, grace_s: float) -> int:
    first_failure = None
    deadline = None
    while True:
        codes = [child.poll() for child in children]
        for index, code in enumerate(codes):
            if code not in (None, 0) and first_failure is None:
                first_failure = (index, code)
                deadline = time.monotonic() + grace_s
                print(f"saejax.launch: process {index} {describe(code)}; waiting up to {grace_s:g} s for the others",
                      file=sys.stderr, flush=True)
        if all(code is not None for code in codes):
            break
        if deadline is not None and time.monotonic() > deadline:
            for index, child in enumerate(children):
                if child.poll() is None:
                    print(f"saejax.launch: killing process {index}, still running {grace_s:g} s after process "
                          f"{first_failure[0]} failed", file=sys.stderr, flush=True)
                    child.kill()
            deadline = None
        time.sleep(0.1)
    if first_failure is None:
        return 0
    for index, child in enumerate(children):
        if index != first_failure[0] and child.returncode != 0:
            print(f"saejax.launch: process {index} {describe(child.returncode)}", file=sys.stderr, flush=True)
    return exit_status(first_failure[1])


def main(argv):
    command = argv[1:]
    if not command:
        raise app.UsageError("give the command to run after --, e.g. "
                             "python -m saejax.launch --processes=2 -- experiments/train.py --workdir=/tmp/run")
    sys.exit(launch(command, _PROCESSES.value, devices=_DEVICES.value, port=_PORT.value, grace_s=_GRACE.value,
                    heartbeat_s=_HEARTBEAT.value))


if __name__ == "__main__":
    app.run(main)
