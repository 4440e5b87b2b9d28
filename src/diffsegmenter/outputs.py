"""Write segmentation results to disk: palette PNG, overlay, heat maps, COCO RLE JSON, NPZ and a JSON sidecar.

Every writer is atomic: it writes a hidden temporary file in the target's folder and moves it into place with
`os.replace`, so a crash or a full disk never leaves a half-written target behind (a previous version of the
target, if any, stays intact). Each writer has a reader, used by the tests and handy for downstream code.

[`write_result`] writes the requested [`OUTPUT_FORMATS`] for one image under deterministic names and writes the
``<stem>.json`` sidecar last, so the sidecar's existence marks a finished image; [`is_done`] checks that for
resumable batch runs.

Label convention (see ``docs/design.md``): ``labels`` is ``(H, W)`` int, ``0`` = background, ``i`` =
``classes[i - 1]``; ``scores`` is ``(K, H, W)`` float32 in [0, 1], one map per class.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "HEATMAP_LUT",
    "OUTPUT_FORMATS",
    "VOC_PALETTE",
    "ResultLike",
    "OutputPaths",
    "class_colors",
    "colorize_scores",
    "NPZ_SCORES_MAX_SIDE",
    "decode_rle_records",
    "earlier_outputs",
    "encode_rle_records",
    "heatmap_filenames",
    "is_done",
    "load_label_png",
    "load_npz",
    "load_rle_json",
    "load_sidecar",
    "output_paths",
    "package_version",
    "render_overlay",
    "safe_filename",
    "save_heatmaps",
    "save_label_png",
    "save_npz",
    "save_overlay",
    "save_rle_json",
    "save_sidecar",
    "write_result",
]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS: tuple[str, ...] = ("png", "overlay", "heatmaps", "rle", "npz")
"""Formats [`write_result`] can write: ``"png"`` (palette label PNG), ``"overlay"`` (image + colours + legend),
``"heatmaps"`` (one colour-mapped PNG per class), ``"rle"`` (COCO RLE JSON), ``"npz"`` (scores, labels, classes)."""

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


class ResultLike(Protocol):
    """What the writers need from a result (``diffsegmenter.SegmentationResult`` satisfies it)."""

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (H, W) array, got shape {labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"`{name}` must hold integers (0 = background, i = classes[i-1]), got dtype {labels.dtype}.")
    return labels


def _check_scores(scores: np.ndarray, num_classes: int, shape: tuple[int, int] | None = None) -> np.ndarray:
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


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise TypeError(f"`classes` must be a list of class names, got the single string {classes!r}.")
    classes = [str(c) for c in classes]
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"`classes` must be unique, got duplicates {duplicates}.")
    return classes


def _check_label_values(labels: np.ndarray, num_classes: int) -> None:
    if labels.size == 0:
        return
    valid = (labels >= 0) & ((labels <= num_classes) | (labels == IGNORE_INDEX))
    if not valid.all():
        bad = np.unique(labels[~valid])[:5].tolist()
        raise ValueError(
            f"`labels` holds values {bad} outside 0..{num_classes} (0 = background, i = classes[i-1], "
            f"{IGNORE_INDEX} = ignore) for {num_classes} classes."
        )


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"`image_rgb` must be an (H, W, 3) uint8 array, got shape {image.shape} and dtype {image.dtype}; "
            "use diffsegmenter.images.load_image to convert."
        )
    if image.shape[:2] != shape:
        raise ValueError(f"`image_rgb` is {image.shape[:2]} but `labels` is {shape}; they must match.")
    return image


# --------------------------------------------------------------------------------------------------------------
# Atomic writes and small helpers
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary binary file next to `path`; on success fsync it and move it onto `path`, else remove it.

    The temporary file is created with ``os.open(..., 0o666)`` so the final file gets the usual umask-based
    permissions (unlike `tempfile`, which creates 0600 files). Parent folders are created as needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable.")


def _write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    with _atomic_open(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def _save_png(path: str | os.PathLike, image: Image.Image) -> Path:
    with _atomic_open(path) as handle:
        image.save(handle, format="PNG")
    return Path(path)


def package_version() -> str:
    """Installed version of ``diffsegmenter`` (``importlib.metadata``), or ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("diffsegmenter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)})


def safe_filename(name: str, max_length: int = 100) -> str:
    """Turn a class name into a portable file name stem.

    Runs of characters other than letters, digits, ``-``, ``_`` and ``.`` (spaces, slashes, colons...) become one
    ``_``; leading dots and surrounding ``_`` are stripped (no hidden files, no ``..``); Windows device names get a
    trailing ``_``; the result is cut to `max_length` characters. An empty result becomes ``"class"``.

    Args:
        name (`str`): a class name, for example ``"traffic light"`` or ``"person/rider"``.
        max_length (`int`, defaults to 100): maximum length of the result.

    Returns:
        `str`: for example ``"traffic_light"``, ``"person_rider"``. Not necessarily unique; see
        [`heatmap_filenames`].
    """
    stem = re.sub(r"[^\w\-.]+", "_", name, flags=re.UNICODE).lstrip(".").strip("_")[:max_length].rstrip(". ")
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


# --------------------------------------------------------------------------------------------------------------
# Label PNG and sidecar
# --------------------------------------------------------------------------------------------------------------


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Save labels as an indexed (mode ``"P"``) PNG with the PASCAL VOC palette.

    The pixel values are the label values themselves (0 = background, i = classes[i-1], 255 = ignore is kept), so
    the file is both viewable and machine-readable (``np.asarray(Image.open(path))``).

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.png``; parent folders are created.
        labels (`np.ndarray` of shape ``(H, W)``): integer labels in 0..255.

    Returns:
        `pathlib.Path`: the written path.

    Raises:
        ValueError: labels are not 2-D integers, or hold values outside 0..255 (more than 254 classes do not fit a
            palette PNG; use the ``"npz"`` or ``"rle"`` format).
    """
    labels = _check_labels(labels)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError(
            f"A palette PNG holds label values 0..255, got [{int(labels.min())}, {int(labels.max())}]; "
            "use the 'npz' or 'rle' output format for more than 254 classes."
        )
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    image.putpalette(VOC_PALETTE.tobytes(), rawmode="RGB")
    return _save_png(path, image)


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


_SIDECAR_KEYS = ("classes", "prompts", "tau", "image_size", "label_values", "candidates", "diffsegmenter_version")


def save_sidecar(path: str | os.PathLike, result: ResultLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the JSON sidecar describing one result.

    Keys: ``classes``, ``prompts``, ``tau``, ``image_size`` (``{"height": H, "width": W}``), ``label_values``
    (``{"0": "background", "1": classes[0], ...}``), ``candidates`` (filter presence scores or ``null``) and
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
    labels = _check_labels(result.labels)
    classes = list(result.classes)
    candidates = getattr(result, "candidates", None)
    payload: dict[str, Any] = {
        "classes": classes,
        "prompts": list(result.prompts),
        "tau": float(result.tau),
        "image_size": {"height": int(labels.shape[0]), "width": int(labels.shape[1])},
        "label_values": {"0": "background", **{str(i): c for i, c in enumerate(classes, start=1)}},
        "candidates": None if candidates is None else {str(k): float(v) for k, v in dict(candidates).items()},
        "diffsegmenter_version": package_version(),
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(
                f"`extra` key {key!r} clashes with a sidecar key; reserved keys are {list(_SIDECAR_KEYS)}."
            )
        payload[key] = value
    return _write_json(path, payload)


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sidecar written by [`save_sidecar`] (or any JSON object file).

    Returns:
        `dict[str, Any]`: the parsed JSON object.

    Raises:
        ValueError: the file is not valid JSON or not a JSON object.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Sidecar {str(path)!r} is not valid JSON ({exc}); delete it to recompute the image."
        ) from exc
    if not isinstance(payload, dict):
        raise ValueError(f"Sidecar {str(path)!r} must hold a JSON object, got {type(payload).__name__}.")
    return payload


# --------------------------------------------------------------------------------------------------------------
# Overlay
# --------------------------------------------------------------------------------------------------------------


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
    labels = _check_labels(labels)
    classes = _check_classes(classes)
    image = _check_image(image_rgb, labels.shape)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    _check_label_values(labels, len(classes))

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
    return _save_png(path, render_overlay(image_rgb, labels, classes, alpha=alpha))


# --------------------------------------------------------------------------------------------------------------
# Heat maps
# --------------------------------------------------------------------------------------------------------------


def colorize_scores(score: np.ndarray) -> np.ndarray:
    """Map one score map to colours with [`HEATMAP_LUT`].

    Args:
        score (`np.ndarray` of shape ``(H, W)``): float values in [0, 1] (clipped).

    Returns:
        `np.ndarray` of shape ``(H, W, 3)``, uint8 RGB.
    """
    index = np.rint(np.clip(np.asarray(score, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return HEATMAP_LUT[index]


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
    classes = _check_classes(classes)
    scores = _check_scores(scores, len(classes))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for score, name in zip(scores, heatmap_filenames(classes)):
        written.append(_save_png(folder / name, Image.fromarray(colorize_scores(score), mode="RGB")))
    return written


# --------------------------------------------------------------------------------------------------------------
# COCO RLE
# --------------------------------------------------------------------------------------------------------------


def encode_rle_records(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Encode each class's mask as a COCO run-length encoding (pycocotools), JSON-ready.

    Args:
        labels (`np.ndarray` of shape ``(H, W)``, int): 0 = background, i = classes[i-1].
        scores (`np.ndarray` of shape ``(K, H, W)``, float in [0, 1]): per-class score maps.
        classes (`Sequence[str]`): the K class names (unique).

    Returns:
        `list[dict]`: one record per class in `classes` order (also for classes with an empty mask), each with
        ``name`` (str), ``class_index`` (int, the label value i), ``segmentation`` (``{"size": [H, W], "counts":
        str}``, COCO compressed RLE with counts decoded to ASCII), ``area`` (int, pixels), ``bbox`` (``[x, y, w,
        h]`` ints, tight, ``[0, 0, 0, 0]`` when empty) and ``score`` (float, mean score inside the mask, 0.0 when
        empty).
    """
    from ._optional import require  # pycocotools is deferred (keeps `import diffsegmenter` light) and optional

    mask_utils = require("pycocotools.mask", extra="rle", feature="COCO RLE output")

    labels = _check_labels(labels)
    classes = _check_classes(classes)
    scores = _check_scores(scores, len(classes), labels.shape)
    records = []
    for index, name in enumerate(classes, start=1):
        mask = labels == index
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        area = int(mask.sum())
        if area:
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            score = float(scores[index - 1][mask].mean())
        else:
            bbox, score = [0, 0, 0, 0], 0.0
        records.append(
            {
                "name": name,
                "class_index": index,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": area,
                "bbox": bbox,
                "score": score,
            }
        )
    return records


def decode_rle_records(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Decode records from [`encode_rle_records`] (or a loaded RLE JSON's ``"annotations"``) back to masks.

    Returns:
        `dict[str, np.ndarray]`: class name -> ``(H, W)`` bool mask, in record order.

    Raises:
        ValueError: a record lacks ``name``/``segmentation``, or two records share a name.
    """
    from ._optional import require

    mask_utils = require("pycocotools.mask", extra="rle", feature="COCO RLE decoding")

    masks: dict[str, np.ndarray] = {}
    for record in records:
        try:
            name, segmentation = record["name"], record["segmentation"]
            counts = segmentation["counts"]
            rle = {
                "size": list(segmentation["size"]),
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Malformed RLE record (needs name and segmentation.size/counts): {record!r}") from exc
        if name in masks:
            raise ValueError(f"Two RLE records are named {name!r}; names must be unique.")
        with warnings.catch_warnings():
            # pycocotools' Cython RLE object predates NumPy 2's __array__(copy=...) protocol; harmless here.
            warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
            decoded = mask_utils.decode(rle)
        masks[name] = np.ascontiguousarray(decoded.astype(bool))
    return masks


def save_rle_json(path: str | os.PathLike, records: Sequence[Mapping[str, Any]], image_size: tuple[int, int]) -> Path:
    """Save RLE records as JSON: ``{"image_size": {"height", "width"}, "format": "coco_rle", "annotations": [...]}``.

    Args:
        path (`str` or `os.PathLike`): target file, usually ``<stem>.rle.json``.
        records (`Sequence[Mapping]`): from [`encode_rle_records`].
        image_size (`tuple[int, int]`): ``(H, W)``; every record's ``segmentation.size`` must equal it.

    Returns:
        `pathlib.Path`: the written path.
    """
    height, width = (int(v) for v in image_size)
    for record in records:
        size = list(record.get("segmentation", {}).get("size", []))
        if size != [height, width]:
            raise ValueError(
                f"RLE record {record.get('name')!r} has size {size}, but image_size is [{height}, {width}]."
            )
    payload = {
        "image_size": {"height": height, "width": width},
        "format": "coco_rle",
        "diffsegmenter_version": package_version(),
        "annotations": list(records),
    }
    return _write_json(path, payload)


def load_rle_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by [`save_rle_json`]; pass its ``"annotations"`` to [`decode_rle_records`]."""
    return load_sidecar(path)


# --------------------------------------------------------------------------------------------------------------
# NPZ
# --------------------------------------------------------------------------------------------------------------


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
    labels = _check_labels(labels)
    classes = _check_classes(classes)
    scores = _check_scores(scores, len(classes), labels.shape)
    class_array = np.array(classes, dtype=np.str_) if classes else np.zeros((0,), dtype="<U1")
    top = int(labels.max()) if labels.size else 0
    label_type = np.uint8 if top <= 255 and (labels.size == 0 or labels.min() >= 0) else np.int32
    with _atomic_open(path) as handle:
        np.savez_compressed(
            handle,
            scores=_bounded_scores(scores.astype(np.float32, copy=False), max_side),
            classes=class_array,
            labels=labels.astype(label_type, copy=False),
        )
    return Path(path)


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


# --------------------------------------------------------------------------------------------------------------
# One image, every format
# --------------------------------------------------------------------------------------------------------------


def _check_stem(stem: str) -> str:
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        raise ValueError(f"`stem` must be a plain file name without folders, got {stem!r}.")
    return stem


def _check_formats(formats: Sequence[str]) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise ValueError(f"Unknown output format(s) {unknown}; choose from {list(OUTPUT_FORMATS)}.")
    return [f for f in OUTPUT_FORMATS if f in formats]  # canonical order, no duplicates


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Deterministic file names of one image's outputs (``None`` for formats not requested).

    Attributes:
        png (`Path | None`): ``<stem>.png``, the palette label PNG.
        overlay (`Path | None`): ``<stem>.overlay.png``.
        heatmaps (`Path | None`): the folder ``<stem>.heatmaps``.
        heatmap_files (`list[Path]`): ``<stem>.heatmaps/<class>.png`` per class (empty if classes are unknown).
        rle (`Path | None`): ``<stem>.rle.json``.
        npz (`Path | None`): ``<stem>.npz``.
        sidecar (`Path`): ``<stem>.json``, always written, and written last.
    """

    sidecar: Path
    png: Path | None = None
    overlay: Path | None = None
    heatmaps: Path | None = None
    heatmap_files: list[Path] = dataclasses.field(default_factory=list)
    rle: Path | None = None
    npz: Path | None = None

    def files(self) -> list[Path]:
        """Every file (not folder) that must exist for a finished image, sidecar last."""
        singles = [self.png, self.overlay, self.rle, self.npz]
        return [p for p in singles if p is not None] + list(self.heatmap_files) + [self.sidecar]


_SUFFIXES = {"png": ".png", "overlay": ".overlay.png", "heatmaps": ".heatmaps", "rle": ".rle.json", "npz": ".npz"}


def output_paths(
    out_dir: str | os.PathLike, stem: str, formats: Sequence[str], classes: Sequence[str] | None = None
) -> OutputPaths:
    """Deterministic file names of one image's outputs.

    Args:
        out_dir (`str` or `os.PathLike`): output folder.
        stem (`str`): file name stem (no folders), usually the image's name without suffix.
        formats (`Sequence[str]`): subset of [`OUTPUT_FORMATS`].
        classes (`Sequence[str]`, *optional*): needed to list the heat map files.

    Returns:
        [`OutputPaths`].
    """
    out_dir = Path(out_dir)
    stem = _check_stem(stem)
    paths = {f: out_dir / f"{stem}{_SUFFIXES[f]}" for f in _check_formats(formats)}
    heatmap_files: list[Path] = []
    if "heatmaps" in paths and classes is not None:
        heatmap_files = [paths["heatmaps"] / name for name in heatmap_filenames(_check_classes(classes))]
    return OutputPaths(sidecar=out_dir / f"{stem}.json", heatmap_files=heatmap_files, **paths)


def write_result(
    out_dir: str | os.PathLike,
    stem: str,
    image_rgb: np.ndarray | None,
    result: ResultLike,
    formats: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    alpha: float = 0.5,
) -> list[Path]:
    """Write every requested format for one image, then the ``<stem>.json`` sidecar last.

    Names (see [`output_paths`]): ``<stem>.png``, ``<stem>.overlay.png``, ``<stem>.heatmaps/<class>.png``,
    ``<stem>.rle.json``, ``<stem>.npz`` and ``<stem>.json``. Any existing sidecar is removed first, so an
    interrupted rewrite is never mistaken for a finished image by [`is_done`]. Stale ``*.png`` files in
    ``<stem>.heatmaps/`` that do not belong to the current classes are removed. The sidecar gets ``"formats"`` and
    ``"files"`` (names relative to `out_dir`) besides `extra`.

    Args:
        out_dir (`str` or `os.PathLike`): output folder, created if needed.
        stem (`str`): file name stem, no folders (for example ``"2007_000033"``).
        image_rgb (`np.ndarray` of shape ``(H, W, 3)``, uint8, *optional*): the image; required only for
            ``"overlay"``.
        result (`ResultLike`): labels ``(H, W)`` int, scores ``(K, H, W)`` float in [0, 1], classes, prompts, tau.
        formats (`Sequence[str]`): subset of [`OUTPUT_FORMATS`] (order does not matter).
        extra (`Mapping[str, Any]`, *optional*): extra sidecar keys (for example ``{"source": "img.jpg"}``).
        alpha (`float`, defaults to 0.5): overlay opacity.

    Returns:
        `list[pathlib.Path]`: every file written, in writing order; the sidecar is last.

    Raises:
        ValueError: unknown format, bad stem, inconsistent result shapes/values, or ``"overlay"`` without an image.
    """
    wanted = _check_formats(formats)
    labels = _check_labels(result.labels)
    classes = _check_classes(result.classes)
    scores = _check_scores(result.scores, len(classes), labels.shape)
    _check_label_values(labels, len(classes))
    if len(result.prompts) != len(classes):
        raise ValueError(f"result has {len(result.prompts)} prompts for {len(classes)} classes; they must match.")
    extra_keys = dict(extra or {})
    reserved = sorted(set(extra_keys) & {"formats", "files", *_SIDECAR_KEYS})
    if reserved:
        raise ValueError(f"`extra` keys {reserved} are reserved: write_result and save_sidecar record them.")
    if "overlay" in wanted:
        if image_rgb is None:
            raise ValueError("The 'overlay' format needs `image_rgb`; pass the (H, W, 3) uint8 image.")
        image_rgb = _check_image(image_rgb, labels.shape)

    out_dir = Path(out_dir)
    paths = output_paths(out_dir, stem, wanted, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.sidecar.unlink(missing_ok=True)

    written: list[Path] = []
    if paths.png is not None:
        written.append(save_label_png(paths.png, labels))
    if paths.overlay is not None and image_rgb is not None:
        written.append(save_overlay(paths.overlay, image_rgb, labels, classes, alpha=alpha))
    if paths.heatmaps is not None:
        files = save_heatmaps(paths.heatmaps, scores, classes)
        keep = {p.name for p in files}
        for stale in paths.heatmaps.glob("*.png"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        written.extend(files)
    if paths.rle is not None:
        records = encode_rle_records(labels, scores, classes)
        written.append(save_rle_json(paths.rle, records, labels.shape))
    if paths.npz is not None:
        written.append(save_npz(paths.npz, scores, classes, labels))

    sidecar_extra = {"formats": wanted, "files": [p.relative_to(out_dir).as_posix() for p in written], **extra_keys}
    written.append(save_sidecar(paths.sidecar, result, sidecar_extra))
    return written


def earlier_outputs(folder: str | os.PathLike) -> set[str]:
    """Names of the files that earlier runs of [`write_result`] wrote in `folder`, read from their sidecars.

    A sidecar (``<stem>.json`` holding ``diffsegmenter_version`` and ``files``) lists its image's outputs relative to
    its folder (``x.png``, ``x.overlay.png``, ``x.heatmaps/cat.png``...); the sidecar itself is included. Used to
    leave a previous run's outputs out when a folder that holds them is segmented.

    Args:
        folder (`str` or `os.PathLike`): the folder to look in (not searched recursively).

    Returns:
        `set[str]`: POSIX names relative to `folder`; empty when there is no sidecar or the folder cannot be read.
    """
    names: set[str] = set()
    try:
        candidates = [entry for entry in os.scandir(folder) if entry.name.endswith(".json") and entry.is_file()]
    except OSError:
        return names
    for entry in candidates:
        try:
            if entry.stat().st_size > 4 << 20:  # a sidecar is small; do not parse large data files
                continue
            payload = json.loads(Path(entry.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        files = payload.get("files") if isinstance(payload, dict) else None
        if "diffsegmenter_version" in (payload if isinstance(payload, dict) else {}) and isinstance(files, list):
            names.add(entry.name)
            names.update(str(name) for name in files if isinstance(name, str))
    return names


def is_done(out_dir: str | os.PathLike, stem: str, formats: Sequence[str]) -> bool:
    """Whether [`write_result`] finished this image with (at least) these formats.

    True when ``<stem>.json`` exists and parses, and every requested file exists; for ``"heatmaps"`` the per-class
    files are derived from the sidecar's ``classes``.

    Args:
        out_dir (`str` or `os.PathLike`): output folder.
        stem (`str`): file name stem.
        formats (`Sequence[str]`): subset of [`OUTPUT_FORMATS`].

    Returns:
        `bool`.
    """
    paths = output_paths(out_dir, stem, formats)
    if not paths.sidecar.is_file():
        return False
    try:
        classes = load_sidecar(paths.sidecar).get("classes")
    except (OSError, ValueError):
        return False
    if paths.heatmaps is not None:
        if not isinstance(classes, list) or not paths.heatmaps.is_dir():
            return False
        try:
            paths = output_paths(out_dir, stem, formats, classes)
        except (TypeError, ValueError):  # a hand-edited or foreign sidecar
            return False
    return all(p.is_file() for p in paths.files())
