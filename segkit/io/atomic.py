"""The one way segkit writes a file: a temporary file next to the target, committed in one step.

Every output (RLE CSV, GeoJSON, TIFF, PNG), every run-directory file (config.yaml, run.json,
metrics.jsonl, preprocess.json, plots) and every checkpoint is written through
:class:`AtomicFile`, so a reader never sees half a file and an error or Ctrl-C leaves the old
file (or nothing) behind.

- The temporary file is ``.NAME.PID.XXXX.tmp`` in the target's folder (same filesystem, so the
  commit is a rename); the pid says which process owns it, so a later start can tell a stale
  temporary file (its owner is gone) from one still being written.
- ``overwrite=True`` commits with ``os.replace``. ``overwrite=False`` refuses an existing
  target up front (before slow work starts) and commits with ``os.link``, which fails if the
  target appeared meanwhile: two processes writing one path cannot both "win".
- ``durable=True`` also fsyncs the file and its folder (checkpoints: survive a power cut).
- Files get the mode the umask gives (mkstemp alone would leave them 0600).
- Missing parent folders of an output are created (every command, every output path), and
  removed again when the file is discarded and they are still empty: a failed command leaves
  no empty folders behind. :func:`check_output` refuses a path before slow work starts.
- :func:`staged_commits` holds every commit made inside it back to its end: one invocation
  (e.g. `segkit infer` over many images) writes all its outputs or none.
- :func:`remove_stale_temps` removes the temporary files of processes that are gone (SIGKILL,
  power loss); commands call it on the folders they are about to write.
- A write that fails for the disk's sake (full, quota, ulimit -f, read-only, vanished folder)
  becomes one SegkitError naming the final path and the reason (:func:`disk_fault`), measured
  before the temporary file is removed: torch, tifffile and SQLite report a full disk in their
  own words ("unexpected pos", "N requested and M written", "disk I/O error").
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from segkit.ground.errors import SegkitError


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()
TEMP_SUFFIX = ".tmp"
# .NAME.PID.XXXX.tmp, or .levels.tmp (OME scratch); mkstemp's random part has no dots, NAME may
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+(?:\.levels)?\.tmp$")
# the commits held back by the innermost staged_commits() block (None: commit at once)
_STAGE: ContextVar[list | None] = ContextVar("segkit_staged_commits", default=None)


def temp_prefix(path: Path) -> str:
    """The name prefix of the temporary files that :class:`AtomicFile` makes for ``path``."""
    return f".{path.name}.{os.getpid()}."


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output path before any work: an existing file without ``overwrite``, a folder, or a
    parent that cannot become a folder (a file on the way, an unwritable folder). Missing parent
    folders are fine: :class:`AtomicFile` creates them."""
    path = Path(path)
    if path.is_dir():
        raise SegkitError(f"{path}: is a folder, expected a file path")
    if path.exists() and not overwrite:
        raise SegkitError(f"{path}: exists (use --overwrite)")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SegkitError(f"{existing}: is a file, so the output folder {path.parent} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SegkitError(f"{existing}: output folder is not writable")
    return path


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(exist_ok=True)
        except OSError as exc:
            raise SegkitError(f"{made}: cannot make the output folder ({exc.strerror})") from None
    return missing


class AtomicFile:
    """A temporary file next to ``path`` that becomes ``path`` on :meth:`commit`.

    Refuses an existing ``path`` unless ``overwrite`` (:func:`check_output`), so a bad output path
    fails before any (slow) work starts. Missing parent folders are created; :meth:`discard`
    removes the ones it created if they are still empty. ``make_parents`` is accepted for older
    callers (folders are always made). Only a hard kill (SIGKILL, power loss) can leave the
    temporary file behind.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, *, durable: bool = False,
                 make_parents: bool = True):
        self.path = check_output(path, overwrite)
        self.overwrite, self.durable = bool(overwrite), bool(durable)
        folder = self.path.parent
        self.made_folders = _make_folders(folder)
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=TEMP_SUFFIX, dir=folder)
        except OSError as exc:
            self._remove_made_folders()
            raise SegkitError(f"{folder}: output folder is not writable ({exc.strerror})") from None
        os.close(fd)
        self.tmp = Path(tmp)
        self.done = False

    def _remove_made_folders(self) -> None:
        for folder in self.made_folders:  # deepest first; a folder something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break

    def commit(self) -> Path:
        """Make ``path``; inside :func:`staged_commits` this is held back until the block ends."""
        if self.done:
            return self.path
        stage = _STAGE.get()
        if stage is not None:
            if self not in stage:
                stage.append(self)
            return self.path
        return self._commit_now()

    def _commit_now(self) -> Path:
        if self.done:
            return self.path
        os.chmod(self.tmp, 0o666 & ~_UMASK)
        try:
            if self.durable:
                with open(self.tmp, "rb+") as handle:
                    os.fsync(handle.fileno())  # a full disk may only show here (delayed allocation)
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                self._link_exclusive()
        except BaseException as exc:
            self.fail(exc)
            raise
        self.done = True
        if self.durable:
            _fsync_dir(self.path.parent)
        return self.path

    def _link_exclusive(self) -> None:
        """Create ``path`` only if it does not exist (a rename would silently replace it)."""
        try:
            os.link(self.tmp, self.path)
        except FileExistsError:
            raise SegkitError(f"{self.path}: appeared while segkit was writing it (another process?); "
                              "not replaced (use --overwrite)") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # filesystems without hard links: the existence check and the rename are two steps
            if self.path.exists():
                raise SegkitError(f"{self.path}: appeared while segkit was writing it; not replaced "
                                  "(use --overwrite)") from None
            os.replace(self.tmp, self.path)
            return
        self.tmp.unlink()

    def fail(self, exc: BaseException) -> None:
        """Discard the temporary file; a write that failed for the disk's sake raises one line."""
        fault = disk_fault(self.path, self.tmp, exc) if isinstance(exc, Exception) and not self.done else None
        self.discard()
        if fault is not None:
            raise fault from None

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.tmp.unlink(missing_ok=True)
            self._remove_made_folders()

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.fail(exc)


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False, **options) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; it becomes ``path`` on success.

    Any exception (KeyboardInterrupt included) removes the temporary file and leaves an
    existing ``path`` untouched. ``options``: ``durable``, ``make_parents`` of AtomicFile.
    """
    atomic = AtomicFile(path, overwrite, **options)
    try:
        yield atomic.tmp
    except BaseException as exc:
        atomic.fail(exc)
        raise
    atomic.commit()


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True, **options) -> Path:
    """``data`` as the whole content of ``path``, atomically (run files overwrite by default)."""
    with atomic_path(path, overwrite, **options) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True, **options) -> Path:
    """``text`` (UTF-8) as the whole content of ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite, **options)


def write_json(path: str | os.PathLike, data, *, overwrite: bool = True, **options) -> Path:
    """``data`` as indented JSON with a final newline, atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n", overwrite=overwrite, **options)


@contextmanager
def staged_commits() -> Iterator[list]:
    """Hold back every :class:`AtomicFile` commit made in the block; commit them all when it ends.

    On an error (or Ctrl-C, SIGTERM) inside the block every held file is discarded, so nothing
    of the invocation is written. At the end, exclusive commits (overwrite=False) go first: if
    one of them finds its path taken meanwhile, the ones already made are removed again before
    the error is raised (replacing commits cannot be undone, so they go last).
    """
    pending: list[AtomicFile] = []
    token = _STAGE.set(pending)
    try:
        yield pending
    except BaseException:
        _STAGE.reset(token)
        for atomic in reversed(pending):  # the last made first, so folders made for them empty out in order
            atomic.discard()
        raise
    _STAGE.reset(token)
    made: list[Path] = []
    try:
        for atomic in sorted(pending, key=lambda a: a.overwrite):
            atomic._commit_now()
            if not atomic.overwrite:
                made.append(atomic.path)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        for atomic in reversed(pending):
            atomic.discard()
        raise


@contextmanager
def immediate_commits() -> Iterator[None]:
    """Commit at once inside the block, also within :func:`staged_commits` (a writer's own scratch
    file that it reads back before its output is complete, e.g. the OME-TIFF levels)."""
    token = _STAGE.set(None)
    try:
        yield
    finally:
        _STAGE.reset(token)


# errno -> what the user reads; other errors are told by the state of the disk (disk_fault)
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for this process (ulimit -f)", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EIO: "input/output error",
               errno.ENOENT: "its folder disappeared (deleted or moved?)"}
LOW_SPACE_BYTES = 2**20  # less free than this after a failed write: the disk is what failed


def disk_fault(path: str | os.PathLike, tmp: str | os.PathLike | None, exc: BaseException) -> SegkitError | None:
    """A one-line SegkitError when writing ``path`` (through ``tmp``) failed for the disk's sake, else None.

    An OSError's errno says it directly; any other writer error (torch's "unexpected pos", tifffile's
    "N requested and M written", SQLite's "disk I/O error" or "database or disk is full") counts as a
    full disk when the folder has less than LOW_SPACE_BYTES free, or as ``ulimit -f`` when the
    temporary file reached this process's file-size limit. Call it before removing ``tmp``.
    """
    path = Path(path)
    if isinstance(exc, SegkitError):
        return None  # already one line
    reason = DISK_ERRNOS.get(exc.errno) if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT and path.parent.is_dir():
        reason = None  # some other file was missing, not our folder
    if reason is None and (isinstance(exc, (OSError, RuntimeError)) or "disk" in str(exc).lower()):
        reason = _disk_state(path.parent, tmp)
    if reason is None:
        return None
    kept = "the previous file is kept" if path.exists() else "nothing written under that name"
    return SegkitError(f"{path}: cannot write it: {reason}; {kept}")


def disk_error_line(exc: BaseException) -> str | None:
    """One line for an error that a full or failing disk caused deep inside a library (SQLite under
    Optuna or MLflow, a writer that is not segkit's), else None. Follows the exception's chain."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS and exc.errno != errno.ENOENT:
            where = exc.filename or "a file being written"
            return f"{where}: {DISK_ERRNOS[exc.errno]}"
        text = str(exc).splitlines()[0].lower() if str(exc) else ""
        if "database or disk is full" in text:
            return ("a SQLite database (the Optuna study or the MLflow store): database or disk is full; "
                    "free space and run the command again (it resumes)")
        exc, seen = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None), seen + 1
    return None


def _disk_state(folder: Path, tmp) -> str | None:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # vanished folder; Windows has no statvfs
        return None if folder.is_dir() else DISK_ERRNOS[errno.ENOENT]
    if stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES:
        return DISK_ERRNOS[errno.ENOSPC]
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and tmp is not None and os.path.getsize(tmp) >= soft - 2**16:
            return DISK_ERRNOS[errno.EFBIG]
    except (ImportError, OSError):
        pass
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def remove_stale_temps(*folders: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.PID.XXXX.tmp`` files in ``folders`` whose process is gone; returns them.

    A process killed with SIGKILL (or by a power cut) cannot remove its temporary file; the next
    segkit start in that folder does. Files of live processes are left alone. The pid is checked
    on this machine: on a folder shared by several machines a file of a process running
    elsewhere could be taken for stale, so run a cleanup there only from one machine at a time.
    """
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # missing or unreadable folder: nothing of ours there
            continue
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False) or _pid_alive(int(match.group(1))):
                continue
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def output_folders(*paths) -> list[Path]:
    """The folders of output paths or path templates ({id} allowed in the file name; None skipped)."""
    return sorted({Path(str(p)).parent for p in paths if p})
