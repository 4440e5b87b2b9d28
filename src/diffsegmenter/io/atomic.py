"""The one atomic writer, and the one rule for its temporary file names.

Every file the package writes (result formats, sidecars, ``skipped.json``, the eval harness's predictions, score
maps, ``run_config.json`` and metrics) goes through [`atomic_open`]: it writes a hidden temporary file in the target's
folder and moves it into place with `os.replace`, so a crash or a full disk never leaves a half-written target (a
previous version of the target, if any, stays intact).

Temporary names follow one rule, [`temp_path`]: ``.<target name>.<pid>.<8 hex>.tmp``. The process id lets
[`remove_stale_temp_files`] remove only what a dead process left behind, never a file another live run is writing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "is_temp_name",
    "remove_stale_temp_files",
    "temp_path",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
]

logger = logging.getLogger(__name__)

#: The longest file name (one path component), in UTF-8 bytes, that the common file systems take (ext4, APFS; NTFS
#: counts 255 UTF-16 units, never fewer characters).
MAX_NAME_BYTES = 255

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def temp_path(target: str | os.PathLike) -> Path:
    """The temporary file [`atomic_open`] writes before moving it onto `target`: ``.<name>.<pid>.<8 hex>.tmp``, with
    ``<name>`` cut (at a character boundary) so the whole name stays within the 255 bytes file systems allow: a
    target whose own name fits is always writable."""
    target = Path(target)
    suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
    name = target.name
    room = MAX_NAME_BYTES - 1 - len(suffix.encode())
    while len(name.encode("utf-8", "surrogateescape")) > room:
        name = name[:-1]
    return target.with_name(f".{name}{suffix}")


def is_temp_name(name: str) -> int | None:
    """The process id in a temporary file name of [`temp_path`]'s form, or None for any other name."""
    match = _TEMP_RE.match(name)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary binary file next to `path`; on success fsync it and move it onto `path`, else remove it.

    The temporary file is created with ``os.open(..., 0o666)`` so the final file gets the usual umask-based
    permissions (unlike `tempfile`, which creates 0600 files). Parent folders are created as needed.

    Example:
        >>> with atomic_open("out/x.png") as handle:
        ...     image.save(handle, format="PNG")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Write `arrays` as a compressed ``.npz`` (`numpy.savez_compressed`) to `path` atomically; returns the path.

    The archive is built in memory and written in one piece, so a write that fails (a full disk) raises once and
    leaves nothing behind; numpy before 2.2 would leave its half-written zip open, and its clean-up at garbage
    collection would fail again and print a second traceback.
    """
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getbuffer())


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    import numpy as np  # deferred: this module is imported where numpy is not needed

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable.")


def write_json(path: str | os.PathLike, payload: Any, *, ensure_ascii: bool = False, sort_keys: bool = False) -> Path:
    """Write `payload` as indented JSON (2 spaces, a final newline) atomically.

    NumPy values and arrays, paths and sets are converted. `ensure_ascii` and `sort_keys` are passed to `json.dumps`
    (the eval harness's ``run_config.json`` and ``metrics.json`` keep their ASCII-escaped, as-written layout).
    """
    text = json.dumps(payload, indent=2, ensure_ascii=ensure_ascii, sort_keys=sort_keys, default=_json_default)
    return write_text(path, text + "\n")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Remove temporary files that an interrupted run (a dead process) left under `folder` (searched recursively).

    Only names of [`temp_path`]'s form whose process is gone are removed, so a second run writing into the same
    folder at the same time is not disturbed. Process ids are local to a machine: do not use this on a folder that
    processes on other machines write to (the eval harness's shards).

    Returns:
        `int`: how many files were removed.
    """
    removed = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            pid = is_temp_name(name)
            if pid is not None and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(parent, name))
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed
