"""What every writer checks before it writes: the result's arrays, class names and file name stems.

Label convention (see ``docs/design.md``): ``labels`` is ``(H, W)`` int, ``0`` = background, ``i`` =
``classes[i - 1]``; ``scores`` is ``(K, H, W)`` float32 in [0, 1], one map per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .palette import IGNORE_INDEX

__all__ = [
    "ResultLike",
    "check_classes",
    "check_image",
    "check_label_values",
    "check_labels",
    "check_scores",
    "check_stem",
]


class ResultLike(Protocol):
    """What the writers need from a result (``diffsegmenter.SegmentationResult`` satisfies it)."""

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """A 2-D integer (or bool) label map, as an array."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (H, W) array, got shape {labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"`{name}` must hold integers (0 = background, i = classes[i-1]), got dtype {labels.dtype}.")
    return labels


def check_scores(scores: np.ndarray, num_classes: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``(K, H, W)`` float scores in [0, 1] (a small tolerance), one map per class, as float32."""
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"`scores` must be a 3-D (K, H, W) array, got shape {scores.shape}.")
    if scores.shape[0] != num_classes:
        raise ValueError(f"`scores` has {scores.shape[0]} maps but there are {num_classes} classes; they must match.")
    if shape is not None and scores.shape[1:] != shape:
        raise ValueError(f"`scores` maps are {scores.shape[1:]} but `labels` is {shape}; they must match.")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"`scores` must be a float array with values in [0, 1], got dtype {scores.dtype}.")
    scores = scores.astype(np.float32, copy=False)
    if scores.size:
        if not np.isfinite(scores).all():
            raise ValueError("`scores` contains NaN or infinite values.")
        lo, hi = float(scores.min()), float(scores.max())
        if lo < -1e-4 or hi > 1.0 + 1e-4:
            raise ValueError(f"`scores` must lie in [0, 1], got values in [{lo:g}, {hi:g}].")
    return scores


def check_classes(classes: Sequence[str]) -> list[str]:
    """A list (not a single string) of unique class names."""
    if isinstance(classes, str):
        raise TypeError(f"`classes` must be a list of class names, got the single string {classes!r}.")
    classes = [str(c) for c in classes]
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"`classes` must be unique, got duplicates {duplicates}.")
    return classes


def check_label_values(labels: np.ndarray, num_classes: int) -> None:
    """Every label is 0 (background), 1..K or the ignore value."""
    if labels.size == 0:
        return
    valid = (labels >= 0) & ((labels <= num_classes) | (labels == IGNORE_INDEX))
    if not valid.all():
        bad = np.unique(labels[~valid])[:5].tolist()
        raise ValueError(
            f"`labels` holds values {bad} outside 0..{num_classes} (0 = background, i = classes[i-1], "
            f"{IGNORE_INDEX} = ignore) for {num_classes} classes."
        )


def check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image of the labels' size."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"`image_rgb` must be an (H, W, 3) uint8 array, got shape {image.shape} and dtype {image.dtype}; "
            "use diffsegmenter.images.load_image to convert."
        )
    if image.shape[:2] != shape:
        raise ValueError(f"`image_rgb` is {image.shape[:2]} but `labels` is {shape}; they must match.")
    return image


def check_stem(stem: str) -> str:
    """A plain file name stem: no folders, not ``.`` or ``..``."""
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        raise ValueError(f"`stem` must be a plain file name without folders, got {stem!r}.")
    return stem
