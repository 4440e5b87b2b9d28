"""The output folder: created and checked up front, and locked for the whole run (one run at a time per folder)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError

__all__ = ["LOCK_FILE", "SHARED_LOCK_FILE", "SharedFolderLock", "output_lock", "prepare_out_dir", "shared_output_lock"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".diffsegmenter.lock"
"""Lock file in the output folder; held (``fcntl.flock``) for the whole run."""

SHARED_LOCK_FILE = ".diffsegmenter-shared.lock"
"""Lock file of runs that may share an output folder (the shards of one evaluation): :func:`shared_output_lock`."""


def prepare_out_dir(text: str | os.PathLike) -> Path:
    """Create the output folder and check that it can be written.

    Raises:
        UsageError: it exists and is not a folder, or cannot be written.
    """
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {str(text)!r} exists and is not a folder")
    probe = out / f".diffsegmenter-write-test.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"output folder {str(text)!r} is not writable ({exc.strerror or exc})") from None
    return out


def _fcntl():
    """The ``fcntl`` module, or None where it does not exist (Windows): then runs go on unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    return fcntl


def _open_lock_file(path: Path) -> int:
    """Open (create) a lock file for reading and writing.

    Raises:
        UsageError: it cannot be created.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot create the lock file {str(path)!r} ({exc.strerror or exc})") from None


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``<out>/.diffsegmenter.lock`` for the duration of a run.

    ``fcntl.flock`` is released by the system when the process ends, however it ends (a run killed with ``-9``
    leaves no stale lock, and its rerun resumes). The lock file itself stays (removing it could let two runs lock
    two different files); it records the holder's process id for the message. Where ``fcntl`` does not exist
    (Windows) or the file system does not support locks, the run goes on unlocked, with a note in the log.

    Raises:
        UsageError: another run holds the lock (the message names its process id and the way out).
    """
    fcntl = _fcntl()
    if fcntl is None:  # pragma: no cover - Windows
        logger.info("no file locking on this system: do not run two diffsegmenter commands on one --out")
        yield
        return
    path = out / LOCK_FILE
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.pread(fd, 32, 0).decode().split()[0])})"
            raise UsageError(
                f"another diffsegmenter run{holder} is writing to --out {str(out)!r}; wait for it to finish or "
                "choose another output folder (the lock is released as soon as that run ends, even if it is killed)"
            ) from None
        except OSError as exc:  # e.g. a network file system without locks
            logger.warning("cannot lock %s (%s); make sure no other run writes there", path, exc.strerror or exc)
        else:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclasses.dataclass
class SharedFolderLock:
    """The lock :func:`shared_output_lock` holds: ``exclusive`` while no other run uses the folder, until
    :meth:`share`."""

    fd: int | None
    exclusive: bool

    def share(self) -> None:
        """Let other runs in (their settings must then equal the ones recorded under the exclusive lock)."""
        fcntl = _fcntl()
        if self.fd is not None and self.exclusive and fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        self.exclusive = False


@contextlib.contextmanager
def shared_output_lock(out: Path) -> Iterator[SharedFolderLock]:
    """Hold ``<out>/.diffsegmenter-shared.lock`` for a run that other runs with the same settings may join.

    On entry the lock is exclusive when no other run holds the folder: the run may then record (or replace) the
    folder's settings, and calls :meth:`SharedFolderLock.share` once they are recorded. When other runs hold it, it is
    shared (after waiting for a run that is recording its settings, a moment), and the run must match the settings
    recorded. Like :func:`output_lock`, the system releases it when the process ends however it ends; where locks do
    not exist, ``exclusive`` is True and the run goes on unlocked, with a note in the log.

    Raises:
        UsageError: the lock file cannot be created.
    """
    fcntl = _fcntl()
    if fcntl is None:  # pragma: no cover - Windows
        logger.info("no file locking on this system: do not run two evaluations with other settings on one --out")
        yield SharedFolderLock(None, True)
        return
    path = out / SHARED_LOCK_FILE
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock = SharedFolderLock(fd, True)
        except BlockingIOError:
            lock = SharedFolderLock(fd, False)
        except OSError as exc:  # e.g. a network file system without locks
            logger.warning("cannot lock %s (%s); make sure no other run writes there", path, exc.strerror or exc)
            lock = SharedFolderLock(None, True)
        if lock.fd is not None and not lock.exclusive:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while another run records its settings (a moment)
        yield lock
    finally:
        os.close(fd)  # releases the lock
