"""One process at a time per run directory: an advisory lock on ``RUN/.lock``.

Two `segkit train --resume RUN` of one killed run would otherwise both read "interrupted",
both train and both append epochs to metrics.jsonl. The lock is a ``flock`` on a file in the
run directory, held by the process that trains the run until it ends: the kernel drops it
when that process dies, however it dies (SIGKILL included), so a killed holder never blocks
the next resume and nothing needs cleaning up. The holder writes its pid and host into the
file, so the second process can say who holds it.

Filesystems without ``flock`` (some network mounts) give ``ENOLCK``/``EOPNOTSUPP``: then the
run is not locked, and the pid check of run.json (same machine only) is what remains.
"""

from __future__ import annotations

import errno
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from segkit.ground.errors import SegkitError

LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # run directory -> open descriptor holding its lock (this process)

try:
    import fcntl
except ImportError:  # Windows: no flock; msvcrt locks are per byte range, left out
    fcntl = None


def lock_run(run_dir: str | os.PathLike) -> bool:
    """Take the run directory's lock for this process, or raise a one-line error naming the holder.

    Returns False when the filesystem cannot lock (the run goes on unlocked). Taking a lock this
    process already holds is a no-op. Release with :func:`release_run`.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD or fcntl is None:
        return run_dir in _HELD
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise SegkitError(f"{path}: cannot open the run's lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SegkitError(f"{run_dir}: run is in use by another segkit process ({holder or 'pid unknown'}); "
                              "wait for it to end or stop it before resuming") from None
        return False  # ENOLCK, EOPNOTSUPP: this filesystem does not lock
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[run_dir] = fd
    return True


def release_run(run_dir: str | os.PathLike) -> None:
    """Drop this process's lock on ``run_dir`` (if held); the lock file stays, empty."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    except OSError:  # the run directory was deleted meanwhile
        pass
    os.close(fd)  # closing the descriptor releases the flock


def release_all() -> None:
    """Drop every lock this process holds (the end of a training stage, whatever its outcome)."""
    for run_dir in list(_HELD):
        release_run(run_dir)


@contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold a blocking ``flock`` on ``path`` (created) for the block: processes sharing one store (e.g.
    two runs creating the MLflow SQLite file, whose schema migration is not safe to run twice at
    once) take turns. Without flock (Windows, some network mounts) the block runs unlocked."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no locking on this filesystem
        yield
    finally:
        os.close(fd)
