"""``npz``: scores, classes and labels in one compressed NumPy archive (no pickles)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_npz
from ..checks import check_classes, check_labels, check_scores

__all__ = ["NPZ_SCORES_MAX_SIDE", "load_npz", "save_npz"]

NPZ_SCORES_MAX_SIDE = 1024
"""Longest side of the score maps [`save_npz`] stores. Larger images keep full-size labels but store their scores
downscaled (area average) to fit, so an npz stays proportional to the work (classes x the model's resolution, 512
for SD, whose maps are upsampled from 64 x 64) and not to the photo's pixels: an 11000 x 11000 image with 4 classes
stored 1.56 GB of float32 scores before, about 10 MB now."""


def _bounded_scores(scores: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = scores.shape[1:]
    if max_side is None or max(height, width) <= max_side:
        return scores
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    maps = [np.asarray(Image.fromarray(score, mode="F").resize(size, Image.Resampling.BOX)) for score in scores]
    return (
        np.clip(np.stack(maps), 0.0, 1.0).astype(np.float32) if maps else np.zeros((0, size[1], size[0]), np.float32)
    )


def save_npz(
    path: str | os.PathLike,
    scores: np.ndarray,
    classes: Sequence[str],
    labels: np.ndarray,
    max_side: int | None = NPZ_SCORES_MAX_SIDE,
) -> Path:
    """Save scores, classes and labels with `np.savez_compressed` (no pickles, readable with ``allow_pickle=False``).

    Arrays: ``scores`` ``(K, h, w)`` float32, ``classes`` ``(K,)`` unicode string array, ``labels`` ``(H, W)`` (the
    smallest unsigned integer type that holds them; [`load_npz`] returns int32). The scores are stored at the labels'
    size ``h, w = H, W`` when its longer side is at most `max_side`, else downscaled by area averaging to fit (see
    [`NPZ_SCORES_MAX_SIDE`]); upsample them bilinearly to compare with the labels.

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.npz`` (written exactly there; NumPy's
            automatic ``.npz`` suffix does not apply).
        max_side (`int`, *optional*, defaults to [`NPZ_SCORES_MAX_SIDE`]): longest side of the stored scores;
            None = always the labels' size.

    Returns:
        `pathlib.Path`: the written path.
    """
    labels = check_labels(labels)
    classes = check_classes(classes)
    scores = check_scores(scores, len(classes), labels.shape)
    class_array = np.array(classes, dtype=np.str_) if classes else np.zeros((0,), dtype="<U1")
    top = int(labels.max()) if labels.size else 0
    label_type = np.uint8 if top <= 255 and (labels.size == 0 or labels.min() >= 0) else np.int32
    return write_npz(
        path,
        scores=_bounded_scores(scores.astype(np.float32, copy=False), max_side),
        classes=class_array,
        labels=labels.astype(label_type, copy=False),
    )


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by [`save_npz`].

    Returns:
        `dict` with ``"scores"`` (``(K, h, w)`` float32, see [`save_npz`] for their size), ``"classes"``
        (`list[str]`) and ``"labels"`` (``(H, W)`` int32).
    """
    with np.load(path, allow_pickle=False) as data:
        return {
            "scores": data["scores"].astype(np.float32, copy=False),
            "classes": [str(c) for c in data["classes"].tolist()],
            "labels": data["labels"].astype(np.int32, copy=False),
        }
