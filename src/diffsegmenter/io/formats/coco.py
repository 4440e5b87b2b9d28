"""``coco``: one COCO instances file for the whole run, ``<out>/coco_instances.json`` (COCO 1.0 layout).

Per image the writer stores its part, ``<stem>.coco.json`` (the image's size and one annotation per class present);
after the per-image loop [`write_run`] gathers the parts of every finished image of the run (those computed now and
those a resumed run found done) into one file, rewritten whole each run, so it never holds duplicates:

- ``images``: ``id`` (1, 2, ... in input order), ``file_name`` (relative to the input folder), ``width``, ``height``;
- ``categories``: the run's classes in class order, ``id`` 1..K, ``supercategory`` ``""``;
- ``annotations``: one per class present in an image (COCO-Stuff's layout for semantic masks: a class's pixels in
  one RLE mask, parts and holes included), with ``segmentation`` (compressed RLE, ``counts`` as a string),
  ``area`` (pixels), ``bbox`` (``[x, y, w, h]``), ``category_id``, ``iscrowd`` ``0`` (masks to train on, not regions
  to ignore) and ``score`` (mean class score inside the mask).

It loads in ``pycocotools.coco.COCO`` (``annToMask`` gives the label map's mask back) and imports in CVAT
("COCO 1.0") and Label Studio (COCO import) as masks. Needs pycocotools (the ``[rle]`` extra).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..sidecar import load_sidecar, package_version

__all__ = ["RUN_FILE", "SUFFIX", "write_image", "write_run"]

SUFFIX = ".coco.json"
"""The per-image part: ``<stem>.coco.json``."""

#: What :func:`write_run` reads of a part (``<stem>.coco.json``) and of each of its annotations.
PART_KEYS = ("width", "height", "annotations")
ANNOTATION_KEYS = ("name", "segmentation", "area", "bbox", "score")

RUN_FILE = "coco_instances.json"
"""The run's COCO instances file, in the output folder."""


def write_image(target: Path, item: Any) -> list[Path]:
    """Write one image's part: ``{"height", "width", "annotations": [{name, segmentation, area, bbox, score}]}``."""
    from .rle import encode_rle_records

    records = [r for r in encode_rle_records(item.labels, item.scores, item.classes) if r["area"] > 0]
    height, width = item.labels.shape
    payload = {
        "format": "diffsegmenter_coco_part",
        "diffsegmenter_version": package_version(),
        "height": int(height),
        "width": int(width),
        "annotations": [{k: r[k] for k in ("name", "segmentation", "area", "bbox", "score")} for r in records],
    }
    return [write_json(target, payload)]


def write_run(out: Path, images: Sequence[Any], classes: Sequence[str]) -> list[Path]:
    """Gather the parts of `images` (finished images, input order) into ``<out>/coco_instances.json``.

    Classes found in a part but not in `classes` (none, in a ``segment`` run) are appended as further categories.
    """
    from . import run_spelling

    names = list(classes)
    parts = []
    for image in images:
        part = load_sidecar(Path(image.out_dir) / f"{image.stem}{SUFFIX}")
        for ann in part.get("annotations", []):
            ann["name"] = run_spelling(ann["name"], names)  # "cat" is the class list's "Cat": one category, not two
        parts.append((image, part))
    category = {name: i for i, name in enumerate(names, start=1)}
    coco_images, annotations = [], []
    for image_id, (image, part) in enumerate(parts, start=1):
        coco_images.append(
            {"id": image_id, "file_name": image.file_name, "width": part["width"], "height": part["height"]}
        )
        for ann in part.get("annotations", []):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[ann["name"]],
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                    "score": ann["score"],
                }
            )
    payload = {
        "info": {
            "description": "pseudo-labels by diffsegmenter",
            "version": package_version(),
            "date_created": datetime.date.today().isoformat(),
        },
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in category.items()],
    }
    return [write_json(Path(out) / RUN_FILE, payload)]


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO file written by [`write_run`] (any JSON object file)."""
    return load_sidecar(path)
