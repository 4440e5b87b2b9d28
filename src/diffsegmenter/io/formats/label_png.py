"""``png``: the label map as an indexed (palette) PNG whose pixel values are the labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_open
from ..checks import check_labels
from ..palette import VOC_PALETTE

__all__ = ["load_label_png", "save_label_png", "save_png"]


def save_png(path: str | os.PathLike, image: Image.Image) -> Path:
    """Save a PIL image as PNG, atomically."""
    with atomic_open(path) as handle:
        image.save(handle, format="PNG")
    return Path(path)


MAX_PNG_CLASSES = 254
"""Classes a label PNG holds: values 1..254; 0 is the background and 255 the ignore value of VOC-style readers."""


def check_png_class_count(num_classes: int) -> None:
    """Refuse, before any work, a class list too long for a label PNG.

    Raises:
        ValueError: more than :data:`MAX_PNG_CLASSES` classes (the last would be written as 255, which readers
            ignore, or not fit at all), with the formats that hold them.
    """
    if num_classes > MAX_PNG_CLASSES:
        raise ValueError(
            f"{num_classes} classes do not fit a label PNG (values 1..{MAX_PNG_CLASSES}; 0 is the background and 255 "
            "the ignore value): leave 'png' out of the formats and use 'npz' or 'rle'"
        )


def save_label_png(path: str | os.PathLike, labels: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Save labels as an indexed (mode ``"P"``) PNG with the PASCAL VOC palette (or `palette`).

    The pixel values are the label values themselves (0 = background, i = classes[i-1], 255 = ignore is kept), so
    the file is both viewable and machine-readable (``np.asarray(Image.open(path))``).

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.png``; parent folders are created.
        labels (`np.ndarray` of shape ``(H, W)``): integer labels in 0..255.
        palette (`np.ndarray` of shape ``(256, 3)``, uint8, *optional*): colours of the label values; defaults to
            [`VOC_PALETTE`] (the eval harness passes its dataset's palette, which is built from it).

    Returns:
        `pathlib.Path`: the written path.

    Raises:
        ValueError: labels are not 2-D integers, or hold values outside 0..255 (more than 254 classes do not fit a
            palette PNG; use the ``"npz"`` or ``"rle"`` format).
    """
    labels = check_labels(labels)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError(
            f"A palette PNG holds label values 0..255, got [{int(labels.min())}, {int(labels.max())}]; "
            "use the 'npz' or 'rle' output format for more than 254 classes."
        )
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    colors = VOC_PALETTE if palette is None else np.ascontiguousarray(palette, dtype=np.uint8)
    image.putpalette(colors.tobytes(), rawmode="RGB")
    return save_png(path, image)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG written by [`save_label_png`] (or any VOC-style indexed PNG).

    Args:
        path (`str` or `os.PathLike`): the PNG file.

    Returns:
        `np.ndarray` of shape ``(H, W)``, int32: the palette indices (label values).

    Raises:
        ValueError: the PNG is not an indexed (mode ``"P"``) or grayscale (``"L"``) image.
    """
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{str(path)!r} is a mode {image.mode!r} image, not an indexed label PNG (mode 'P').")
        return np.asarray(image, dtype=np.int32).copy()
