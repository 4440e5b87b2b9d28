"""``yolo``: Ultralytics YOLO segmentation labels, ``labels/<stem>.txt``, and a dataset YAML for the run.

As the Ultralytics docs define the format (docs.ultralytics.com/datasets/segment): one text file per image named
like the image, one line per object instance, ``<class-index> <x1> <y1> <x2> <y2> ... <xn> <yn>``, class indexes
from 0 in class order, coordinates normalised by the image's width and height to [0, 1], at least 3 points a line.

How label maps become lines:

- an *instance* is one 8-connected component of a class's pixels; each gives one line (an image with two separate
  circles gives two ``circle`` lines);
- the polygon is the component's outer boundary (OpenCV ``findContours``, ``CHAIN_APPROX_SIMPLE``), through the
  boundary pixels' coordinates ``x / W``, ``y / H`` (Ultralytics' own mask converter's convention);
- a *hole* (another class, or background, enclosed by the component) is kept: one YOLO line is one polygon, so each
  hole's boundary is joined to the outer one by a zero-width cut at their nearest points (what Ultralytics does to
  join COCO multi-polygons); filled with the even-odd or non-zero rule the hole stays empty;
- a component whose boundary has fewer than 3 points (one pixel, or a straight 1-pixel-wide run, diagonal
  included) is written as a zero-width polygon from one end to the other and back (not as its box: the box of a
  diagonal run of L pixels is L x L).

Rasterising the polygons back (``x * W``, ``y * H``, e.g. with PIL ``ImageDraw.polygon``) gives the label map back
except on pixels next to an instance's boundary. The run-level ``dataset.yaml`` holds ``path`` (the output folder),
``train``/``val`` (``images``: put or link the images there, next to ``labels/``, as Ultralytics expects), ``nc``
and ``names``. Needs OpenCV (``pip install 'diffsegmenter[yolo]'``, opencv-python-headless).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...classes import find_class
from ..atomic import write_text

__all__ = ["DATASET_FILE", "SUFFIX", "label_path", "mask_polygons", "read_labels", "write_image", "write_run"]

SUFFIX = ".yolo.txt"
"""The registry's suffix (unique among formats); the file itself is ``labels/<stem>.txt`` ([`label_path`])."""

DATASET_FILE = "dataset.yaml"
"""The run's Ultralytics dataset YAML, in the output folder."""


def label_path(out_dir: Path, stem: str) -> Path:
    """``<out_dir>/labels/<stem>.txt``."""
    return Path(out_dir) / "labels" / f"{stem}.txt"


def _cv2() -> Any:
    from ..._optional import require

    return require("cv2", extra="yolo", feature="the YOLO export (polygons from masks)")


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join `hole` into `outer` with a zero-width cut between their nearest points."""
    d = ((outer[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(d.argmin()), d.shape)
    return np.concatenate([outer[: i + 1], hole[j:], hole[: j + 1], outer[i:]])


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One polygon per 8-connected component of a boolean mask, holes joined in (see the module notes).

    Returns:
        `list[np.ndarray]`: ``(N, 2)`` int pixel coordinates ``(x, y)``, N >= 3, in OpenCV's order of components.
    """
    cv2 = _cv2()
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hierarchy = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    polygons = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:  # a hole; joined into its parent below
            continue
        ring = contour.reshape(-1, 2)
        if len(ring) < 3:  # one pixel, or a straight 1-pixel-wide run (OpenCV gives its two ends)
            ring = np.array([ring[0], ring[-1], ring[0]])  # there and back: a zero-width polygon along the pixels
        child = hierarchy[index][2]
        while child != -1:
            hole = contours[child].reshape(-1, 2)
            ring = _bridge(ring, hole)
            child = hierarchy[child][0]
        polygons.append(ring)
    return polygons


def format_line(class_id: int, polygon: np.ndarray, width: int, height: int) -> str:
    """``"<class> x1 y1 ..."`` with coordinates normalised to [0, 1] (6 decimals)."""
    xy = polygon.astype(np.float64) / np.array([width, height], dtype=np.float64)
    xy = np.clip(xy, 0.0, 1.0)
    return " ".join([str(int(class_id)), *(f"{v:.6f}" for v in xy.reshape(-1))])


def write_image(target: Path, item: Any) -> list[Path]:
    """Write ``labels/<stem>.txt``: a line per instance, class ids from 0 in the run's class order."""
    height, width = item.labels.shape
    run_classes = item.run_classes
    lines = []
    for index, name in enumerate(item.classes, start=1):
        mask = item.labels == index
        if not mask.any():
            continue
        class_id = find_class(name, run_classes)  # compared as class lists compare names
        lines.extend(format_line(class_id, poly, width, height) for poly in mask_polygons(mask))
    return [write_text(target, "".join(line + "\n" for line in lines))]


def read_labels(path: str | os.PathLike) -> list[tuple[int, np.ndarray]]:
    """Parse a YOLO segmentation label file: ``[(class_id, (N, 2) float array of normalised x, y), ...]``.

    Raises:
        ValueError: a line that is not ``<int> x1 y1 x2 y2 x3 y3 ...`` (3 points at least, values in [0, 1]).
    """
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        values = np.array([float(v) for v in fields[1:]])
        if len(values) < 6 or len(values) % 2 or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{path}:{number}: not a YOLO segmentation line")
        out.append((int(fields[0]), values.reshape(-1, 2)))
    return out


def _yaml_str(text: str) -> str:
    import json

    quoted = json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar
    # but YAML reads these three as line breaks, which JSON leaves raw
    return quoted.replace("\u0085", "\\N").replace("\u2028", "\\L").replace("\u2029", "\\P")


def _check_class_ids(images: Sequence[Any], names: list[str]) -> None:
    """Refuse a ``dataset.yaml`` whose names are not what an image's label file numbers (its sidecar's
    ``yolo_classes``): an image written with its own class list, not the run's, would be read as other classes."""
    from ..sidecar import load_sidecar

    for image in images:
        sidecar = Path(image.out_dir) / f"{image.stem}.json"
        try:
            used = load_sidecar(sidecar).get("yolo_classes") if sidecar.is_file() else None
        except ValueError:
            used = None
        if isinstance(used, list) and used != names[: len(used)]:
            raise ValueError(
                f"{label_path(image.out_dir, image.stem)} numbers its classes as {used}, but dataset.yaml would name "
                f"them {names}: write every image with write_result(..., vocabulary=<the run's class list>)"
            )


def write_run(out: Path, images: Sequence[Any], classes: Sequence[str]) -> list[Path]:
    """Write ``<out>/dataset.yaml`` (Ultralytics dataset YAML: path, train/val, nc, names).

    ``train`` and ``val`` list every folder's ``images`` (``images`` and ``a/images`` when a folder input had a
    sub-folder ``a``): each folder's labels are in its ``labels/``, and Ultralytics finds a label by replacing
    ``/images/`` with ``/labels/`` in the image's path.

    Raises:
        ValueError: an image's label file numbers classes otherwise than `classes` (see ``_check_class_ids``).
    """
    names = list(classes)
    _check_class_ids(images, names)
    folders = sorted({_relative_folder(Path(image.out_dir), Path(out)) for image in images}) or ["."]
    image_dirs = [_yaml_str("images" if f == "." else f"{f}/images") for f in folders]
    lines = [
        "# Ultralytics YOLO segmentation dataset written by diffsegmenter (--format yolo).",
        "# Labels are in labels/<stem>.txt next to each image's other outputs; put (or link) each folder's images in",
        "# images/ beside its labels/, with the same stems: Ultralytics finds a label by replacing /images/ with",
        "# /labels/.",
        f"path: {_yaml_str(str(Path(out).resolve()))}",
        f"train: [{', '.join(image_dirs)}]",
        f"val: [{', '.join(image_dirs)}]",
        f"nc: {len(names)}",
        "names:" if names else "names: {}",
        *(f"  {i}: {_yaml_str(name)}" for i, name in enumerate(names)),
    ]
    return [write_text(Path(out) / DATASET_FILE, "\n".join(lines) + "\n")]


def _relative_folder(folder: Path, out: Path) -> str:
    try:
        return folder.relative_to(out).as_posix()
    except ValueError:
        return "."
