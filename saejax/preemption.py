"""Graceful stop on SIGTERM / SIGINT: the train loop finishes its step, saves, and exits 0.

Preemptible TPU VMs and cluster schedulers send SIGTERM before killing a job; Ctrl-C sends SIGINT.
Orbax's own `reached_preemption` only works after `jax.distributed.initialize`, so a single
process needs its own handler. The first signal only sets a flag that the loop polls after every
step; SIGINT's previous handler comes back at once, so a second Ctrl-C interrupts immediately (in
experiments/train.py: one `error:` line and exit status 130, `saejax.runtime.exit_at_once_on_interrupt`;
elsewhere a KeyboardInterrupt).

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


class StopVote:
    """Agreement on when to stop, across the processes of a multi-process run.

    A signal may reach only some processes (or reach them at different steps), but all must save
    the same checkpoint step and stop together, or the others would hang in their next collective.
    After every step each process casts its flag into a tiny global max over all devices,
    dispatched asynchronously behind the step, and reads the result of the previous step's vote,
    which is therefore already computed: every process sees the same sequence of results and
    stops after the same step (one step after the first signal). With one process it is the
    local flag itself.
    """

    def __init__(self, mesh=None) -> None:
        import jax  # noqa: PLC0415 (signal handling above needs no JAX)
        import numpy as np  # noqa: PLC0415
        from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

        self._jax, self._np = jax, np
        self._pending = None
        self.multi = jax.process_count() > 1
        if self.multi:
            devices = mesh.devices.reshape(-1)
            flat = jax.sharding.Mesh(devices, ("all",))
            self._sharding = NamedSharding(flat, PartitionSpec("all"))
            self._shape = (devices.size,)
            self._local = len([d for d in devices if d.process_index == jax.process_index()])
            self._max = jax.jit(lambda flags: flags.max(), out_shardings=NamedSharding(flat, PartitionSpec()))

    def vote(self, stop: bool) -> bool:
        """Cast this process's `stop`; returns whether all processes stop now (the same in each)."""
        if not self.multi:
            return stop
        decided = self._pending is not None and bool(self._pending.addressable_data(0))
        flags = self._np.full((self._local,), int(stop), self._np.int32)
        global_flags = self._jax.make_array_from_process_local_data(self._sharding, flags, self._shape)
        self._pending = self._max(global_flags)
        return decided
