"""A run's hold on its workdir under faults, case by case: one owner at a time (a lock), filesystem
failures that end the run with one line naming the path and keep the last good checkpoint, data files
that could block a read, and a resume that checks what it restores. Every case runs under a timeout:
a hang fails it instead of stalling the suite."""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

import saejax
from saejax import checkpoint, workdir_lock, writers
from saejax.errors import ConfigError, DataError, SaejaxError, WorkdirError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
HANG_S = 60  # far above what any case takes; a hang (Orbax's own timeout is 300 s) fails it
HOST = socket.gethostname()
TINY_CONFIG = '''"""A run small enough for fault tests: 20 steps, checkpoints at 10 and 20, a record every 5."""
from saejax.config import base_config


def get_config():
    c = base_config()
    c.data.source = "synthetic"
    c.data.d, c.data.n_features, c.data.avg_active = 8, 32, 2
    c.sae.d_sae = 16
    c.train.batch_size, c.train.steps, c.train.checkpoint_every, c.train.log_every = 32, 20, 10, 5
    c.train.evaluators = ""
    c.log.progress = c.log.tensorboard = False
    return c
'''


class Hung(Exception):
    """A case took longer than its timeout."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail with Hung if the block runs longer than `seconds` (SIGALRM interrupts blocking calls too)."""
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tiny_config(**fields):
    """TINY_CONFIG's config with `fields` ({"train.steps": 40, ...}) set."""
    namespace = {}
    exec(TINY_CONFIG, namespace)  # noqa: S102 - the module's own constant
    config = namespace["get_config"]()
    for name, value in fields.items():
        section, field = name.split(".")
        config[section][field] = value
    return config


def logged_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in writers.read_metrics(workdir)]


def latest_checkpoint(workdir: Path) -> int | None:
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def waiting_orbax_threads(grace_s: float = 5.0) -> list[threading.Thread]:
    """Orbax write threads still alive after `grace_s`: what would keep the process from exiting."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [t for t in threading.enumerate() if type(t).__name__ == "_SignalingThread" and t.is_alive()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def assert_last_good_checkpoint(workdir: Path, step: int) -> None:
    """`step` is the newest checkpoint, it restores with finite params, and no step was logged twice."""
    assert latest_checkpoint(workdir) == step
    params, _ = saejax.load(workdir)
    assert all(np.isfinite(v).all() for v in params.values())
    steps = logged_steps(workdir)
    assert len(steps) == len(set(steps)), steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workdir after TINY_CONFIG's 20 steps: checkpoints 10 and 20, records at steps 5 .. 20."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    with within(HANG_S):
        saejax.train_and_evaluate(tiny_config(), workdir)
    assert logged_steps(workdir) == [5, 10, 15, 20]
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------
# One owner per workdir.


def _no_flock(monkeypatch) -> None:
    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(workdir_lock.fcntl, "flock", unsupported)


LOCK_CASES = [
    # (id, flock works, what .lock holds beforehand, outcome, pattern of the refusal or of the note)
    ("live run (flock)", True, "held here", "refused", rf"is in use by process {os.getpid()} on {HOST} \(lock "),
    ("dead run's lock left behind (flock)", True, "dead pid", "taken", r"took over the lock .* of process \d+ on "),
    ("garbled lock file (flock)", True, "garbage", "taken", None),
    ("no lock yet (no flock)", False, "nothing", "taken", None),
    ("live run on this host (no flock)", False, "live pid", "refused",
     rf"is in use by process {os.getppid()} on {HOST}"),
    ("dead run on this host (no flock)", False, "dead pid", "taken", r"took over the lock .* of process \d+ on "),
    ("run on another host (no flock)", False, "other host", "refused", r"in use by process 1 on elsewhere .* delete "),
]


@pytest.mark.parametrize("flock, before, outcome, pattern", [case[1:] for case in LOCK_CASES],
                         ids=[case[0] for case in LOCK_CASES])
def test_one_run_owns_a_workdir(tmp_path, monkeypatch, capsys, flock, before, outcome, pattern):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock_path = workdir / workdir_lock.LOCK_NAME
    if not flock:
        _no_flock(monkeypatch)
    holder = None
    if before == "held here":
        holder = workdir_lock.take(workdir)
    elif before != "nothing":
        records = {"dead pid": {"host": HOST, "pid": _dead_pid()}, "live pid": {"host": HOST, "pid": os.getppid()},
                   "other host": {"host": "elsewhere", "pid": 1}}
        lock_path.write_text(json.dumps(records[before]) if before in records else "{not json")
    recorded = lock_path.read_text() if lock_path.exists() else None
    try:
        with within(HANG_S):
            if outcome == "refused":
                with pytest.raises(WorkdirError, match=pattern) as refused:
                    saejax.train_and_evaluate(tiny_config(), workdir)
                assert len(str(refused.value).splitlines()) == 1
                assert sorted(p.name for p in workdir.iterdir()) == [workdir_lock.LOCK_NAME]  # nothing written
                assert lock_path.read_text() == recorded
            else:
                with workdir_lock.held(workdir):
                    assert json.loads(lock_path.read_text()) == workdir_lock.this_owner()
                    with pytest.raises(WorkdirError, match=f"in use by process {os.getpid()}"):
                        workdir_lock.take(workdir)  # and now it is ours
                notes = [line for line in capsys.readouterr().out.splitlines() if "took over" in line]
                assert len(notes) == (1 if pattern else 0) and all(re.search(pattern, line) for line in notes), notes
                assert not lock_path.exists()  # released
    finally:
        if holder is not None:
            holder.release()


@pytest.mark.parametrize("ending", ["return", "SaejaxError", "KeyboardInterrupt", "disk full"])
def test_the_lock_is_released_however_the_run_ends(tmp_path, ending):
    """A filesystem OSError inside also becomes one WorkdirError naming the file."""
    raised = {"return": None, "SaejaxError": SaejaxError("bad input"), "KeyboardInterrupt": KeyboardInterrupt(),
              "disk full": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "summary.json"))}
    expected = {"disk full": WorkdirError}.get(ending, type(raised[ending]))
    with within(HANG_S), contextlib.ExitStack() as stack:
        if raised[ending] is not None:
            caught = stack.enter_context(pytest.raises(expected))
        with workdir_lock.held(tmp_path / "run"):
            assert (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()
            if raised[ending] is not None:
                raise raised[ending]
    if ending == "disk full":
        assert str(caught.value) == f"{tmp_path / 'run' / 'summary.json'}: No space left on device"
    assert not (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()
    workdir_lock.take(tmp_path / "run").release()


# ---------------------------------------------------------------------------------------------
# Filesystem failures during a run: one line naming the path, the last good checkpoint kept, no hang.


def _chmod_stops_writes(tmp_path: Path) -> bool:
    """Whether a read-only folder refuses this process's writes (not as root, which ignores modes)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


def read_only_checkpoints(monkeypatch, workdir: Path, tmp_path: Path) -> None:
    """checkpoints/ read-only: by its mode where that stops this process, else as the OS would answer
    (every folder made in it refused with EACCES)."""
    folder = workdir / "checkpoints"
    if _chmod_stops_writes(tmp_path):
        folder.chmod(0o555)
        return
    for name in ("makedirs", "mkdir"):
        real = getattr(os, name)

        def refuse(path, *args, _real=real, **kwargs):
            if Path(path).parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, refuse)


def disk_full_in_a_background_save(monkeypatch, workdir: Path, tmp_path: Path) -> None:
    """Orbax's write of the config item (on its commit thread) fails with ENOSPC."""
    async def full(self, item, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full)


class _FullDisk:
    """A text file whose writes fail with ENOSPC."""

    def __init__(self, path):
        self.path = path

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def disk_full_writing_metrics(monkeypatch, workdir: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(writers, "open", lambda path, *args, **kwargs: _FullDisk(path), raising=False)


def disk_full_writing_the_summary(monkeypatch, workdir: Path, tmp_path: Path) -> None:
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", write_text)


def a_file_where_the_tensorboard_folder_goes(monkeypatch, workdir: Path, tmp_path: Path) -> None:
    (workdir / "tensorboard").write_text("not a folder")


FILESYSTEM_CASES = [
    # (fault, extra config fields, the error line, the newest checkpoint afterwards)
    (read_only_checkpoints, {},
     r"^checkpoint step 30 could not be written in .*/checkpoints: Permission denied; the last good checkpoint "
     r"\(step 20\) is kept$", 20),
    (disk_full_in_a_background_save, {},
     r"^checkpoint step 30 could not be written in .*/checkpoints: No space left on device; the last good "
     r"checkpoint \(step 20\) is kept$", 20),
    (disk_full_writing_metrics, {}, r"^/.*/metrics\.jsonl: cannot be written \(No space left on device\)", 20),
    (disk_full_writing_the_summary, {}, r"^/.*/summary\.json: No space left on device$", 40),
    (a_file_where_the_tensorboard_folder_goes, {"log.tensorboard": True},
     r"^/.*/tensorboard: cannot be written \(File exists\)", 20),
]


@pytest.mark.parametrize("fault, fields, message, kept", FILESYSTEM_CASES,
                         ids=[case[0].__name__.replace("_", " ") for case in FILESYSTEM_CASES])
def test_a_filesystem_failure_ends_the_run_with_one_line(run_copy, tmp_path, monkeypatch, fault, fields, message,
                                                         kept):
    fault(monkeypatch, run_copy, tmp_path)
    try:
        with within(HANG_S), pytest.raises(WorkdirError, match=message) as failed:
            saejax.train_and_evaluate(tiny_config(**{"train.steps": 40, **fields}), run_copy)
    finally:
        monkeypatch.undo()
        (run_copy / "checkpoints").chmod(0o755)
    assert len(str(failed.value).splitlines()) == 1
    assert not waiting_orbax_threads()  # nothing left that would keep the process alive
    assert not (run_copy / workdir_lock.LOCK_NAME).exists()
    assert_last_good_checkpoint(run_copy, kept)


# ---------------------------------------------------------------------------------------------
# Data files that could block a read: refused before they are opened.


def _store(folder: Path) -> Path:
    from saejax.data import store

    store.write_store(folder, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32), rows_per_shard=100)
    return folder


def shard_is_a_fifo(folder: Path) -> tuple[str, Path]:
    (folder / "shard_000001.npy").unlink()
    os.mkfifo(folder / "shard_000001.npy")
    return str(folder), folder / "shard_000001.npy"


def manifest_is_a_fifo(folder: Path) -> tuple[str, Path]:
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    return str(folder), folder / "manifest.json"


def globbed_file_is_a_fifo(folder: Path) -> tuple[str, Path]:
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "zz.npy")
    return str(folder / "*.npy"), folder / "zz.npy"


def shard_is_a_device(folder: Path) -> tuple[str, Path]:
    (folder / "shard_000002.npy").unlink()
    (folder / "shard_000002.npy").symlink_to("/dev/zero")
    return str(folder), folder / "shard_000002.npy"


def manifest_is_not_utf8(folder: Path) -> tuple[str, Path]:
    (folder / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    return str(folder), folder / "manifest.json"


def manifest_is_nested_too_deeply(folder: Path) -> tuple[str, Path]:
    (folder / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return str(folder), folder / "manifest.json"


DATA_CASES = [
    (shard_is_a_fifo, "is a FIFO"), (manifest_is_a_fifo, "is a FIFO"), (globbed_file_is_a_fifo, "is a FIFO"),
    (shard_is_a_device, "is a character device"), (manifest_is_not_utf8, "not UTF-8"),
    (manifest_is_nested_too_deeply, "nested too deeply"),
]


@pytest.mark.parametrize("damage, problem", DATA_CASES, ids=[case[0].__name__.replace("_", " ") for case in DATA_CASES])
def test_a_data_file_that_could_block_is_refused_naming_it(tmp_path, damage, problem):
    from saejax.data import make_source

    data_path, culprit = damage(_store(tmp_path / "store"))
    config = tiny_config(**{"data.source": "npy", "data.path": data_path})
    with within(HANG_S), pytest.raises(DataError) as refused:
        make_source(config.data, config.seed)
    assert str(refused.value).startswith(f"{culprit}: ") and problem in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Resume: only what is checked is trusted.


def torn_last_metrics_line(workdir: Path) -> None:
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "split": "tr')  # what a kill mid-write leaves


def no_checkpoint_but_records(workdir: Path) -> None:
    """A run killed before its first checkpoint: records, no step to resume from."""
    shutil.rmtree(workdir / "checkpoints")


def unfinished_saves(workdir: Path) -> None:
    for name in ("5.orbax-checkpoint-tmp", "15.orbax-checkpoint-tmp-1712345", "25.orbax-checkpoint-tmp"):
        (workdir / "checkpoints" / name).mkdir()


RESUMES = [
    # (what happened to the workdir, the note the resumed run prints, the records afterwards)
    (torn_last_metrics_line, r"dropped the torn last line of .*metrics\.jsonl", [5, 10, 15, 20, 25, 30]),
    (no_checkpoint_but_records, None, [5, 10, 15, 20, 25, 30]),
    (unfinished_saves, r"deleted 2 unfinished checkpoint folder\(s\) older than step 20 .*: "
                       r"(5\.orbax-checkpoint-tmp, 15\.orbax-checkpoint-tmp-1712345|"
                       r"15\.orbax-checkpoint-tmp-1712345, 5\.orbax-checkpoint-tmp)$", [5, 10, 15, 20, 25, 30]),
]


@pytest.mark.parametrize("damage, note, records", RESUMES, ids=[case[0].__name__.replace("_", " ") for case in RESUMES])
def test_a_resume_repairs_what_a_crash_leaves(run_copy, capsys, damage, note, records):
    damage(run_copy)
    with within(HANG_S):
        saejax.train_and_evaluate(tiny_config(**{"train.steps": 30}), run_copy)
    out = capsys.readouterr().out
    if note:
        assert len([line for line in out.splitlines() if re.search(note, line)]) == 1, out
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)  # every line whole
    assert logged_steps(run_copy) == records
    assert latest_checkpoint(run_copy) == 30
    leftovers = sorted(p.name for p in (run_copy / "checkpoints").iterdir() if checkpoint.UNFINISHED in p.name)
    assert leftovers == (["25.orbax-checkpoint-tmp"] if damage is unfinished_saves else [])


def config_json_deleted(workdir: Path, config) -> None:
    (workdir / "config.json").unlink()


def config_json_rewritten_to_the_new_config(workdir: Path, config) -> None:
    from saejax.config import complete

    (workdir / "config.json").write_text(complete(config)[0].to_json_best_effort(indent=2))


def config_json_kept(workdir: Path, config) -> None:
    pass


MISMATCHES = [
    # (what happened to config.json, the refusal)
    (config_json_deleted, r"checkpoints/20 was saved by a run with a different config, which cannot be resumed "
                          r"\(.*sae\.arch: 'relu' -> 'topk'.*\); use a new --workdir$"),
    (config_json_rewritten_to_the_new_config, r"checkpoints/20 was saved by a run with a different config.*"
                                              r"sae\.arch: 'relu' -> 'topk'"),
    (config_json_kept, r"holds a run with a different config.*sae\.arch: 'relu' -> 'topk'"),
]


@pytest.mark.parametrize("change, refusal", MISMATCHES, ids=[case[0].__name__.replace("_", " ") for case in MISMATCHES])
def test_a_checkpoint_of_another_config_is_refused_and_left_as_it_was(run_copy, change, refusal):
    topk = tiny_config(**{"train.steps": 40})
    topk.sae.arch, topk.sae.k, topk.loss.l1 = "topk", 4, 0.0
    change(run_copy, topk)
    before = {p.relative_to(run_copy): p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()}
    with within(HANG_S), pytest.raises(ConfigError, match=refusal) as refused:
        saejax.train_and_evaluate(topk, run_copy)
    assert len(str(refused.value).splitlines()) == 1
    after = {p.relative_to(run_copy): p.read_bytes() for p in sorted(run_copy.rglob("*")) if p.is_file()}
    assert after == before  # config.json, metrics and checkpoints untouched


def test_a_torn_last_line_is_skipped_by_readers_and_other_bad_lines_are_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "split": "tr')
    assert writers.read_metrics(tmp_path) == [{"step": 5, "split": "train"}]
    path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "split": "tr\n{"step": 15, "split": "train"}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 2 is not a JSON record"):
        writers.read_metrics(tmp_path)


# ---------------------------------------------------------------------------------------------
# The same through the command line: the process ends at once with one `error:` line.


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CONFIG)
    return path


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused_at_once_by_every_process(tmp_path, config_file):
    workdir = tmp_path / "run"
    holder = workdir_lock.take(workdir)  # a live owner: this process
    try:
        args = [str(TRAIN), f"--workdir={workdir}", f"--config={config_file}"]
        single = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=HANG_S)
        several = subprocess.run([sys.executable, "-m", "saejax.launch", "--processes=2", "--devices_per_process=1",
                                  "--", *args], capture_output=True, text=True, env=_env(), timeout=2 * HANG_S)
        assert sorted(p.name for p in workdir.iterdir()) == [workdir_lock.LOCK_NAME]  # nothing else written
    finally:
        holder.release()
    refusal = f"is in use by process {os.getpid()} on {HOST} (lock {workdir / workdir_lock.LOCK_NAME})"
    assert single.returncode == 1 and single.stderr.strip().splitlines() == [
        f"error: --workdir={workdir} {refusal}; wait for that run to end or use another --workdir"]
    assert several.returncode == 1 and "Traceback" not in several.stderr, several.stderr[-3000:]
    errors = [line for line in several.stderr.splitlines() if "error: " in line]
    assert len(errors) == 2 and all(refusal in line for line in errors), several.stderr[-3000:]
    assert "killing process" not in several.stderr  # both stopped by themselves, none waited for the other


@pytest.mark.slow
def test_a_read_only_checkpoints_folder_ends_the_process_with_one_line(run_copy, tmp_path, config_file):
    """The folder's own mode, seen by a process that is not exempt from it: as root, one without the
    capability to override file modes (util-linux's setpriv)."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot stop this process's writes")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    (run_copy / "checkpoints").chmod(0o555)
    try:
        command = [*prefix, sys.executable, str(TRAIN), f"--workdir={run_copy}", f"--config={config_file}",
                   "--config.train.steps=40"]
        result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=HANG_S)
    finally:
        (run_copy / "checkpoints").chmod(0o755)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint step 30 could not be written in {run_copy / 'checkpoints'}: Permission denied; "
        "the last good checkpoint (step 20) is kept"], result.stderr[-3000:]
    assert not (run_copy / workdir_lock.LOCK_NAME).exists()
    assert_last_good_checkpoint(run_copy, 20)
