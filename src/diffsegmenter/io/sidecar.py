"""The ``<stem>.json`` sidecar that describes one result (and marks its image as finished), and the package version
every JSON output records."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..classes import BACKGROUND
from .atomic import write_json
from .checks import ResultLike, check_labels
from .paths import base_name

__all__ = [
    "SIDECAR_KEYS",
    "load_own_sidecar",
    "load_sidecar",
    "package_version",
    "save_sidecar",
    "sidecar_kind",
    "sidecar_owner",
    "source_digest",
    "source_identity",
    "source_name",
]


def package_version() -> str:
    """Installed version of ``diffsegmenter`` (``importlib.metadata``), or ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("diffsegmenter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


SIDECAR_KEYS = (
    "classes",
    "prompts",
    "tau",
    "image_size",
    "label_values",
    "candidates",
    "filter_best_guess",
    "diffsegmenter_version",
)


def save_sidecar(path: str | os.PathLike, result: ResultLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the JSON sidecar describing one result.

    Keys: ``classes``, ``prompts``, ``tau``, ``image_size`` (``{"height": H, "width": W}``), ``label_values``
    (``{"0": "background", "1": classes[0], ...}``), ``candidates`` (filter presence scores or ``null``),
    ``filter_best_guess`` (when a filter ran: no class reached its threshold, the best one was kept) and
    ``diffsegmenter_version``, followed by the keys of `extra` (for example the source path, config or formats).

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.json``.
        result (`ResultLike`): the result (``labels`` is used only for its size).
        extra (`Mapping[str, Any]`, *optional*): more JSON-serialisable keys (NumPy values and paths are
            converted).

    Returns:
        `pathlib.Path`: the written path.

    Raises:
        ValueError: `extra` reuses one of the keys above.
    """
    labels = check_labels(result.labels)
    classes = list(result.classes)
    candidates = getattr(result, "candidates", None)
    payload: dict[str, Any] = {
        "classes": classes,
        "prompts": list(result.prompts),
        "tau": float(result.tau),
        "image_size": {"height": int(labels.shape[0]), "width": int(labels.shape[1])},
        "label_values": {"0": BACKGROUND, **{str(i): c for i, c in enumerate(classes, start=1)}},
        "candidates": None if candidates is None else {str(k): float(v) for k, v in dict(candidates).items()},
        "diffsegmenter_version": package_version(),
    }
    if candidates is not None:  # a filter ran: whether it only guessed (no class reached its threshold)
        payload["filter_best_guess"] = bool(getattr(result, "filter_best_guess", False))
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(
                f"`extra` key {key!r} clashes with a sidecar key; reserved keys are {list(SIDECAR_KEYS)}."
            )
        payload[key] = value
    return write_json(path, payload)


#: Bytes read from each end of an input file for :func:`source_digest`.
DIGEST_SPAN = 1 << 16


def source_digest(source: str | os.PathLike) -> str | None:
    """What tells one input file from another under the same name, cheaply: its size and a BLAKE2b digest of its
    first and last 64 KiB (``"<bytes>-<hex>"``); None when it cannot be read. Two images that share a name but not
    their pixels differ there (a file read in place, e.g. re-saved, counts as another file)."""
    identity = _read_identity(source)
    return None if identity is None else identity[0]


def _read_identity(source: str | os.PathLike) -> tuple[str, os.stat_result] | None:
    """:func:`source_digest` and the file's status, from one opening of the file; None when it cannot be read."""
    try:
        with open(source, "rb") as f:
            stat = os.fstat(f.fileno())
            digest = hashlib.blake2b(f.read(DIGEST_SPAN), digest_size=16)
            if stat.st_size > DIGEST_SPAN:
                f.seek(max(DIGEST_SPAN, stat.st_size - DIGEST_SPAN))
                digest.update(f.read(DIGEST_SPAN))
    except OSError:
        return None
    return f"{stat.st_size}-{digest.hexdigest()}", stat


def source_identity(source: str | os.PathLike) -> dict[str, Any]:
    """The sidecar keys that tie results to their input file: ``source_digest`` (:func:`source_digest`) and the
    file's ``source_size`` and ``source_mtime_ns`` (a resume compares those first and reads the file only when they
    differ); empty when the file cannot be read."""
    identity = _read_identity(source)
    if identity is None:
        return {}
    digest, stat = identity
    return {"source_digest": digest, "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def sidecar_kind(sidecar: dict[str, Any]) -> str | None:
    """Which command wrote a sidecar: ``"edit"`` (it names its ``edit``ed image), ``"segment"`` (it lists its
    ``formats``; ``demo`` writes the same), or None when it says neither (not compared)."""
    if "edit" in sidecar or "edited" in sidecar:
        return "edit"
    if "formats" in sidecar:
        return "segment"
    return None


def source_name(recorded: str | os.PathLike[str], *, composed: bool = True) -> str:
    """The file name of a recorded or given input path, as sidecars compare them: written on any system (a path
    with a backslash is a Windows one: ``in1\\a.png`` is ``a.png``) and in Unicode's composed form (macOS writes
    ``é`` as ``e`` plus an accent; a copy may turn it into one character). ``composed=False``: as spelt (to find
    the file)."""
    name = base_name(os.fspath(recorded))
    return unicodedata.normalize("NFC", name) if composed else name


def sidecar_owner(path: Path, source: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Whose results the sidecar at ``path`` describes.

    Returns:
        ``(sidecar, None)`` when it records ``source`` as its input: the same file name and, where it records a
        :func:`source_digest`, the same content (the size and modification time, when they match, stand for it; a
        file that cannot be read now is judged by its name); ``(None, other)`` when it records another input file
        (``other``: that input as recorded); ``(None, None)`` when there is none, it cannot be read, or it records
        this very file as it was before it changed (its results are stale: redo them).
    """
    try:
        sidecar = load_sidecar(path) if path.is_file() else None
    except (OSError, ValueError):
        return None, None
    if not sidecar:
        return None, None
    recorded = str(sidecar.get("source", ""))
    if source_name(recorded) != source_name(Path(source).name):
        return None, recorded
    digest = sidecar.get("source_digest")
    try:
        stat = os.stat(source)
    except OSError:
        return sidecar, None
    if digest is None or (sidecar.get("source_size"), sidecar.get("source_mtime_ns")) == (
        stat.st_size,
        stat.st_mtime_ns,
    ):
        return sidecar, None
    now = source_digest(source)
    if now is None or now == digest:
        return sidecar, None
    return (None, None) if _same_file_path(recorded, source) else (None, recorded)


def _same_file_path(recorded: str, source: Path) -> bool:
    try:
        return Path(recorded).resolve() == Path(source).resolve()
    except (OSError, RuntimeError):
        return False


def load_own_sidecar(path: Path, source: Path) -> dict[str, Any] | None:
    """The sidecar at ``path`` when it records ``source`` as its input (:func:`sidecar_owner`); None when there is
    none, it cannot be read, or it belongs to another input that took the same output name."""
    return sidecar_owner(path, source)[0]


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sidecar written by [`save_sidecar`] (or any JSON object file).

    Returns:
        `dict[str, Any]`: the parsed JSON object.

    Raises:
        ValueError: the file is not valid JSON or not a JSON object.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Sidecar {str(path)!r} is not valid JSON ({exc}); delete it to recompute the image."
        ) from exc
    if not isinstance(payload, dict):
        raise ValueError(f"Sidecar {str(path)!r} must hold a JSON object, got {type(payload).__name__}.")
    return payload
