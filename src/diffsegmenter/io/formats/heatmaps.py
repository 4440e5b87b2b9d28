"""``heatmaps``: one colour-mapped PNG per class score map, in a ``<stem>.heatmaps/`` folder."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..checks import check_classes, check_scores
from ..palette import colorize_scores
from .label_png import save_png

__all__ = ["heatmap_filenames", "safe_filename", "save_heatmaps"]

#: Bytes a heat map's file stem may take in UTF-8: names are cut there too, leaving room in the 255 bytes a file
#: name may take for a "-2" suffix, ".png" and a temporary file's suffix.
_MAX_STEM_BYTES = 150
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)})


def safe_filename(name: str, max_length: int = 100) -> str:
    """Turn a class name into a portable file name stem.

    Runs of characters other than letters, digits, ``-``, ``_`` and ``.`` (spaces, slashes, colons...) become one
    ``_``; leading dots and surrounding ``_`` are stripped (no hidden files, no ``..``); Windows device names get a
    trailing ``_``; the result is cut to `max_length` characters. An empty result becomes ``"class"``.

    Args:
        name (`str`): a class name, for example ``"traffic light"`` or ``"person/rider"``.
        max_length (`int`, defaults to 100): maximum length of the result, in characters (and at most 150 bytes
            of UTF-8).

    Returns:
        `str`: for example ``"traffic_light"``, ``"person_rider"``. Not necessarily unique; see
        [`heatmap_filenames`].
    """
    stem = re.sub(r"[^\w\-.]+", "_", name, flags=re.UNICODE).lstrip(".").strip("_")[:max_length]
    while len(stem.encode("utf-8")) > _MAX_STEM_BYTES:  # file systems count bytes (255), and CJK takes 3 each
        stem = stem[:-1]
    stem = stem.rstrip(". ")
    if not stem:
        stem = "class"
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = f"{stem}_"
    return stem


def heatmap_filenames(classes: Sequence[str]) -> list[str]:
    """Unique heat map file names (``"<safe class name>.png"``), one per class, in `classes` order.

    Names that collide after [`safe_filename`] (compared case-insensitively, for macOS and Windows file systems)
    get a ``-2``, ``-3``... suffix in order of appearance, so the mapping is deterministic.

    Args:
        classes (`Sequence[str]`): the class names.

    Returns:
        `list[str]`: file names such as ``["cat.png", "traffic_light.png", "traffic_light-2.png"]``.
    """
    names: list[str] = []
    taken: set[str] = set()
    for cls in classes:
        stem = safe_filename(cls)
        candidate, counter = stem, 1
        while candidate.lower() in taken:
            counter += 1
            candidate = f"{stem}-{counter}"
        taken.add(candidate.lower())
        names.append(f"{candidate}.png")
    return names


def save_heatmaps(folder: str | os.PathLike, scores: np.ndarray, classes: Sequence[str]) -> list[Path]:
    """Save one colour-mapped 8-bit RGB PNG per class score map into `folder`.

    File names come from [`heatmap_filenames`] (``"traffic light"`` -> ``traffic_light.png``). Score 0 maps to
    near-black and 1 to pale yellow ([`HEATMAP_LUT`]); the value of a pixel is
    ``HEATMAP_LUT[round(score * 255)]``.

    Args:
        folder (`str` or `os.PathLike`): target folder, created if needed (even when K = 0).
        scores (`np.ndarray` of shape ``(K, H, W)``): float scores in [0, 1].
        classes (`Sequence[str]`): the K class names.

    Returns:
        `list[pathlib.Path]`: the K written files, in `classes` order.
    """
    classes = check_classes(classes)
    scores = check_scores(scores, len(classes))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for score, name in zip(scores, heatmap_filenames(classes)):
        written.append(save_png(folder / name, Image.fromarray(colorize_scores(score), mode="RGB")))
    return written
