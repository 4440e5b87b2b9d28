"""``overlay``: the image, desaturated, with each class's region tinted and outlined in its colour, and a legend.

Made for people, not programs (the label PNG is the data): colours are keyed by class *name*
([`~diffsegmenter.io.palette.name_colors`]), so a class keeps its colour across images, runs and the ``serve`` app;
the image is turned to grey first so that its own colours never mix with the class colours; every region gets a
solid outline, so a small object stays visible; and small images are enlarged (nearest neighbour) so the picture
and its legend can be read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..checks import check_classes, check_image, check_label_values, check_labels
from ..palette import name_colors
from .label_png import save_png

__all__ = [
    "OVERLAY_MAX_SIDE",
    "OVERLAY_MIN_SIDE",
    "desaturate",
    "outline_mask",
    "render_overlay",
    "save_overlay",
    "upscale_factor",
]

OVERLAY_MIN_SIDE = 256
"""Overlays of images whose shorter side is below this many pixels are enlarged by a whole factor (nearest
neighbour) until it is at least this long: a 64×64 image becomes 256×256."""


OVERLAY_MAX_SIDE = 4096
"""No enlargement takes the longer side past this many pixels: a 2×1000 image is enlarged 4 times, not 128 (a
128,000-pixel-wide overlay of 1.7 GB)."""


def upscale_factor(height: int, width: int, min_side: int = OVERLAY_MIN_SIDE, max_side: int = OVERLAY_MAX_SIDE) -> int:
    """The whole enlargement factor that brings the shorter side to at least ``min_side`` (1 when it already is),
    capped so that the longer side stays at most ``max_side`` (at least 1)."""
    shorter = max(1, min(int(height), int(width)))
    longer = max(1, int(height), int(width))
    wanted = max(1, math.ceil(int(min_side) / shorter)) if min_side and shorter < min_side else 1
    return max(1, min(wanted, int(max_side) // longer)) if max_side else wanted


def desaturate(image_rgb: np.ndarray) -> np.ndarray:
    """The image in grey (ITU-R 601 luma), lightened towards mid grey so dark images still show their tints.

    Returns:
        `np.ndarray` of shape ``(H, W, 3)``, float32 in [0, 255].
    """
    luma = image_rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = 64.0 + 0.6 * luma
    return np.repeat(grey[..., None], 3, axis=2)


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels of a labelled region (1..254) whose 4-neighbour has another label: the region's inner border."""
    border = np.zeros(labels.shape, dtype=bool)
    diff_v = labels[1:, :] != labels[:-1, :]
    diff_h = labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= diff_v
    border[:-1, :] |= diff_v
    border[:, 1:] |= diff_h
    border[:, :-1] |= diff_h
    return border & (labels >= 1) & (labels < 255)


def render_overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.5,
    *,
    min_side: int = OVERLAY_MIN_SIDE,
) -> Image.Image:
    """Draw the classes over the desaturated image and add a legend strip below it.

    The image is enlarged by [`upscale_factor`] (nearest neighbour; labels alike) and turned grey
    ([`desaturate`]). Pixels labelled ``i`` in 1..K become ``(1 - alpha) * grey + alpha * colour_i``, with
    ``colour_i`` fixed by the class name ([`~diffsegmenter.io.palette.name_colors`]); each region's border
    ([`outline_mask`], two pixels wide once enlarged) is drawn in the full colour. Background (0) and ignore (255)
    pixels stay grey. The legend lists every class present in `labels` (swatch + name), in `classes` order, wrapped
    into rows in a white strip *below* the image, so it never hides pixels; with no class present it reads "no class
    found".

    Args:
        image_rgb (`np.ndarray` of shape ``(H, W, 3)``, uint8): the image.
        labels (`np.ndarray` of shape ``(H, W)``, int): 0 = background, i = classes[i-1].
        classes (`Sequence[str]`): the K class names.
        alpha (`float`, defaults to 0.5): tint opacity in [0, 1] (0: grey image and outlines only).
        min_side (`int`, defaults to [`OVERLAY_MIN_SIDE`]): enlarge until the shorter side is at least this; 0
            keeps the image's size.

    Returns:
        `PIL.Image.Image`: mode ``"RGB"``, size ``(W', s * H + legend height)`` with ``s`` the enlargement factor
        and ``W' >= s * W``; the image occupies the top-left ``(s * W, s * H)`` corner (``W' > s * W`` only when one
        legend entry is wider than the image).
    """
    labels = check_labels(labels)
    classes = check_classes(classes)
    image = check_image(image_rgb, labels.shape)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    check_label_values(labels, len(classes))

    scale = upscale_factor(*labels.shape, min_side=min_side)
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        labels = np.repeat(np.repeat(labels, scale, axis=0), scale, axis=1)
    colors = name_colors(classes).astype(np.float32)
    canvas = desaturate(image)
    foreground = (labels >= 1) & (labels <= len(classes))
    if foreground.any():
        lookup = labels[foreground].astype(np.int64)
        canvas[foreground] = (1.0 - alpha) * canvas[foreground] + alpha * colors[lookup]
        border = outline_mask(np.where(foreground, labels, 0))
        if scale == 1:  # keep thin objects: outline only the outer pixel ring then
            canvas[border] = colors[labels[border].astype(np.int64)]
        else:
            thick = border | _shrink_border(border, labels, scale)
            canvas[thick] = colors[labels[thick].astype(np.int64)]
    blended = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    present = [i for i in range(1, len(classes) + 1) if np.any(labels == i)]
    entries = [(classes[i - 1], tuple(int(v) for v in colors[i])) for i in present]
    return _add_legend(Image.fromarray(blended, mode="RGB"), entries)


def _shrink_border(border: np.ndarray, labels: np.ndarray, scale: int) -> np.ndarray:
    """The ring just inside `border` (same label), for an outline of about ``scale // 2`` pixels."""
    extra = np.zeros_like(border)
    grown = border.copy()
    for _ in range(max(1, scale // 2) - 1):
        step = np.zeros_like(grown)
        step[1:, :] |= grown[:-1, :] & (labels[1:, :] == labels[:-1, :])
        step[:-1, :] |= grown[1:, :] & (labels[:-1, :] == labels[1:, :])
        step[:, 1:] |= grown[:, :-1] & (labels[:, 1:] == labels[:, :-1])
        step[:, :-1] |= grown[:, 1:] & (labels[:, :-1] == labels[:, 1:])
        grown |= step
        extra |= step
    return extra & (labels >= 1)


def _add_legend(image: Image.Image, entries: list[tuple[str, tuple[int, ...]]]) -> Image.Image:
    width, height = image.size
    font_size = int(min(max(14, height // 24), 32))
    font = ImageFont.load_default(size=font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ascent_box = measure.textbbox((0, 0), "Hgjy", font=font)
    line_height = ascent_box[3] - min(ascent_box[1], 0)
    swatch = line_height
    pad = max(4, font_size // 2)
    if entries:
        texts = [name for name, _ in entries]
        widths = [swatch + pad // 2 + int(np.ceil(measure.textlength(text, font=font))) for text in texts]
    else:
        texts = ["no class found"]
        widths = [int(np.ceil(measure.textlength(texts[0], font=font)))]
    canvas_width = max(width, max(widths) + 2 * pad)

    # Flow the entries into rows that fit the canvas width.
    rows: list[list[int]] = [[]]
    cursor = pad
    for index, entry_width in enumerate(widths):
        if rows[-1] and cursor + entry_width > canvas_width - pad:
            rows.append([])
            cursor = pad
        rows[-1].append(index)
        cursor += entry_width + 2 * pad
    strip_height = pad + len(rows) * (line_height + pad)

    canvas = Image.new("RGB", (canvas_width, height + strip_height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row_index, row in enumerate(rows):
        y = height + pad + row_index * (line_height + pad)
        x = pad
        for index in row:
            if entries:
                _, color = entries[index]
                draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=color, outline=(0, 0, 0))
                draw.text((x + swatch + pad // 2, y), texts[index], fill=(0, 0, 0), font=font)
            else:
                draw.text((x, y), texts[index], fill=(96, 96, 96), font=font)
            x += widths[index] + 2 * pad
    return canvas


def save_overlay(
    path: str | os.PathLike,
    image_rgb: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.5,
    *,
    min_side: int = OVERLAY_MIN_SIDE,
) -> Path:
    """Render an overlay with [`render_overlay`] and save it as an RGB PNG (atomically).

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.overlay.png``.
        image_rgb, labels, classes, alpha, min_side: see [`render_overlay`].

    Returns:
        `pathlib.Path`: the written path.
    """
    return save_png(path, render_overlay(image_rgb, labels, classes, alpha=alpha, min_side=min_side))
