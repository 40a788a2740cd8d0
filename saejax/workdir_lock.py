"""One run per workdir: a lock file held from the run's first write in the workdir to its end.

    with held(workdir):   # WorkdirError naming the PID and host of another live run there
        ...               # the run; a filesystem error in here ends it as one WorkdirError line

The lock is ``workdir/.lock``: the owner as JSON ``{"host", "pid"}``, and an exclusive ``flock`` on
the file for as long as the owner lives. The kernel drops a flock when its process ends in any way
(an exception, SIGTERM, SIGKILL, a crash), so a lock file whose flock nobody holds is stale: the
next run takes it over and says whose it was. A run deletes the file as it ends (a return, an
exception, or the clean stop after SIGTERM).

Where ``flock`` is not supported (some network filesystems) the recorded owner decides: a live
process on this host keeps the workdir, a dead one's lock is taken over (said so), and one on
another host is refused with a line saying which file to delete if that run is gone.

A multi-process run is one owner: process 0 takes the lock and tells the other processes whether it
got it, so every process of a refused run stops at once with the same line and none waits for a peer.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

import jax
import numpy as np

from saejax.errors import WorkdirError

LOCK_NAME = ".lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                      errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
_MESSAGE_BYTES = 2048  # process 0's refusal, as sent to the other processes


class WorkdirLock:
    """The held lock of one workdir: its path and open file (None where flock is not supported)."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Delete the lock file, then drop the flock (in that order: a run that opened the old file
        meanwhile sees, once it gets the flock, that the file is gone, and opens the new one)."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def this_owner() -> dict:
    """{"host", "pid"} of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _parse_owner(text: str) -> dict | None:
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "a run that is starting (no owner recorded yet)"
    return f"process {owner['pid']} on {owner.get('host')}"


def is_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _refusal(path: Path, owner: dict | None, hint: str = "") -> WorkdirError:
    return WorkdirError(f"--workdir={path.parent} is in use by {_describe(owner)} (lock {path}); wait for that run "
                        f"to end or use another --workdir{hint}")


def _say_taken_over(path: Path, owner: dict) -> None:
    print(f"note: took over the lock {path} of {_describe(owner)}, which ended without releasing it", flush=True)


def _read_owner(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return _parse_owner(os.read(fd, 4096).decode("utf-8", "replace"))


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(this_owner()).encode(), 0)
    os.fsync(fd)


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """(descriptor, whether this call created the file)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, os.O_RDWR), False


def _take_with_flock(path: Path) -> WorkdirLock | None:
    """The lock through flock; None where the filesystem does not support flock."""
    for _ in range(5):  # a retry only when the file was released and deleted while we opened it
        try:
            fd, created = _open_lock_file(path)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise _refusal(path, owner) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_FLOCK:
                raise
            if created:
                path.unlink()
            return None
        if _is_same_file(fd, path):
            previous = _read_owner(fd)
            if previous:
                _say_taken_over(path, previous)
            _write_owner(fd)
            return WorkdirLock(path, fd)
        os.close(fd)
    raise WorkdirError(f"{path}: the lock file keeps changing; is another run starting on --workdir={path.parent}?")


def _take_by_record(path: Path) -> WorkdirLock:
    """The lock without flock: the file is created exclusively; an existing one is taken over only
    when it names a dead process of this host."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _parse_owner(path.read_text(errors="replace")) if path.exists() else None
            if owner is None or owner.get("host") != socket.gethostname():
                raise _refusal(path, owner, f" (if no run uses it, delete {path})") from None
            if is_alive(owner["pid"]):
                raise _refusal(path, owner) from None
            _say_taken_over(path, owner)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        _write_owner(fd)
        os.close(fd)
        return WorkdirLock(path, None)
    raise WorkdirError(f"{path}: the lock file keeps changing; is another run starting on --workdir={path.parent}?")


def take(workdir: str | os.PathLike) -> WorkdirLock:
    """Make `workdir` (if missing) and take its lock in this process; WorkdirError naming the PID and
    host of the live run that holds it, or the workdir when it cannot be made or written."""
    workdir = Path(workdir)
    path = workdir / LOCK_NAME
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        return _take_with_flock(path) or _take_by_record(path)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir}: {e.filename or path}: {e.strerror or e}") from None


def _from_process_0(message: str | None) -> str | None:
    """Process 0's `message` on every process of a multi-process run."""
    if jax.process_count() == 1:
        return message
    from jax.experimental import multihost_utils  # noqa: PLC0415

    data = (message or "").encode()[:_MESSAGE_BYTES]
    sent = np.zeros(_MESSAGE_BYTES, np.uint8)
    sent[:len(data)] = np.frombuffer(data, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(sent)).astype(np.uint8)
    return got.tobytes().rstrip(b"\0").decode("utf-8", "replace") or None


def acquire(workdir: str | os.PathLike) -> WorkdirLock | None:
    """`take` on process 0, its outcome shared with every process of the run: the lock (None on other
    processes), or the same WorkdirError on all of them."""
    lock, refusal = None, None
    if jax.process_index() == 0:
        try:
            lock = take(workdir)
        except WorkdirError as e:
            refusal = str(e)
    try:
        refusal = _from_process_0(refusal)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if refusal:
        raise WorkdirError(refusal if jax.process_index() == 0 else f"process 0: {refusal}")
    return lock


def as_workdir_error(e: OSError, workdir: Path) -> WorkdirError | None:
    """The one-line WorkdirError for a filesystem error `e` met in a run in `workdir` (naming the file),
    or None for other OSErrors (a timeout, a lost connection)."""
    if e.errno not in _FILESYSTEM_ERRNOS and e.filename is None:
        return None
    return WorkdirError(f"{e.filename or workdir}: {e.strerror or e}")


@contextlib.contextmanager
def held(workdir: str | os.PathLike):
    """Hold `workdir`'s lock (`acquire`) for the block, released however it ends; a filesystem
    OSError escaping the block becomes one WorkdirError naming the file (`as_workdir_error`)."""
    workdir = Path(workdir)
    lock = acquire(workdir)
    try:
        yield lock
    except OSError as e:
        translated = as_workdir_error(e, workdir)
        if translated is None:
            raise
        raise translated from None
    finally:
        if lock is not None:
            lock.release()
