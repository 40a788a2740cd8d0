"""The one place that talks to Orbax: save the whole train state every N steps, resume the latest
good one.

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
    state, step, damaged = ckpt.restore_latest_good(state)   # unchanged if there is no checkpoint
    ckpt.save(step, state, config_dict)                      # asynchronous; ckpt.close() waits

A checkpoint ``checkpoints/STEP/`` holds two Orbax items: ``state``, the full TrainState pytree
(params, optimizer state, loss-term state such as AuxK counters, dead-latent counters, the step,
the normalisation scale), and ``config``, the run's config as JSON. Nothing is pickled. The data
position needs no saving: batch i is a pure function of (seed, i). The RNG needs none either: every
key is derived from ``config.seed`` and the step.

Damage. Orbax writes a step under a temporary name and renames it when complete, so a crash
mid-save leaves a ``STEP.orbax-checkpoint-tmp-*`` folder that is never listed or restored. A listed
step whose files were later truncated or deleted fails to restore; `restore_latest_good` then moves
it aside to ``STEP.damaged`` (so the step can be saved again) and tries the next older one.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

STATE, CONFIG = "state", "config"


class CheckpointError(Exception):
    """No checkpoint in the folder could be restored."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for a TrainState-like pytree plus a config dict."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._manager = self._open()

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
        """Start saving `state` (and the config dict) as `step`; returns before the write finishes."""
        items = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config or {})}
        self._manager.save(int(step), args=ocp.args.Composite(**items))

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

    def restore_latest_good(self, like, is_good=None):
        """The newest step that restores (and passes `is_good(state)`, if given).

        Returns (state, step, damaged) where damaged lists (step, reason) for every newer step
        that failed and was moved aside to ``STEP.damaged``. Returns (like, None, []) when there
        is no checkpoint; raises CheckpointError when none restores.
        """
        damaged = []
        for step in reversed(self.all_steps()):
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

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
