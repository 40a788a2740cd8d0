"""The one place that talks to Orbax: save the whole train state every N steps, resume the latest.

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
    state = ckpt.restore_latest(state)     # unchanged if there is no checkpoint
    ckpt.save(step, state)                 # asynchronous; ckpt.close() waits for the last one

Saved: the full TrainState pytree (params, optimizer state, loss-term state, counters, step,
normalisation scale), in Orbax's own format (no pickle). The data position needs no saving:
batch i is a pure function of (seed, i).
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for a TrainState-like pytree."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def saved_shape(self, *path: str, step: int | None = None) -> tuple[int, ...] | None:
        """Shape of one saved array (e.g. ``"params", "b_dec"``) from the checkpoint's metadata,
        without restoring it; None when there is no checkpoint or no such array."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            node = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "default").item_metadata
            for key in path:
                node = node[key]
            return tuple(node.shape)
        except (KeyError, TypeError, AttributeError, FileNotFoundError, ValueError):
            return None

    def save(self, step: int, state) -> None:
        """Start saving `state` as `step` (returns before the write finishes)."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state))

    def restore_latest(self, like):
        """The latest checkpoint restored into the structure, shapes and shardings of `like`
        (returned unchanged when there is no checkpoint)."""
        step = self.latest_step()
        if step is None:
            return like
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
