"""``overlay``: the image with class colours blended in and a legend strip below it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..checks import check_classes, check_image, check_label_values, check_labels
from ..palette import class_colors
from .label_png import save_png

__all__ = ["render_overlay", "save_overlay"]


def render_overlay(
    image_rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str], alpha: float = 0.5
) -> Image.Image:
    """Blend class colours over the image and add a legend strip below it.

    Pixels labelled ``i`` in 1..K become ``(1 - alpha) * image + alpha * colour_i`` (colours from
    [`class_colors`], the same as the label PNG); background (0) and ignore (255) pixels are left untouched. The
    legend lists every class present in `labels` (colour swatch + name), in `classes` order, wrapped into rows in a
    white strip *below* the image, so it never hides pixels; with no class present it reads "no class found".

    Args:
        image_rgb (`np.ndarray` of shape ``(H, W, 3)``, uint8): the image.
        labels (`np.ndarray` of shape ``(H, W)``, int): 0 = background, i = classes[i-1].
        classes (`Sequence[str]`): the K class names.
        alpha (`float`, defaults to 0.5): colour opacity in [0, 1].

    Returns:
        `PIL.Image.Image`: mode ``"RGB"``, size ``(W', H + legend height)`` with ``W' >= W``; the image occupies
        the top-left ``(W, H)`` corner (``W' > W`` only when one legend entry is wider than the image).
    """
    labels = check_labels(labels)
    classes = check_classes(classes)
    image = check_image(image_rgb, labels.shape)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    check_label_values(labels, len(classes))

    colors = class_colors(len(classes))
    blended = image.copy()
    foreground = (labels >= 1) & (labels <= len(classes))
    if foreground.any():
        lookup = labels[foreground].astype(np.int64)
        mixed = (1.0 - alpha) * image[foreground].astype(np.float32) + alpha * colors[lookup].astype(np.float32)
        blended[foreground] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    present = [i for i in range(1, len(classes) + 1) if np.any(labels == i)]
    entries = [(classes[i - 1], tuple(int(v) for v in colors[i])) for i in present]
    return _add_legend(Image.fromarray(blended, mode="RGB"), entries)


def _add_legend(image: Image.Image, entries: list[tuple[str, tuple[int, ...]]]) -> Image.Image:
    width, height = image.size
    font_size = int(min(max(10, height // 40), 32))
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
    path: str | os.PathLike, image_rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str], alpha: float = 0.5
) -> Path:
    """Render an overlay with [`render_overlay`] and save it as an RGB PNG (atomically).

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.overlay.png``.
        image_rgb, labels, classes, alpha: see [`render_overlay`].

    Returns:
        `pathlib.Path`: the written path.
    """
    return save_png(path, render_overlay(image_rgb, labels, classes, alpha=alpha))
