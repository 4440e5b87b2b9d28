"""``rle``: each class's mask as COCO run-length encoding (pycocotools, the ``[rle]`` extra), in one JSON file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..checks import check_classes, check_labels, check_scores
from ..sidecar import load_sidecar, package_version

__all__ = ["decode_rle_records", "encode_rle_records", "load_rle_json", "save_rle_json"]


def encode_rle_records(labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Encode each class's mask as a COCO run-length encoding (pycocotools), JSON-ready.

    Args:
        labels (`np.ndarray` of shape ``(H, W)``, int): 0 = background, i = classes[i-1].
        scores (`np.ndarray` of shape ``(K, H, W)``, float in [0, 1]): per-class score maps.
        classes (`Sequence[str]`): the K class names (unique).

    Returns:
        `list[dict]`: one record per class in `classes` order (also for classes with an empty mask), each with
        ``name`` (str), ``class_index`` (int, the label value i in ``labels``: the image's own numbering, not the
        run-wide one of the label PNG), ``segmentation`` (``{"size": [H, W], "counts":
        str}``, COCO compressed RLE with counts decoded to ASCII), ``area`` (int, pixels), ``bbox`` (``[x, y, w,
        h]`` ints, tight, ``[0, 0, 0, 0]`` when empty) and ``score`` (float, mean score inside the mask, 0.0 when
        empty).
    """
    from ..._optional import require  # pycocotools is deferred (keeps `import diffsegmenter` light) and optional

    mask_utils = require("pycocotools.mask", extra="rle", feature="COCO RLE output")

    labels = check_labels(labels)
    classes = check_classes(classes)
    scores = check_scores(scores, len(classes), labels.shape)
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
    from ..._optional import require

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
    return write_json(path, payload)


def load_rle_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by [`save_rle_json`]; pass its ``"annotations"`` to [`decode_rle_records`]."""
    return load_sidecar(path)
