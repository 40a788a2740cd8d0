"""Where a run's numbers go: metrics.jsonl (always), TensorBoard event files, Weights & Biases
(when asked), a progress line.

A write that fails (a full disk, a read-only folder) stops the run with one `WorkdirError` naming
the file. A run killed mid-write leaves a torn last line in metrics.jsonl: readers skip it, and a
resumed run drops it (saying so) before it appends.
"""

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import jax

from saejax import tensorboard as tensorboard_lib
from saejax.errors import ConfigError, DataError, WorkdirError

WANDB_MODES = ("offline", "online", "disabled")


def start_wandb(workdir: str | Path, config_dict: dict, project: str, mode: str = "offline"):
    """A Weights & Biases run logging into `workdir`/wandb, its id fixed by the workdir so a
    resumed training continues the same W&B run. ConfigError without wandb installed."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"log.wandb_mode={mode!r}; choose one of {', '.join(WANDB_MODES)}")
    try:
        import wandb  # noqa: PLC0415 (optional)
    except ImportError:
        raise ConfigError('log.wandb=True needs Weights & Biases: pip install -e ".[wandb]"') from None
    workdir = Path(workdir).absolute()
    run_id = "saejax-" + hashlib.sha1(str(workdir).encode()).hexdigest()[:12]
    return wandb.init(project=project, dir=str(workdir), id=run_id, name=workdir.name, config=config_dict,
                      mode=mode, resume="allow", settings=wandb.Settings(silent=True))

PROGRESS_KEYS = (("loss", "loss {:.4g}"), ("l0", "L0 {:.1f}"), ("fvu", "FVU {:.4f}"), ("dead_fraction", "dead {:.1%}"))


def _jsonable(value):
    """Floats that JSON can hold (NaN/Inf become strings rather than invalid JSON)."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _cannot_write(path: Path, e: OSError) -> WorkdirError:
    return WorkdirError(f"{path}: cannot be written ({e.strerror or e}); the run stopped")


class MetricWriter:
    """Appends one JSON object per logged step to `workdir/metrics.jsonl`, mirrors the scalars to
    TensorBoard under `workdir/tensorboard/` and to a W&B run (`start_wandb`) if given, and prints a
    progress line with steps/s."""

    def __init__(self, workdir: str | Path, total_steps: int, *, tensorboard: bool = True, progress: bool = True,
                 wandb_run=None):
        self.path = Path(workdir) / "metrics.jsonl"
        self._wandb = wandb_run
        self.total_steps = total_steps
        self.progress = progress
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise _cannot_write(self.path, e) from None
        tb_folder = Path(workdir) / "tensorboard"
        try:
            self._tb = tensorboard_lib.EventFileWriter(tb_folder) if tensorboard else None
        except OSError as e:
            self._file.close()
            raise _cannot_write(Path(e.filename or tb_folder), e) from None
        self._last = (None, time.perf_counter())

    def write(self, step: int, scalars: dict, split: str = "train") -> None:
        """Record scalars (floats) for `step`; split is "train" or "eval". WorkdirError naming the
        file when it cannot be written."""
        record = {"step": int(step), "split": split, **{k: _jsonable(v) for k, v in scalars.items()}}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            raise _cannot_write(self.path, e) from None
        tagged = {f"{split}/{name}": float(value) for name, value in scalars.items()}
        if self._tb is not None:
            try:
                self._tb.write(int(step), tagged)
            except OSError as e:
                raise _cannot_write(self._tb.path, e) from None
        if self._wandb is not None:
            self._wandb.log(tagged, step=int(step))
        if self.progress:
            print(self._progress_line(step, scalars, split), file=sys.stdout, flush=True)

    def _progress_line(self, step: int, scalars: dict, split: str) -> str:
        last_step, last_time = self._last
        now = time.perf_counter()
        parts = [f"[{split}] step {step}/{self.total_steps}"]
        if split == "train" and self.total_steps:
            done = min(step / self.total_steps, 1.0)
            bar = "#" * int(20 * done)
            parts[0] += f" [{bar:<20}] {done:4.0%}"
        if split == "train" and last_step is not None and step > last_step:
            rate = (step - last_step) / max(now - last_time, 1e-9)
            parts.append(f"{rate:.1f} steps/s, ETA {_duration((self.total_steps - step) / rate)}")
        if split == "train":
            self._last = (step, now)
        parts += [fmt.format(scalars[key]) for key, fmt in PROGRESS_KEYS if key in scalars]
        return " | ".join(parts)

    def close(self) -> None:
        """Close the files (a failed last flush is WorkdirError naming the file) and the W&B run."""
        try:
            _close(self._file, self.path)
            if self._tb is not None:
                _close(self._tb, self._tb.path)
        finally:
            if self._wandb is not None:
                self._wandb.finish()


def _close(handle, path: Path) -> None:
    try:
        handle.close()
    except OSError as e:
        raise _cannot_write(path, e) from None


def _duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _parse_lines(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """([(byte offset after the line, record) for each record], byte offset of a torn last line or None)
    of a metrics file. Only the last line may be torn (cut off by a killed run: not a JSON object, or
    no newline after it); any other bad line is a DataError naming the file and line."""
    *complete, tail = path.read_bytes().split(b"\n")  # tail: what follows the last newline
    records, end = [], 0
    for number, line in enumerate(complete, 1):
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            record = None
        if not isinstance(record, dict):
            if number == len(complete) and not tail.strip():
                return records, end - len(line) - 1
            raise DataError(f"{path}: line {number} is not a JSON record; remove it or use a new --workdir")
        records.append((end, record))
    return records, (end if tail.strip() else None)


def read_metrics(workdir: str | Path, split: str = "train") -> list[dict]:
    """The records of one split from `workdir/metrics.jsonl`, in order (a torn last line skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records, _ = _parse_lines(path)
    return [r for _, r in records if r.get("split") == split]


def drop_records_after(workdir: str | Path, step: int) -> None:
    """Remove records logged after `step` (a resumed run re-logs the steps it replays) and a torn last
    line (saying so). Records are in logging order, so what goes is the file's tail, cut off by one
    truncate that a kill cannot leave half done (and the file stays the one a writer may hold open)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return
    records, torn_at = _parse_lines(path)
    if torn_at is not None:
        say(f"note: dropped the torn last line of {path} (a run stopped mid-write)")
    kept = [(end, r) for end, r in records if r.get("step", 0) <= step]
    if kept != records[:len(kept)]:  # not in logging order (edited by hand): rewrite what is kept
        path.write_text("".join(json.dumps(r) + "\n" for _, r in kept), encoding="utf-8")
        return
    end = kept[-1][0] if kept else 0
    if end < path.stat().st_size:
        os.truncate(path, end)


def say(message: str) -> None:
    """Print a progress message (from process 0 only in a multi-process run)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename (other processes may be reading it)."""
    tmp = path.with_name(f".{path.name}.{jax.process_index()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class NoWriter:
    """What processes other than 0 log through: nothing."""

    def write(self, step, scalars, split="train") -> None:
        pass

    def close(self) -> None:
        pass


def for_run(workdir: Path, config) -> "MetricWriter | NoWriter":
    """The writer of a run's metrics as its `log` section asks (a NoWriter outside process 0)."""
    if jax.process_index() != 0:
        return NoWriter()
    log = config.log
    wandb_run = start_wandb(workdir, json.loads(config.to_json_best_effort()), log.wandb_project,
                            log.wandb_mode) if log.wandb else None
    return MetricWriter(workdir, config.train.steps, tensorboard=log.tensorboard, progress=log.progress,
                        wandb_run=wandb_run)


def write_config(workdir: Path, config) -> None:
    """workdir (made if missing) and workdir/config.json (process 0); WorkdirError naming the path
    when it cannot be written."""
    path = workdir / "config.json"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            write_atomically(path, config.to_json_best_effort(indent=2) + "\n")
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir}: {path} cannot be written ({e.strerror or e})") from None
