"""`saejax.runtime.run_then_exit`: a command ends as `sys.exit` would end it (status, message, other
threads finished, atexit handlers run, output flushed), only without the interpreter's teardown."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# saejax/runtime.py loaded by its path: the subprocesses skip importing jax (seconds each)
LOAD_RUNTIME = textwrap.dedent(f"""
    import importlib.util
    path = {str(Path(__file__).parents[1] / "saejax" / "runtime.py")!r}
    spec = importlib.util.spec_from_file_location("runtime", path)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
""")
SCRIPT = LOAD_RUNTIME + textwrap.dedent("""
    import atexit, sys, threading, time

    def command(outcome):
        atexit.register(lambda: print("atexit ran", flush=False))
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished", flush=False))).start()
        print("partial line without a newline", end="")
        if outcome == "message":
            sys.exit("error: something named")
        if outcome != "return":
            sys.exit(int(outcome))

    runtime.run_then_exit(command, sys.argv[1])
""")


@pytest.mark.parametrize("outcome, status", [("return", 0), ("0", 0), ("3", 3), ("message", 1)])
def test_run_then_exit_ends_like_sys_exit(outcome, status):
    result = subprocess.run([sys.executable, "-c", SCRIPT, outcome], capture_output=True, text=True, timeout=60)
    assert result.returncode == status, result.stderr
    assert result.stdout.startswith("partial line without a newline")
    assert "thread finished" in result.stdout and "atexit ran" in result.stdout
    assert result.stdout.index("thread finished") < result.stdout.index("atexit ran")
    if outcome == "message":
        assert result.stderr.strip().splitlines()[-1] == "error: something named"


def test_run_then_exit_lets_other_exceptions_through():
    script = LOAD_RUNTIME + "def boom():\n    raise RuntimeError('boom')\nruntime.run_then_exit(boom)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr and "Traceback" in result.stderr
