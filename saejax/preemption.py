"""Graceful stop on SIGTERM / SIGINT: the train loop finishes its step, saves, and exits 0.

Preemptible TPU VMs and cluster schedulers send SIGTERM before killing a job; Ctrl-C sends SIGINT.
Orbax's own `reached_preemption` only works after `jax.distributed.initialize`, so a single
process needs its own handler. The first signal only sets a flag that the loop polls after every
step; SIGINT's default behaviour comes back at once, so a second Ctrl-C interrupts immediately.

    with PreemptionGuard() as guard:
        for step in ...:
            ...
            if guard.requested:
                save(); break
"""

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    """Installs the handlers on entry (main thread only; elsewhere it is inert) and restores the
    previous ones on exit. `requested` is the name of the first signal received, or None."""

    def __init__(self, signals=SIGNALS) -> None:
        self.signals = tuple(signals)
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
