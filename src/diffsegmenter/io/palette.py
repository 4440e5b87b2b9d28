"""The colours every writer uses: the PASCAL VOC palette (the one name for it), class colours and the heat-map map.

The label PNGs of ``segment`` and the prediction PNGs of ``eval`` both use [`VOC_PALETTE`] (the eval harness through
each dataset's palette, which is built from it); overlays use the same class colours ([`class_colors`]).
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["HEATMAP_LUT", "IGNORE_INDEX", "VOC_PALETTE", "class_colors", "colorize_scores"]

IGNORE_INDEX = 255
"""Label value kept as "ignore" (PASCAL VOC convention); drawn in the palette's last colour, never blended."""


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: bits of the index are interleaved into the high bits of R, G and B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        red = green = blue = 0
        code = index
        for shift in range(7, -1, -1):
            red |= (code & 1) << shift
            green |= ((code >> 1) & 1) << shift
            blue |= ((code >> 2) & 1) << shift
            code >>= 3
        palette[index] = (red, green, blue)
    palette.flags.writeable = False
    return palette


VOC_PALETTE: np.ndarray = _voc_palette()
"""`np.ndarray` of shape ``(256, 3)``, uint8, read-only: the standard PASCAL VOC colour map (0 = black background,
1 = (128, 0, 0), 2 = (0, 128, 0), ..., 255 = (224, 224, 192) for "ignore")."""

# Anchors of matplotlib's perceptually uniform "inferno" map at t = 0, 0.1, ..., 1 (dark purple -> pale yellow).
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4],
        [22, 11, 57],
        [66, 10, 104],
        [106, 23, 110],
        [147, 38, 103],
        [188, 55, 84],
        [221, 81, 58],
        [243, 120, 25],
        [252, 165, 10],
        [246, 215, 70],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


def _interpolate_lut(anchors: np.ndarray, size: int = 256) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(anchors))
    samples = np.linspace(0.0, 1.0, size)
    channels = [np.interp(samples, positions, anchors[:, c]) for c in range(anchors.shape[1])]
    lut = np.rint(np.stack(channels, axis=1)).astype(np.uint8)
    lut.flags.writeable = False
    return lut


HEATMAP_LUT: np.ndarray = _interpolate_lut(_INFERNO_ANCHORS)
"""`np.ndarray` of shape ``(256, 3)``, uint8, read-only: an "inferno"-like colour map (dark = score 0, pale yellow
= score 1), linearly interpolated from 11 anchor colours; monotone in lightness, readable in grayscale."""


def class_colors(num_classes: int) -> np.ndarray:
    """Colour of each label value 0..num_classes, as used by the label PNG and the overlay.

    Label values 1..254 use [`VOC_PALETTE`]; beyond that (only possible in overlays of very large vocabularies)
    colours come from a golden-ratio hue walk, which keeps neighbours distinct.

    Args:
        num_classes (`int`): number of classes K.

    Returns:
        `np.ndarray` of shape ``(K + 1, 3)``, uint8; row 0 is the background colour (black).
    """
    colors = np.zeros((num_classes + 1, 3), dtype=np.uint8)
    count = min(num_classes + 1, IGNORE_INDEX)
    colors[:count] = VOC_PALETTE[:count]
    for index in range(IGNORE_INDEX, num_classes + 1):
        hue = (index * 0.618033988749895) % 1.0
        colors[index] = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.9)]
    return colors


def colorize_scores(score: np.ndarray) -> np.ndarray:
    """Map one score map to colours with [`HEATMAP_LUT`].

    Args:
        score (`np.ndarray` of shape ``(H, W)``): float values in [0, 1] (clipped).

    Returns:
        `np.ndarray` of shape ``(H, W, 3)``, uint8 RGB.
    """
    index = np.rint(np.clip(np.asarray(score, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return HEATMAP_LUT[index]
