"""One image's results on disk: their names, writing them all (sidecar last), and telling a finished image.

[`write_result`] writes the requested formats (see [`~diffsegmenter.io.formats.FORMATS`]) for one image under
deterministic names ([`output_paths`]) and writes the ``<stem>.json`` sidecar last, so the sidecar's existence marks
a finished image; [`is_done`] checks that for resumable batch runs, and [`earlier_outputs`] recognises a previous
run's files when a folder that holds them is segmented.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checks import (
    ResultLike,
    check_classes,
    check_image,
    check_label_values,
    check_labels,
    check_scores,
    check_stem,
)
from .formats import FORMATS, FormatInput, RunImage, check_formats, coco, labelstudio
from .formats.label_png import check_png_class_count
from .sidecar import SIDECAR_KEYS, load_sidecar, save_sidecar

__all__ = [
    "OutputPaths",
    "earlier_outputs",
    "is_done",
    "output_paths",
    "sidecars_in",
    "write_result",
    "write_run_outputs",
]


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Deterministic file names of one image's outputs.

    Attributes:
        sidecar (`Path`): ``<stem>.json``, always written, and written last.
        targets (`dict[str, Path]`): format name -> its file or folder (``<stem><suffix>``), for the requested
            formats only.
        members (`dict[str, list[Path]]`): folder format -> the files inside it (empty if classes are unknown).

    The built-in formats have shortcuts, ``None`` when not requested: ``png`` (``<stem>.png``), ``overlay``
    (``<stem>.overlay.png``), ``heatmaps`` (the folder ``<stem>.heatmaps``), ``heatmap_files``
    (``<stem>.heatmaps/<class>.png``), ``rle`` (``<stem>.rle.json``) and ``npz`` (``<stem>.npz``).
    """

    sidecar: Path
    targets: dict[str, Path] = dataclasses.field(default_factory=dict)
    members: dict[str, list[Path]] = dataclasses.field(default_factory=dict)

    png = property(lambda self: self.targets.get("png"))
    overlay = property(lambda self: self.targets.get("overlay"))
    heatmaps = property(lambda self: self.targets.get("heatmaps"))
    rle = property(lambda self: self.targets.get("rle"))
    npz = property(lambda self: self.targets.get("npz"))

    @property
    def heatmap_files(self) -> list[Path]:
        return list(self.members.get("heatmaps", []))

    def files(self) -> list[Path]:
        """Every file (not folder) that must exist for a finished image, sidecar last."""
        singles = [path for name, path in self.targets.items() if not FORMATS[name].is_folder]
        inside = [path for name in self.targets if FORMATS[name].is_folder for path in self.members.get(name, [])]
        return singles + inside + [self.sidecar]


def output_paths(
    out_dir: str | os.PathLike, stem: str, formats: Sequence[str], classes: Sequence[str] | None = None
) -> OutputPaths:
    """Deterministic file names of one image's outputs.

    Args:
        out_dir (`str` or `os.PathLike`): output folder.
        stem (`str`): file name stem (no folders), usually the image's name without suffix.
        formats (`Sequence[str]`): registered format names (see [`~diffsegmenter.io.formats.FORMATS`]).
        classes (`Sequence[str]`, *optional*): needed to list the files inside folder formats (heat maps).

    Returns:
        [`OutputPaths`].
    """
    out_dir = Path(out_dir)
    stem = check_stem(stem)
    targets = {name: FORMATS[name].path(out_dir, stem) for name in check_formats(formats)}
    members: dict[str, list[Path]] = {}
    for name, target in targets.items():
        member_files = FORMATS[name].member_files
        if member_files is not None and classes is not None:
            members[name] = member_files(target, check_classes(classes))
    return OutputPaths(sidecar=out_dir / f"{stem}.json", targets=targets, members=members)


def write_result(
    out_dir: str | os.PathLike,
    stem: str,
    image_rgb: np.ndarray | None,
    result: ResultLike,
    formats: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    alpha: float = 0.5,
    vocabulary: Sequence[str] | None = None,
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
        formats (`Sequence[str]`): registered format names (order does not matter).
        extra (`Mapping[str, Any]`, *optional*): extra sidecar keys (for example ``{"source": "img.jpg"}``).
        alpha (`float`, defaults to 0.5): overlay opacity.
        vocabulary (`Sequence[str]`, *optional*): the run's class list, for exports that number classes run-wide
            (the label PNG's values, named by the sidecar's ``png_classes``; YOLO ids, ``yolo_classes``); None = the
            result's classes. ``label_values``, ``npz`` and ``rle`` number the image's own classes.

    Returns:
        `list[pathlib.Path]`: every file written, in writing order; the sidecar is last.

    Raises:
        ValueError: unknown format, bad stem, inconsistent result shapes/values, or ``"overlay"`` without an image.
    """
    wanted = check_formats(formats)
    labels = check_labels(result.labels)
    classes = check_classes(result.classes)
    scores = check_scores(result.scores, len(classes), labels.shape)
    check_label_values(labels, len(classes))
    if len(result.prompts) != len(classes):
        raise ValueError(f"result has {len(result.prompts)} prompts for {len(classes)} classes; they must match.")
    extra_keys = dict(extra or {})
    reserved = sorted(set(extra_keys) & {"formats", "files", "png_classes", "yolo_classes", *SIDECAR_KEYS})
    if reserved:
        raise ValueError(f"`extra` keys {reserved} are reserved: write_result and save_sidecar record them.")
    for name in wanted:
        if FORMATS[name].needs_image:
            if image_rgb is None:
                raise ValueError(f"The {name!r} format needs `image_rgb`; pass the (H, W, 3) uint8 image.")
            image_rgb = check_image(image_rgb, labels.shape)

    item = FormatInput(
        labels=labels,
        scores=scores,
        classes=classes,
        image_rgb=image_rgb,
        alpha=alpha,
        vocabulary=None if vocabulary is None else list(vocabulary),
    )
    if "png" in wanted:
        check_png_class_count(len(item.run_classes))  # the PNG numbers the run's classes

    out_dir = Path(out_dir)
    paths = output_paths(out_dir, stem, wanted, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.sidecar.unlink(missing_ok=True)

    written: list[Path] = []
    for name, target in paths.targets.items():
        written.extend(FORMATS[name].write(target, item))

    sidecar_extra = {"formats": wanted, "files": [p.relative_to(out_dir).as_posix() for p in written], **extra_keys}
    if "png" in wanted:  # what the label PNG's values mean: value i is png_classes[i-1], the same in every image
        sidecar_extra["png_classes"] = item.run_classes
    if "yolo" in wanted:  # what its class ids mean: the run's dataset.yaml must name them alike (yolo.write_run)
        sidecar_extra["yolo_classes"] = item.run_classes
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
    for name, sidecar in sidecars_in(folder).items():
        names.add(name)
        names.update(str(listed) for listed in sidecar["files"] if isinstance(listed, str))
    return names


def sidecars_in(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The sidecars that earlier runs of [`write_result`] (or an edit run) left in `folder`: file name -> content,
    for each JSON object holding ``diffsegmenter_version`` and a ``files`` list (not searched recursively; files over
    4 MiB are not read). Empty when the folder cannot be read."""
    found: dict[str, dict[str, Any]] = {}
    try:
        candidates = [entry for entry in os.scandir(folder) if entry.name.endswith(".json") and entry.is_file()]
    except OSError:
        return found
    for entry in sorted(candidates, key=lambda e: e.name):
        try:
            if entry.stat().st_size > 4 << 20:  # a sidecar is small; do not parse large data files
                continue
            payload = json.loads(Path(entry.path).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and "diffsegmenter_version" in payload and isinstance(payload.get("files"), list):
            found[entry.name] = payload
    return found


def is_done(out_dir: str | os.PathLike, stem: str, formats: Sequence[str]) -> bool:
    """Whether [`write_result`] finished this image with (at least) these formats.

    True when ``<stem>.json`` exists and parses, every requested file exists (a per-image part that a run file
    gathers also holds what its writer reads) and the sidecar lists it among the files written with it
    (``"files"``): a file left by an earlier run with other settings, which the sidecar's rewrite did not include,
    does not count. For folder formats (``"heatmaps"``) the files inside are derived from
    the sidecar's ``classes``.

    Args:
        out_dir (`str` or `os.PathLike`): output folder.
        stem (`str`): file name stem.
        formats (`Sequence[str]`): registered format names.

    Returns:
        `bool`.
    """
    paths = output_paths(out_dir, stem, formats)
    if not paths.sidecar.is_file():
        return False
    try:
        sidecar = load_sidecar(paths.sidecar)
    except (OSError, ValueError):
        return False
    classes, listed = sidecar.get("classes"), sidecar.get("files")
    if not isinstance(listed, list):
        return False
    folders = [target for name, target in paths.targets.items() if FORMATS[name].is_folder]
    if folders:
        if not isinstance(classes, list) or not all(folder.is_dir() for folder in folders):
            return False
        try:
            paths = output_paths(out_dir, stem, formats, classes)
        except (TypeError, ValueError):  # a hand-edited or foreign sidecar
            return False
    listed_names = {str(name) for name in listed}
    out_dir = Path(out_dir)
    return all(
        p.is_file()
        and (p == paths.sidecar or p.relative_to(out_dir).as_posix() in listed_names)
        # a part's content is checked, not the sidecar of an image named like one (scene.coco.png: scene.coco.json)
        and (p == paths.sidecar or not p.name.endswith((coco.SUFFIX, labelstudio.SUFFIX)) or _readable_part(p))
        for p in paths.files()
    )


def _readable_part(path: Path) -> bool:
    """Whether a per-image part that a run-level writer gathers (``<stem>.coco.json``, ``<stem>.ls.json``) holds what
    it reads: a damaged one (truncated, edited) made the run's last step fail, and the image counted as done, so it
    was never written again."""
    try:
        part = load_sidecar(path)
    except (OSError, ValueError):
        return False
    if path.name.endswith(labelstudio.SUFFIX):
        results = part.get("result", [])
        return isinstance(results, list) and all(
            isinstance(r, dict) and isinstance(r.get("value"), dict) and "brushlabels" in r["value"] for r in results
        )
    annotations = part.get("annotations")
    return (
        all(key in part for key in coco.PART_KEYS)
        and isinstance(annotations, list)
        and all(isinstance(a, dict) and all(k in a for k in coco.ANNOTATION_KEYS) for a in annotations)
    )


def write_run_outputs(
    out: str | os.PathLike, images: Sequence[RunImage], formats: Sequence[str], classes: Sequence[str]
) -> list[Path]:
    """Write the run-level files of the requested formats that have one (``coco``, ``yolo``, ``labelstudio``).

    Each is rebuilt whole from the per-image parts on disk of `images` (every finished image of the run, in input
    order: computed now or found done), so a resumed run writes the same complete file and never a duplicate.

    Args:
        out (`str` or `os.PathLike`): the run's output folder.
        images (`Sequence[RunImage]`): the finished images.
        formats (`Sequence[str]`): the run's formats (those without a ``finish`` writer are ignored).
        classes (`Sequence[str]`): the run's class list (categories / class ids in this order).

    Returns:
        `list[pathlib.Path]`: the files written.
    """
    written: list[Path] = []
    for name in check_formats(formats):
        finish = FORMATS[name].finish
        if finish is not None:
            written.extend(finish(Path(out), list(images), list(classes)))
    return written
