"""The per-image output formats, as a registry: one [`OutputFormat`] per name, in the order they are written.

Built in: ``png`` (palette label PNG), ``overlay`` (image + colours + legend), ``heatmaps`` (one colour-mapped PNG
per class), ``rle`` (COCO RLE JSON) and ``npz`` (scores, labels, classes). ``diffsegmenter segment --format`` and
[`~diffsegmenter.io.results.write_result`] accept any registered name, and the output names, collision checks and
resume checks follow each format's ``suffix``.

The dataset exports (issue 19): ``coco`` (one COCO instances file for the run), ``yolo`` (Ultralytics segmentation
labels ``labels/<stem>.txt`` + a dataset YAML) and ``labelstudio`` (Label Studio tasks with brush predictions).

Adding a format is one module here with its writer and reader, plus one `register_format` call at the bottom of this
file::

    register_format(OutputFormat("mine", ".mine.txt", _write_mine, "my format", what="my file"))

where ``_write_mine(target, item)`` writes ``target`` from the checked arrays in ``item`` (a [`FormatInput`]) and
returns the files written. A format that collects every image into one file (``coco``'s ``coco_instances.json``)
writes its per-image part here (``<stem>.coco.json``) and gives a ``finish`` writer: after the per-image loop the
batch runner calls it with every finished image of the run ([`RunImage`], read back from the per-image parts on
disk, so a resumed run that recomputes nothing still writes the whole file) and the run's class list. A format whose
file does not sit next to the others (YOLO's ``labels/<stem>.txt``) gives a ``target`` rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .heatmaps import heatmap_filenames, save_heatmaps
from .label_png import save_label_png
from .npz import save_npz
from .overlay import save_overlay
from .rle import encode_rle_records, save_rle_json

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "OUTPUT_FORMATS",
    "RUN_FILES",
    "FormatInput",
    "OutputFormat",
    "RunImage",
    "check_formats",
    "register_format",
    "run_class_list",
    "run_spelling",
]


def run_class_list(classes: Sequence[str], vocabulary: Sequence[str] | None) -> list[str]:
    """The classes an image's run-wide numbering counts: ``vocabulary`` followed by any of ``classes`` missing from
    it (all of ``classes`` when there is no vocabulary). Value i (label PNG) or id i - 1 (YOLO) is its i-th name."""
    from ...classes import class_key

    vocab = list(vocabulary or [])
    keys = {class_key(v) for v in vocab}  # "Circle " in a raw list is the result's "Circle"
    return vocab + [c for c in classes if class_key(c) not in keys]


def run_spelling(name: str, names: list[str]) -> str:
    """``name`` as the run's class list ``names`` spells it (compared as class lists compare names: ``"cat"`` is the
    list's ``"Cat"``); a name not in it is appended to ``names`` (in place) as a further class. The run-level files
    (COCO categories, Label Studio labels) name each class once this way."""
    from ...classes import find_class

    index = find_class(name, names)
    if index is None:
        names.append(name)
        return name
    return names[index]


@dataclasses.dataclass(frozen=True)
class FormatInput:
    """One checked result, as the format writers receive it.

    Attributes:
        labels (`np.ndarray`): ``(H, W)`` int, 0 = background, i = classes[i-1].
        scores (`np.ndarray`): ``(K, H, W)`` float32 in [0, 1].
        classes (`list[str]`): the K class names (unique).
        image_rgb (`np.ndarray | None`): ``(H, W, 3)`` uint8, given when a format that ``needs_image`` is written.
        alpha (`float`): overlay opacity.
        vocabulary (`list[str] | None`): the run's class list (with a filter, ``classes`` is the part of it kept for
            this image); exports that number classes run-wide (label PNG values, YOLO ids) use it. None =
            ``classes``.
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    image_rgb: np.ndarray | None = None
    alpha: float = 0.5
    vocabulary: list[str] | None = None

    @property
    def run_classes(self) -> list[str]:
        """``vocabulary`` followed by any class of this image missing from it (so every class has a run-wide id)."""
        return run_class_list(self.classes, self.vocabulary)

    @property
    def run_labels(self) -> np.ndarray:
        """``labels`` numbered run-wide: ``(H, W)`` int64, 0 = background, i = ``run_classes[i-1]``. With a filter,
        value i then means one class in every image of the run (``labels`` numbers only the classes kept)."""
        from ...classes import find_class

        run = self.run_classes
        lookup = np.array([0, *(find_class(c, run) + 1 for c in self.classes)], dtype=np.int64)
        return lookup[np.asarray(self.labels, dtype=np.int64)]


@dataclasses.dataclass(frozen=True)
class RunImage:
    """One finished image of a run, as a run-level ``finish`` writer receives it.

    Attributes:
        out_dir (`Path`): the folder of its outputs.
        stem (`str`): its outputs' stem.
        file_name (`str`): the image's path relative to the folder that holds every input of the run (the input
            folder when there is one), POSIX, unique within the run, e.g. ``"a/x.jpg"``.
        source (`Path`): the image file.
    """

    out_dir: Path
    stem: str
    file_name: str
    source: Path


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """One per-image output format.

    Attributes:
        name (`str`): the ``--format`` name.
        suffix (`str`): appended to the image's stem to name the output (``".overlay.png"`` -> ``x.overlay.png``).
        write (`Callable[[Path, FormatInput], list[Path]]`): writes the output at the given path (atomically) and
            returns the files written, in order.
        description (`str`): a few words for ``--help``.
        what (`str`): what the output is, for messages (``"label map"``, ``"overlay"``...).
        needs_image (`bool`): the writer needs ``FormatInput.image_rgb``.
        member_files (`Callable[[Path, Sequence[str]], list[Path]] | None`): for a format whose output is a folder,
            the files inside it for the given classes (a finished image has all of them); None for a single file.
        target (`Callable[[Path, str], Path] | None`): the output's path from the image's folder and stem, for a
            format that does not write ``<stem><suffix>`` next to the others (YOLO's ``labels/<stem>.txt``).
        finish (`Callable[[Path, Sequence[RunImage], Sequence[str]], list[Path]] | None`): a run-level writer,
            called after the per-image loop with the output folder, every finished image of the run (in input order)
            and the run's classes; it rebuilds the run's file(s) whole from the per-image parts and returns them.
        requires (`tuple[str, str] | None`): the optional module the writer imports and the ``diffsegmenter`` extra
            that installs it, e.g. ``("cv2", "yolo")``; checked before a run starts (:meth:`check_available`).
    """

    name: str
    suffix: str
    write: Callable[[Path, FormatInput], list[Path]]
    description: str
    what: str
    needs_image: bool = False
    member_files: Callable[[Path, Sequence[str]], list[Path]] | None = None
    target: Callable[[Path, str], Path] | None = None
    finish: Callable[[Path, Sequence[RunImage], Sequence[str]], list[Path]] | None = None
    requires: tuple[str, str] | None = None

    def check_available(self) -> None:
        """Import the optional module the writer needs, so that a run fails before its first image, not after it.

        Raises:
            ImportError: the module is missing; the message names the extra that installs it.
        """
        if self.requires is not None:
            from ..._optional import require

            module, extra = self.requires
            require(module, extra=extra, feature=f"--format {self.name}")

    def path(self, out_dir: Path, stem: str) -> Path:
        """Where this format's output of one image goes: ``<out_dir>/<stem><suffix>`` unless ``target`` says."""
        return self.target(out_dir, stem) if self.target is not None else out_dir / f"{stem}{self.suffix}"

    @property
    def is_folder(self) -> bool:
        """Whether the output is a folder of files (``heatmaps``) rather than one file."""
        return self.member_files is not None


FORMATS: dict[str, OutputFormat] = {}
"""Registered formats by name, in writing order (see [`register_format`])."""


def register_format(fmt: OutputFormat) -> OutputFormat:
    """Add a format to [`FORMATS`] (written after those registered before it).

    Raises:
        ValueError: the name is taken, or the suffix is one another format or the sidecar (``.json``) uses.
    """
    if fmt.name in FORMATS:
        raise ValueError(f"an output format named {fmt.name!r} is already registered")
    taken = {f.suffix.lower() for f in FORMATS.values()} | {".json"}
    if fmt.suffix.lower() in taken:
        raise ValueError(f"the suffix {fmt.suffix!r} of format {fmt.name!r} is already used")
    FORMATS[fmt.name] = fmt
    return fmt


def check_formats(formats: Sequence[str] | str) -> list[str]:
    """Known format names in writing order, without duplicates (a single name may be given as a string).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown output format(s) {unknown}; choose from {list(FORMATS)}.")
    return [f for f in FORMATS if f in formats]  # canonical order, no duplicates


# ---------------------------------------------------------------------------------------------- the built-in formats


def _write_png(target: Path, item: FormatInput) -> list[Path]:
    return [save_label_png(target, item.run_labels)]


def _write_overlay(target: Path, item: FormatInput) -> list[Path]:
    if item.image_rgb is None:  # write_result checks it first; kept for direct callers
        raise ValueError("The 'overlay' format needs `image_rgb`; pass the (H, W, 3) uint8 image.")
    return [save_overlay(target, item.image_rgb, item.labels, item.classes, alpha=item.alpha)]


def _heatmap_files(folder: Path, classes: Sequence[str]) -> list[Path]:
    return [folder / name for name in heatmap_filenames(classes)]


def _write_heatmaps(target: Path, item: FormatInput) -> list[Path]:
    files = save_heatmaps(target, item.scores, item.classes)
    keep = {p.name for p in files}
    for stale in target.glob("*.png"):  # maps of classes an earlier run had and this one has not
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return files


def _write_rle(target: Path, item: FormatInput) -> list[Path]:
    records = encode_rle_records(item.labels, item.scores, item.classes)
    return [save_rle_json(target, records, item.labels.shape)]


def _write_npz(target: Path, item: FormatInput) -> list[Path]:
    return [save_npz(target, item.scores, item.classes, item.labels)]


register_format(OutputFormat("png", ".png", _write_png, "palette label map", what="label map"))
register_format(
    OutputFormat("overlay", ".overlay.png", _write_overlay, "image, colours, legend", what="overlay", needs_image=True)
)
register_format(
    OutputFormat(
        "heatmaps",
        ".heatmaps",
        _write_heatmaps,
        "one heat map per class",
        what="heat-map folder",
        member_files=_heatmap_files,
    )
)
register_format(
    OutputFormat(
        "rle", ".rle.json", _write_rle, "COCO RLE JSON", what="RLE file", requires=("pycocotools.mask", "rle")
    )
)
register_format(OutputFormat("npz", ".npz", _write_npz, "score maps", what="npz file"))

OUTPUT_FORMATS: tuple[str, ...] = tuple(FORMATS)
"""The per-image built-in formats: ``"png"`` (palette label PNG), ``"overlay"`` (image + colours + legend),
``"heatmaps"`` (one colour-mapped PNG per class), ``"rle"`` (COCO RLE JSON), ``"npz"`` (scores, labels, classes).
[`FORMATS`] also holds the dataset exports ([`EXPORT_FORMATS`]) and any format registered later."""

from . import coco, labelstudio, yolo  # noqa: E402  (they need RunImage and FormatInput above)

register_format(
    OutputFormat(
        "coco",
        coco.SUFFIX,
        coco.write_image,
        "one COCO instances JSON for the run (RLE masks)",
        what="COCO part",
        finish=coco.write_run,
        requires=("pycocotools.mask", "rle"),
    )
)
register_format(
    OutputFormat(
        "yolo",
        yolo.SUFFIX,
        yolo.write_image,
        "Ultralytics YOLO segmentation labels + dataset YAML (needs opencv)",
        what="YOLO label file",
        target=yolo.label_path,
        finish=yolo.write_run,
        requires=("cv2", "yolo"),
    )
)
register_format(
    OutputFormat(
        "labelstudio",
        labelstudio.SUFFIX,
        labelstudio.write_image,
        "Label Studio tasks JSON with brush predictions",
        what="Label Studio task",
        finish=labelstudio.write_run,
    )
)

EXPORT_FORMATS: tuple[str, ...] = ("coco", "yolo", "labelstudio")
"""The dataset exports (issue 19): per-image parts plus a run-level file each (see ``OutputFormat.finish``)."""

RUN_FILES: tuple[str, ...] = (coco.RUN_FILE, yolo.DATASET_FILE, labelstudio.RUN_FILE, labelstudio.CONFIG_FILE)
"""The files the exports' ``finish`` writers put in the output folder (no image's outputs may take these names)."""
