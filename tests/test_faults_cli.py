"""Bad command lines and interruptions of experiments/train.py: each ends with exactly one `error:`
line (no traceback) and a non-zero exit status, and leaves the workdir as it was; --config.help and
--dry_run tell what a run would do without doing it.

The parsing is checked in-process (`saejax.cli`, which experiments/train.py runs before absl); a few
subprocesses check what only a process shows: exit status, stderr, signals.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from saejax import cli
from saejax.config import base_config, field_docs
from saejax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
CONFIGS = ROOT / "experiments" / "configs"
DEFAULT, SYNTHETIC, DIGITS = (str(CONFIGS / f"{name}.py") for name in ("default", "synthetic", "digits"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
TIMEOUT_S = 120  # every subprocess runs under a timeout: a hang fails the test
# a run small enough to start training within seconds
SMALL = ["--config.data.d=32", "--config.data.n_features=64", "--config.sae.d_sae=64", "--config.train.batch_size=64",
         "--config.log.tensorboard=False"]


def _config_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "config.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


# (argv after the program name, the ConfigError's message); {tmp} is a file written by the case's setup
BAD_COMMAND_LINES = [
    (["--config.sae.arc=relu"], "unknown config field sae.arc (did you mean sae.arch?)"),
    ([f"--config={SYNTHETIC}", "--config.sae.arc=relu"], "unknown config field sae.arc (did you mean sae.arch?)"),
    (["--config.sea.arch=topk"], "unknown config field sea.arch (did you mean sae.arch?)"),
    (["--config.train.stpes", "5"], "unknown config field train.stpes (did you mean train.steps?)"),
    (["--noconfig.log.tensorbord"], "unknown config field log.tensorbord (did you mean log.tensorboard?)"),
    (["--config.sae.qqqq=1"], "unknown config field sae.qqqq (--config.help lists the fields)"),
    (["--config.sae=3"], "sae is a section of the config, not a field: set one of its fields, e.g. "
                         "--config.sae.arch=..."),
    (["--config.sae.d_sae=abc"], "config field sae.d_sae takes an integer, not 'abc'"),
    (["--config.sae.d_sae=3.5"], "config field sae.d_sae takes an integer, not '3.5'"),
    (["--config.optim.lr=fast"], "config field optim.lr takes a number, not 'fast'"),  # None until resolved
    (["--config.log.tensorboard=maybe"], "config field log.tensorboard takes true or false, not 'maybe'"),
    ([f"--config={DIGITS}:dep"], f"--config={DIGITS}:dep: unknown digits variant 'dep'; choose one of shallow, deep"),
    (["--config=/missing.py"], "--config=/missing.py: no config file '/missing.py'"),
    (["--config="], "--config=: the config file path is empty"),
    (["--config={tmp}"], "--config={tmp}: SyntaxError: invalid syntax (config.py, line 1)"),
    (["--config={tmp}"], "--config={tmp}: get_config() returned NoneType, not a ConfigDict"),
    (["--config={tmp}"], "--config={tmp}: AttributeError: module 'config_file' has no attribute 'get_config'"),
    (["--config={tmp}"], "--config={tmp}: KeyError: 'missing'"),
]
CONFIG_FILE_BODIES = {  # the config files of the {tmp} cases, by the message's distinctive part
    "SyntaxError": "def get_config(:\n",
    "NoneType": "def get_config():\n    return None\n",
    "AttributeError": "VALUE = 1\n",
    "KeyError": "def get_config():\n    return {}['missing']\n",
}


@pytest.mark.parametrize("args, message", BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_config_error_naming_the_culprit(tmp_path, args, message):
    if "{tmp}" in message:
        body = next(body for key, body in CONFIG_FILE_BODIES.items() if key in message)
        path = _config_file(tmp_path, body)
        args, message = [a.replace("{tmp}", path) for a in args], message.replace("{tmp}", path)
    with pytest.raises(ConfigError) as caught:
        cli.prepare(["train.py", "--workdir=/tmp/unused", *args], DEFAULT)
    assert str(caught.value) == message


@pytest.mark.parametrize("args", [
    ["--config.sae.arch=topk", "--config.optim.lr=3e-4", "--config.log.tensorboard", "--noconfig.log.progress"],
    ["--config.train.steps", "5"],  # absl's "--flag value" form: the value is absl's to check
    ["--config.sae.d_sae=64", "--", "--config.not_a_field=1"],  # after "--": positional, not a flag
])
def test_good_overrides_pass_and_the_default_config_is_named(args):
    argv, config = cli.prepare(["train.py", *args], DEFAULT)
    assert argv[1] == f"--config={DEFAULT}" and argv[2:] == args
    assert config.data.source == "patches"  # experiments/configs/default.py, loaded


def test_a_named_config_is_kept_and_help_skips_the_override_checks():
    argv = ["train.py", f"--config={SYNTHETIC}:topk", "--config.help"]
    assert cli.prepare(argv, DEFAULT) == (argv, cli.load_config(f"{SYNTHETIC}:topk"))
    assert cli.asks_for_help(argv) and not cli.asks_for_help(["train.py", "--config.helpful=1"])


def test_the_field_table_has_every_field_its_value_and_doc():
    config = cli.load_config(f"{SYNTHETIC}:topk")
    lines = cli.field_table(config, "synthetic.py:topk").splitlines()[2:]
    docs = field_docs()
    assert [line.split()[0] for line in lines] == list(docs)  # every field, in the documented order
    row = next(line for line in lines if line.split()[0] == "sae.k")
    assert row.split()[1] == "6" and row.endswith(docs["sae.k"])
    assert next(line for line in lines if line.split()[0] == "optim.lr").split()[1] == "0.002"


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, env=ENV,
                          timeout=TIMEOUT_S, **kwargs)


def _one_error_line(stderr: str) -> str:
    """The single non-empty line of stderr, which must be an `error:` line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# what only the process shows: the line on stderr, the exit status, an untouched workdir
@pytest.mark.parametrize("args, line", [
    ([f"--config={DIGITS}:dep"], f"error: --config={DIGITS}:dep: unknown digits variant 'dep'; choose one of "
                                 "shallow, deep"),
    (["--config=/missing.py"], "error: --config=/missing.py: no config file '/missing.py'"),
    (["--config.sae.d_sae=64", "extra"], "error: unexpected argument 'extra': every option is a flag, "
                                         "--name=value (--helpfull lists them)"),
    (["--config.sae.d_sae=abc"], "error: config field sae.d_sae takes an integer, not 'abc'"),
])
def test_bad_command_lines_end_with_one_error_line_and_status_1(tmp_path, args, line):
    result = _run(f"--workdir={tmp_path / 'run'}", *args)
    assert result.returncode == 1 and _one_error_line(result.stderr) == line
    assert not (tmp_path / "run").exists()


def test_config_help_lists_every_field_with_its_value_and_doc():
    result = _run("--config.help")  # no --workdir needed
    assert result.returncode == 0, result.stderr[-2000:]
    docs, lines = field_docs(), result.stdout.splitlines()
    assert lines[0].startswith(f"The fields of --config={DEFAULT}")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(docs)
    assert rows["data.source"].split()[1] == "'patches'" and rows["data.source"].endswith(docs["data.source"])


def test_dry_run_prints_the_resolved_config_and_the_plan_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = _run(f"--workdir={workdir}", f"--config={SYNTHETIC}:topk", *SMALL, "--dry_run")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "resolved config:" in out and "  optim.decay = 'linear'" in out  # the architecture's defaults filled in
    assert "data: data.source='synthetic', d_in=32; rows generated on the fly" in out
    params = 2 * 32 * 64 + 64 + 32  # W_enc, W_dec, b_enc, b_dec
    assert f"SAE: topk, d_in=32, d_sae=64, {params:,} parameters" in out
    assert "memory: params " in out and "optimizer state" in out and "a batch [64, 32]" in out
    assert "training: 2000 steps of 64 rows" in out and f"writes into {workdir}: config.json" in out
    assert out.rstrip().endswith("dry run: nothing was trained or written")
    assert not workdir.exists()


def test_dry_run_memory_counts_params_adam_and_a_batch(tmp_path):
    from saejax import plan

    c = base_config()
    c.data.d, c.sae.d_sae, c.train.batch_size = 64, 4096, 256
    out = plan.describe(c, tmp_path / "run")
    params = 2 * 64 * 4096 + 4096 + 64
    line = next(line for line in out.splitlines() if line.startswith("memory:"))
    # float32 params, Adam's two moments of each (its step counts round away), a float32 batch [256, 64]
    expected = (4 * params, 8 * params, 4 * 256 * 64)
    assert line.startswith(f"memory: params {plan.megabytes(expected[0])} + optimizer state "
                           f"{plan.megabytes(expected[1])} + a batch [256, 64] {plan.megabytes(expected[2])} = "
                           f"{plan.megabytes(sum(expected))}"), line
    assert f"{params:,} parameters" in out and not (tmp_path / "run").exists()


def _wait_for(process, text: str, timeout: float = TIMEOUT_S) -> str:
    """stdout of `process` up to and including the first line containing `text`."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    pytest.fail(f"no {text!r} in the output: {''.join(seen)[-2000:]}")


INTERRUPTED = ("error: interrupted (Ctrl-C): stopped at once; checkpoints saved before are kept (run the same "
               "command to resume)")


def _as_from_a_terminal(args: list[str]) -> list[str]:
    """`args` run with SIGINT at its default, as a command typed at a terminal has it, even when the tests
    run as a shell's background job (whose children inherit SIGINT ignored, and are left alone by design):
    a tiny Python resets it and execs the command."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *args]


def test_a_second_ctrl_c_while_the_first_saves_stops_at_once_with_status_130(tmp_path):
    # Ctrl-C every 20 ms from the first logged step on: the first makes the loop stop after its
    # step and save; one of the next lands before that ends (saving and exiting take longer)
    args = [sys.executable, str(TRAIN), f"--workdir={tmp_path}", f"--config={SYNTHETIC}", *SMALL,
            "--config.train.steps=100000", "--config.train.log_every=1", "--config.train.checkpoint_every=0"]
    process = subprocess.Popen(_as_from_a_terminal(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV)
    try:
        _wait_for(process, "[train] step")
        while process.poll() is None:
            process.send_signal(signal.SIGINT)
            time.sleep(0.02)
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 130, (process.returncode, stdout[-1000:], stderr[-3000:])
    assert _one_error_line(stderr) == INTERRUPTED
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 100000  # the run had started


def test_ctrl_c_outside_training_is_one_line_and_status_130():
    # the handler alone (saejax/runtime.py loaded by its path: no jax, no seconds of imports)
    script = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("runtime", {str(ROOT / "saejax" / "runtime.py")!r})
        runtime = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runtime)
        runtime.exit_at_once_on_interrupt("error: interrupted")
        print("working", end="", flush=False)
        sys.stderr.write("ready\\n"); sys.stderr.flush()
        time.sleep(60)
    """)
    process = subprocess.Popen(_as_from_a_terminal([sys.executable, "-c", script]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr.readline() == "ready\n"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert (process.returncode, stdout, stderr) == (130, "working", "error: interrupted\n")


def test_the_preemption_guard_hands_the_second_ctrl_c_to_the_previous_handler():
    from saejax.preemption import PreemptionGuard

    def interrupt_and_wait(handled):
        """SIGINT to this process, then wait until `handled()` (another thread may catch the signal;
        the main thread runs the Python handler at its next check)."""
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while not handled() and time.monotonic() < deadline:
            time.sleep(0.01)

    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        with PreemptionGuard() as guard:
            interrupt_and_wait(lambda: guard.requested is not None)
            assert guard.requested == "SIGINT" and received == []  # the first: a clean stop, requested
            interrupt_and_wait(lambda: received)
            assert received == [signal.SIGINT]  # the second: the command's handler (exit 130 in train.py)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_sigint_stays_ignored():
    from saejax import runtime

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job
    try:
        runtime.exit_at_once_on_interrupt("error: interrupted")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
