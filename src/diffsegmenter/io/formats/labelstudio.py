"""``labelstudio``: Label Studio tasks with the masks as brush predictions (pre-annotations to review and correct).

Per image the writer stores its task's prediction, ``<stem>.ls.json``; after the per-image loop [`write_run`] gathers
every finished image of the run into ``<out>/labelstudio_tasks.json`` (a JSON list of tasks, rewritten whole each
run) and writes the matching labeling config, ``<out>/labelstudio_config.xml``. A task, in Label Studio's
"pre-annotated data" JSON format (labelstud.io/guide/predictions, labelstud.io/tags/brushlabels)::

    {"data": {"image": "/data/local-files/?d=<image path>"},
     "predictions": [{"model_version": "diffsegmenter <version>", "score": <mean>,
                      "result": [{"id", "from_name": "label", "to_name": "image", "type": "brushlabels",
                                  "original_width": W, "original_height": H, "image_rotation": 0, "score": s,
                                  "value": {"format": "rle", "rle": [...], "brushlabels": ["<class>"]}}]}]}

one ``brushlabels`` result per class present. ``rle`` is Label Studio's brush RLE (the bit-packed run-length code of
thi-ng's rle-pack over the mask's flattened RGBA bytes, alpha 255 inside), as its SDK's
``label_studio_sdk.converter.brush.encode_rle`` writes and ``decode_rle`` reads; [`encode_brush_rle`] and
[`decode_brush_rle`] here are a NumPy implementation of the same code. ``data.image`` points at the image through
Label Studio's local-files storage with the absolute path (start Label Studio with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``), or rewrite it to your
image URLs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from ..atomic import write_json, write_text
from ..sidecar import load_sidecar, package_version

__all__ = [
    "CONFIG_FILE",
    "RUN_FILE",
    "SUFFIX",
    "decode_brush_rle",
    "encode_brush_rle",
    "labeling_config",
    "mask_from_result",
    "write_image",
    "write_run",
]

SUFFIX = ".ls.json"
"""The per-image part: ``<stem>.ls.json``."""

RUN_FILE = "labelstudio_tasks.json"
"""The run's tasks file, in the output folder."""

CONFIG_FILE = "labelstudio_config.xml"
"""The labeling config matching the tasks (``BrushLabels`` named ``label`` on an ``Image`` named ``image``)."""

FROM_NAME, TO_NAME = "label", "image"

_RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length, chosen per run by a 2-bit index
_WORD = 8  # bits of a value


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D mask (the flattened RGBA bytes, 255 inside, 0 outside), as a list of bytes."""
    values = np.repeat(np.where(np.asarray(mask, dtype=bool).reshape(-1), 255, 0).astype(np.uint8), 4)
    bits = [f"{values.size:032b}", f"{_WORD - 1:05b}", "".join(f"{s - 1:04b}" for s in _RLE_SIZES)]
    if values.size:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [values.size]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = f"{int(values[start]):08b}"
            while length > 0:
                take = min(length, 1 << 16)
                if take == 1:  # a literal block of one value
                    bits.append("000000" + word)
                else:
                    size_index = next(i for i, s in enumerate(_RLE_SIZES) if take - 1 < (1 << s))
                    bits.append(f"1{size_index:02b}{take - 1:0{_RLE_SIZES[size_index]}b}{word}")
                length -= take
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return np.packbits(np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")).tolist()


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """The flat uint8 values of a Label Studio brush RLE (reshape to ``(H, W, 4)``; channel 3 is the mask)."""
    bits = np.unpackbits(np.asarray(list(rle), dtype=np.uint8))
    position = 0

    def read(n: int) -> int:
        nonlocal position
        chunk = bits[position : position + n]
        position += n
        return int("".join(map(str, chunk.tolist())) or "0", 2)

    total = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < total:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out


def mask_from_result(result: dict[str, Any]) -> np.ndarray:
    """The ``(H, W)`` bool mask of one ``brushlabels`` result."""
    height, width = int(result["original_height"]), int(result["original_width"])
    return decode_brush_rle(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127


def write_image(target: Path, item: Any) -> list[Path]:
    """Write one image's prediction (``{"height", "width", "score", "result": [...]}``) to ``<stem>.ls.json``."""
    height, width = (int(v) for v in item.labels.shape)
    results, scores = [], []
    for index, name in enumerate(item.classes, start=1):
        mask = item.labels == index
        if not mask.any():
            continue
        score = float(item.scores[index - 1][mask].mean())
        scores.append(score)
        results.append(
            {
                "id": hashlib.sha1(f"{target.name}/{name}".encode()).hexdigest()[:10],
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": score,
                "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [name]},
            }
        )
    payload = {
        "format": "diffsegmenter_labelstudio_part",
        "diffsegmenter_version": package_version(),
        "height": height,
        "width": width,
        "score": float(np.mean(scores)) if scores else 0.0,
        "result": results,
    }
    return [write_json(target, payload)]


def labeling_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config for the tasks: an ``Image`` and its ``BrushLabels`` with the classes."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in classes)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        "</View>\n"
    )


def _image_url(source: Path) -> str:
    from urllib.parse import quote

    path = Path(os.path.abspath(source)).as_posix().lstrip("/")
    return f"/data/local-files/?d={quote(path)}"


def write_run(out: Path, images: Sequence[Any], classes: Sequence[str]) -> list[Path]:
    """Gather the parts of `images` into ``<out>/labelstudio_tasks.json``; write ``<out>/labelstudio_config.xml``."""
    from . import run_spelling

    names = list(classes)
    tasks = []
    for image in images:
        part = load_sidecar(Path(image.out_dir) / f"{image.stem}{SUFFIX}")
        for result in part.get("result", []):  # spelled as the run's class list, the config's labels ("Cat")
            result["value"]["brushlabels"] = [run_spelling(n, names) for n in result["value"]["brushlabels"]]
        tasks.append(
            {
                "data": {"image": _image_url(image.source), "file_name": image.file_name},
                "predictions": [
                    {
                        "model_version": f"diffsegmenter {package_version()}",
                        "score": part.get("score", 0.0),
                        "result": part.get("result", []),
                    }
                ],
            }
        )
    return [write_json(Path(out) / RUN_FILE, tasks), write_text(Path(out) / CONFIG_FILE, labeling_config(names))]
