"""Process-level settings of a command: JAX's persistent compilation cache, an exit without the
interpreter's teardown, and Ctrl-C as an immediate exit with one line.
"""

import functools
import os
import signal
import sys


COMPILATION_CACHE_ENV = "SAEJAX_COMPILATION_CACHE"
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


def compilation_cache_dir() -> str | None:
    """Where `enable_compilation_cache` keeps compiled programs: $SAEJAX_COMPILATION_CACHE if set
    ("off" or "" turns the cache off: None), else $XDG_CACHE_HOME/saejax/xla (~/.cache/saejax/xla)."""
    chosen = os.environ.get(COMPILATION_CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "false") else chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "saejax", "xla")


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for every program, however quick to compile, so
    that a second run of the same command (a resumed run, a sweep's next point, a test) loads its
    train step, init and evaluation instead of compiling them. Returns the folder, or None when
    switched off. Call before the first compile."""
    import jax  # noqa: PLC0415

    folder = compilation_cache_dir()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def run_then_exit(run, *args, **kwargs) -> None:
    """Call `run(*args, **kwargs)` (a command's whole life, e.g. absl's ``app.run(main)``) and end
    the process the way ``sys.exit`` would — other threads joined, atexit handlers run, stdout and
    stderr flushed, the same exit status and message — but without the interpreter's teardown of
    every module and of XLA's client, which takes 0.3-0.45 s after a CPU training run. Exceptions
    other than SystemExit propagate as usual (a traceback, then a normal exit)."""
    import atexit  # noqa: PLC0415
    import threading  # noqa: PLC0415

    try:
        run(*args, **kwargs)
        code = None
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 (private: what the interpreter itself runs at exit)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def exit_at_once_on_interrupt(message: str) -> None:
    """Make SIGINT (Ctrl-C) end the process at once: `message` as one line on stderr, exit status 130,
    no traceback, no cleanup (what is on disk is what a SIGKILL would leave: the checkpoints saved
    before). A command calls it first thing; `saejax.preemption.PreemptionGuard` takes SIGINT over
    while the run trains (the first Ctrl-C saves and stops cleanly) and hands it back after the first,
    so that a second one lands here. Left alone when SIGINT is ignored (a shell's background job)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, functools.partial(_exit_now, message))


def _exit_now(message: str, signum, frame) -> None:
    """The SIGINT handler of `exit_at_once_on_interrupt`."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, RuntimeError, ValueError):  # interrupted mid-write, or closed: nothing more to keep
            pass
    os.write(2, (message + "\n").encode())
    os._exit(INTERRUPTED_EXIT_STATUS)
