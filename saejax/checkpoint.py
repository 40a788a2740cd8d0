"""The one place that talks to Orbax: save the whole train state every N steps, resume the latest
good one.

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
    state, step, damaged = ckpt.restore_latest_good(state)   # unchanged if there is no checkpoint
    ckpt.save(step, state, config_dict)                      # asynchronous; ckpt.close() waits

A checkpoint ``checkpoints/STEP/`` holds two Orbax items: ``state``, the full TrainState pytree
(params, optimizer state, loss-term state such as AuxK counters, dead-latent counters, the step,
the normalisation scale), and ``config``, the run's config as JSON. Nothing is pickled. The data
position needs no saving: batch i is a pure function of (seed, i). The RNG needs none either: every
key is derived from ``config.seed`` and the step. `restore_latest_good` reads a step's config first
and hands it to a check (``check_config``), so a step saved by another run's config is refused
before its arrays are read.

Damage. Orbax writes a step under a temporary name and renames it when complete, so a crash
mid-save leaves a ``STEP.orbax-checkpoint-tmp*`` folder that is never listed or restored
(`remove_unfinished` deletes those older than a restored step). A listed step whose files were
later truncated or deleted fails to restore; `restore_latest_good` then moves it aside to
``STEP.damaged`` (so the step can be saved again) and tries the next older one.

Failed writes. A save runs in Orbax's background threads; when it fails (a read-only folder, a full
disk) the error reaches the caller as one `WorkdirError` naming the folder, the step and the cause
(the OS's words), at the next `save`, `raise_if_save_failed` or `close`; the failed step is not
listed and older steps are not deleted, so the last good checkpoint stays. Orbax's own tracebacks
of such failures are not printed unless absl's verbosity is INFO or finer (``-v 0``), and the
threads Orbax leaves waiting on a step whose folder could not be made are released, so that the
process can exit at once.
"""

import inspect
import logging
import os
import re
import shutil
import sys
import threading
import traceback
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from saejax.errors import WorkdirError

STATE, CONFIG = "state", "config"
UNFINISHED = ".orbax-checkpoint-tmp"  # Orbax's suffix of a step folder still being written


class CheckpointError(Exception):
    """No checkpoint in the folder could be restored."""


def _verbose() -> bool:
    """Whether absl's verbosity asks for INFO or finer (``-v 0``): then Orbax's own reports stay."""
    return logging.getLogger("absl").getEffectiveLevel() <= logging.INFO


class _OrbaxErrorsReported:
    """A logging filter dropping, unless `_verbose`, Orbax's ERROR records that saejax reports itself:
    those carrying a traceback (a failed save, logged from each of its threads: the failure reaches the
    caller as an exception, the user as one saejax line) and a damaged step's unreadable metadata (the
    restore falls back with one saejax warning naming the step)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        reported = record.exc_info or str(record.msg).startswith("Failed to json parse")
        return _verbose() or not (from_orbax and record.levelno >= logging.ERROR and reported)


def _closed_loop_noise(unraisable) -> bool:
    """Whether an unraisable exception is asyncio's "Event loop is closed" from `call_soon_threadsafe`:
    what TensorStore's late callbacks raise into the event loop of a save that already failed."""
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
            and any(frame.name == "call_soon_threadsafe" for frame in frames))


def _quiet_unraisable(previous):
    def hook(unraisable) -> None:
        if _verbose() or not _closed_loop_noise(unraisable):
            previous(unraisable)
    return hook


logging.getLogger("absl").addFilter(_OrbaxErrorsReported())
sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def _cause(e: BaseException) -> str:
    """The OS's words for why a write failed ("No space left on device"), else the first line of `e`.
    TensorStore reports OS errors inside a long message as ``[os_error_code='28']``."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    code = re.search(r"os_error_code='?(\d+)|OS error (\d+)", text)
    if code:
        return os.strerror(int(code.group(1) or code.group(2)))
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _unrun_coroutines(function, depth: int = 3) -> list:
    """The coroutines held in `function`'s closure (and its closures' functions, `depth` deep)."""
    found = []
    for cell in getattr(function, "__closure__", None) or ():
        value = cell.cell_contents
        if inspect.iscoroutine(value):
            found.append(value)
        elif inspect.isfunction(value) and depth > 1:
            found += _unrun_coroutines(value, depth - 1)
    return found


def _release_waiting_writes() -> None:
    """After a failed save: Orbax's other write threads of that save wait (up to its 300 s
    coordination timeout, in non-daemon threads that keep the process alive) for a signal that the
    step's folder was made, which will never come. Cancel them and send it, so they end now, and
    close the writes they never started (else Python warns that each was never awaited)."""
    from orbax.checkpoint._src.futures import future as ocp_future  # noqa: PLC0415 (Orbax internals)

    waiting = getattr(ocp_future, "_SignalingThread", None)
    for thread in threading.enumerate():
        if waiting is None or not (isinstance(thread, waiting) and thread.is_alive()):
            continue
        try:
            thread.cancel()
            ocp_future.set_signals(thread._receive_signals, operation_id=thread._operation_id)  # noqa: SLF001
            threading.Thread.join(thread, timeout=5)
            if not thread.is_alive():
                with warnings.catch_warnings():  # closing one that never ran may itself warn
                    warnings.simplefilter("ignore", RuntimeWarning)
                    for coroutine in _unrun_coroutines(getattr(thread, "_target", None)):
                        coroutine.close()
        except Exception:  # noqa: BLE001 - another Orbax version: the thread times out by itself
            pass


def _step_of(name: str) -> int | None:
    """The step a folder name in a checkpoint directory stands for ("120", "120.orbax-checkpoint-tmp",
    "120.orbax-checkpoint-tmp-1712345", "120.damaged"), or None."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for a TrainState-like pytree plus a config dict."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._manager = self._open()
        self._pending: int | None = None  # the step being written in the background
        self._failed: WorkdirError | None = None

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
        handlers = {STATE: ocp.StandardCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every listed step, oldest first (damaged ones included until a restore sets them aside)."""
        return sorted(self._manager.all_steps())

    def saved_shape(self, *path: str, step: int | None = None) -> tuple[int, ...] | None:
        """Shape of one saved state array (e.g. ``"params", "b_dec"``) from the checkpoint's
        metadata, without restoring it; None when there is no checkpoint or no such array."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            node = self._manager.item_metadata(step)[STATE]
            for key in path:
                node = node[key]
            return tuple(node.shape)
        except Exception:  # noqa: BLE001 - metadata of a damaged step: the restore will say more
            return None

    def save(self, step: int, state, config: dict | None = None) -> None:
        """Start saving `state` (and the config dict) as `step`; returns before the write finishes.
        WorkdirError if this or the previous save failed (see module docstring)."""
        self._wait()
        items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config or {})}
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for a failed write
            raise self._failure(int(step), e) from None
        self._pending = int(step)

    def raise_if_save_failed(self) -> None:
        """WorkdirError now if a background save has already failed (no wait for one in progress).
        With several processes a failure surfaces at the next `save` instead, which all reach together."""
        if self._failed is not None:
            raise self._failed
        if self._pending is not None and jax.process_count() == 1 and not self._manager.is_saving_in_progress():
            self._wait()

    def _wait(self) -> None:
        """Wait for the save in flight; WorkdirError naming its step if it failed."""
        if self._failed is not None:
            raise self._failed
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._failure(self._pending, e) from None
        self._pending = None

    def _failure(self, step: int | None, e: BaseException) -> WorkdirError:
        """The WorkdirError for a failed save of `step` (remembered: later calls raise it again),
        after releasing the Orbax threads that would wait for it."""
        _release_waiting_writes()
        self._pending = None
        kept = self.latest_step()
        self._failed = WorkdirError(
            f"checkpoint step {step} could not be written in {self.directory}: {_cause(e)}; "
            + (f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written"))
        return self._failed

    def restore(self, step: int, like):
        """Step `step` restored into the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))
        return restored[STATE]

    def restore_config(self, step: int | None = None) -> dict | None:
        """The config dict saved with `step` (default: the latest), or None without checkpoints."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self._manager.restore(int(step), args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def restore_latest_good(self, like, is_good=None, check_config=None):
        """The newest step that restores (and passes `is_good(state)`, if given).

        Returns (state, step, damaged) where damaged lists (step, reason) for every newer step
        that failed and was moved aside to ``STEP.damaged``. Returns (like, None, []) when there
        is no checkpoint; raises CheckpointError when none restores. `check_config(config_dict,
        step)`, if given, sees each step's saved config before its state is read; what it raises
        propagates (nothing is set aside). A step whose config cannot be read counts as damaged.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                saved_config = self.restore_config(step) if check_config is not None else None
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for bad files
                damaged.append((step, f"its config cannot be read: {_cause(e)}"))
                continue
            if check_config is not None:
                check_config(saved_config, step)
            try:
                state = self.restore(step, like)
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for bad files
                damaged.append((step, (str(e).strip().splitlines() or [type(e).__name__])[0][:300]))
                continue
            if is_good is not None and not is_good(state):
                damaged.append((step, "holds non-finite values"))
                continue
            self._set_aside([s for s, _ in damaged])
            return state, step, damaged
        if damaged:
            listing = "; ".join(f"step {s}: {reason}" for s, reason in damaged)
            raise CheckpointError(f"no checkpoint in {self.directory} can be restored ({listing})")
        return like, None, []

    def _set_aside(self, steps: list[int]) -> None:
        """Rename damaged step folders to STEP.damaged (Orbax no longer lists them)."""
        if not steps:
            return
        self._manager.close()
        if jax.process_index() == 0:  # one process renames; the others wait for it
            for step in steps:
                folder = self.directory / str(step)
                target = self.directory / f"{step}.damaged"
                n = 1
                while target.exists():
                    target, n = self.directory / f"{step}.damaged.{n}", n + 1
                if folder.exists():
                    folder.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("saejax checkpoint set aside")
        self._manager = self._open()

    def remove_unfinished(self, before: int) -> list[Path]:
        """Delete the folders of saves that never finished (``STEP.orbax-checkpoint-tmp*``, left by a
        crash mid-save) of steps older than `before`; returns them. Process 0 only (the folder is shared)."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return []
        stale = [p for p in self.directory.iterdir() if UNFINISHED in p.name and (_step_of(p.name) or 0) < before]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale

    def close(self) -> None:
        """Wait for pending saves and release the manager. WorkdirError if a save failed and that was
        not reported yet; after a reported failure it only releases what it can."""
        reported = self._failed is not None
        try:
            if not reported:
                self._wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 - after a failed save Orbax raises its error again
                if self._failed is None:
                    raise
