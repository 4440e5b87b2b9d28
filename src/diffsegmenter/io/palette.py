"""The colours every writer uses: the PASCAL VOC palette (the one name for it), class colours and the heat-map map.

Two kinds of colour, for two readers:

- **Data**: the label PNGs of ``segment`` and the prediction PNGs of ``eval`` store class *indices* with
  [`VOC_PALETTE`] (the eval harness through each dataset's palette, which is built from it); [`class_colors`] gives
  those colours by index.
- **People**: overlays, legends and the ``serve`` app colour a class by its *name* ([`name_colors`]): a hash of the
  normalised name picks one of [`NAMED_PALETTE`]'s distinguishable colours, so "cat" has the same colour in every
  image and every run, whatever the other classes are.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence

import numpy as np

from ..classes import class_key

__all__ = [
    "HEATMAP_LUT",
    "IGNORE_INDEX",
    "NAMED_PALETTE",
    "VOC_PALETTE",
    "class_colors",
    "colorize_scores",
    "hex_color",
    "name_color",
    "name_colors",
]

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


NAMED_PALETTE: np.ndarray = np.array(
    [
        # Kelly's colours of maximum contrast (1965) without white, black and grey: readable on a grey image
        [243, 195, 0],  # vivid yellow
        [135, 86, 146],  # strong purple
        [243, 132, 0],  # vivid orange
        [161, 202, 241],  # very light blue
        [190, 0, 50],  # vivid red
        [194, 178, 128],  # greyish yellow
        [0, 136, 86],  # vivid green
        [230, 143, 172],  # strong purplish pink
        [0, 103, 165],  # strong blue
        [249, 147, 121],  # strong yellowish pink
        [96, 78, 151],  # strong violet
        [246, 166, 0],  # vivid orange yellow
        [179, 68, 108],  # strong purplish red
        [220, 211, 0],  # vivid greenish yellow
        [136, 45, 23],  # strong reddish brown
        [141, 182, 0],  # vivid yellowish green
        [101, 69, 34],  # deep yellowish brown
        [226, 88, 34],  # vivid reddish orange
        [43, 61, 38],  # dark olive green
    ],
    dtype=np.uint8,
)
NAMED_PALETTE.flags.writeable = False
"""`np.ndarray` of shape ``(19, 3)``, uint8, read-only: the colours [`name_color`] chooses from."""


def _normalise_name(name: str) -> str:
    return class_key(str(name))  # names that are one class (case, spacing, Unicode form) get one colour


def name_color(name: str) -> tuple[int, int, int]:
    """The fixed colour of a class name: ``NAMED_PALETTE[sha256(normalised name) mod 19]``.

    The name is normalised first (whitespace collapsed, case folded), so ``"Traffic  light"`` and ``"traffic light"``
    share a colour. The same name gets the same colour in every image, run and version of the palette.
    """
    digest = hashlib.sha256(_normalise_name(name).encode("utf-8")).digest()
    return tuple(int(v) for v in NAMED_PALETTE[int.from_bytes(digest[:8], "big") % len(NAMED_PALETTE)])


def name_colors(classes: Sequence[str]) -> np.ndarray:
    """Colours for label values 0..K of one result, keyed by class name (row 0, the background, is black).

    Each class takes [`name_color`]. When two classes of the same list land on the same colour, the later one takes
    the next palette colour not yet used in the list (its legend says which is which); past 19 classes colours
    repeat the golden-ratio hue walk of [`class_colors`].

    Args:
        classes (`Sequence[str]`): the K class names, in label order.

    Returns:
        `np.ndarray` of shape ``(K + 1, 3)``, uint8.
    """
    colors = np.zeros((len(classes) + 1, 3), dtype=np.uint8)
    palette = [tuple(int(v) for v in row) for row in NAMED_PALETTE]
    used: set[tuple[int, int, int]] = set()
    for index, name in enumerate(classes, start=1):
        color = name_color(name)
        if color in used and len(used) < len(palette):
            start = palette.index(color)
            color = next(
                palette[(start + k) % len(palette)]
                for k in range(len(palette))
                if palette[(start + k) % len(palette)] not in used
            )
        elif color in used:
            color = tuple(int(v) for v in class_colors(index + IGNORE_INDEX)[index + IGNORE_INDEX])
        used.add(color)
        colors[index] = color
    return colors


def hex_color(color: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"`` (for HTML legends)."""
    return "#" + "".join(f"{int(v):02x}" for v in color[:3])
