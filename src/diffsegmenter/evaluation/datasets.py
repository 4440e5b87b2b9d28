"""Read-only readers for the standard semantic segmentation benchmarks, in mmsegmentation's on-disk layouts.

Every reader returns a [`SegmentationDataset`]: class names, palette, the list of samples (image id, image path,
label path) and a label loader that yields contiguous class ids with 255 = ignore. Nothing is ever downloaded; a reader
whose files are missing raises [`DatasetFilesMissingError`] naming the missing files and how to prepare them.

| name     | classes | background | root (mmseg `data_root`)        | images / labels                                                      |
|----------|---------|------------|---------------------------------|----------------------------------------------------------------------|
| `voc21`  | 21      | yes        | `VOCdevkit/VOC2012`             | `JPEGImages/*.jpg`, `SegmentationClass[Aug]/*.png`, `ImageSets/Segmentation/<split>.txt` |
| `voc20`  | 20      | no         | `VOCdevkit/VOC2012`             | as voc21; on-disk 0 (background) becomes 255, 1..20 become 0..19     |
| `pc60`   | 60      | yes        | `VOCdevkit/VOC2010`             | `JPEGImages/*.jpg`, `SegmentationClassContext/*.png`, `ImageSets/SegmentationContext/<split>.txt` |
| `pc59`   | 59      | no         | `VOCdevkit/VOC2010`             | as pc60; 0 becomes 255, 1..59 become 0..58                           |
| `object` | 81      | yes        | `coco_stuff164k`                | `images/val2017/*.jpg`, `annotations/val2017/*_instanceTrainIds.png` |
| `stuff`  | 171     | no         | `coco_stuff164k`                | `images/val2017/*.jpg`, `annotations/val2017/*_labelTrainIds.png`   |
| `ade`    | 150     | no         | `ADEChallengeData2016`          | `images/validation/*.jpg`, `annotations/validation/*.png` (0 -> 255, i -> i-1) |
| `city`   | 19      | no         | `cityscapes`                    | `leftImg8bit/val/*/*_leftImg8bit.png`, `gtFine/val/*/*_gtFine_labelTrainIds.png` |
| `shapes` | 5       | yes        | the exported folder             | `JPEGImages/*.png`, `SegmentationClass/*.png`, `ImageSets/Segmentation/<split>.txt` |

`root` may be the dataset folder itself or any parent used by mmsegmentation's data preparation (e.g. `data/` holding
`VOCdevkit/`); the reader looks in the usual sub-folders.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..io.palette import VOC_PALETTE
from .catalog import (
    ADE_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_EXTRA_ALIASES,
    COCO_PAPER_RENAMES,
    COCO_STUFF,
    COCO_THINGS,
    DATASET_ALIASES,
    DATASET_NAMES,
    PC59_CLASSES,
    PC_PAPER_RENAMES,
    PREPARE_HINTS,
    SHAPES_CLASSES,
    VOC_CLASSES,
    VOC_PAPER_RENAMES,
)

__all__ = [
    "DATASET_NAMES",
    "DatasetFilesMissingError",
    "Sample",
    "SegmentationDataset",
    "load_dataset",
]

IGNORE_INDEX = 255
ClassNames = Literal["standard", "paper"]


class DatasetFilesMissingError(FileNotFoundError):
    """Raised when a benchmark's files are not where its layout says; the message lists them and how to prepare."""


@dataclass(frozen=True)
class Sample:
    """One evaluation image.

    Attributes:
        image_id (`str`): unique id, used to name prediction files (e.g. ``2007_000033``).
        image_path (`Path`): RGB image.
        label_path (`Path`): single-channel (``L`` or ``P``) PNG of on-disk label values.
    """

    image_id: str
    image_path: Path
    label_path: Path


def normalize_class_name(name: str) -> str:
    """Lower-case, strip, and treat ``_`` / ``-`` / repeated spaces as one space (for matching names)."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass
class SegmentationDataset:
    """A semantic segmentation benchmark split.

    Attributes:
        name (`str`): dataset name, one of `DATASET_NAMES`.
        root (`Path`): resolved dataset folder.
        split (`str`): split name (e.g. ``val``).
        classes (`list[str]`): class names, index = contiguous class id ``0 .. C-1``.
        has_background (`bool`): whether class 0 is "background" (VOC21, PC60, COCO-Object, shapes).
        samples (`list[Sample]`): the images of the split, in a fixed (sorted or list-file) order.
        palette (`np.ndarray` of shape `(256, 3)`, uint8): colour of each class id; entry 255 is the ignore colour.
        label_lut (`np.ndarray` of shape `(256,)`, int64): on-disk label value -> class id (255 = ignore,
            -1 = unexpected value, which raises).
        aliases (`dict[str, int]`): normalised class name -> class id, covering standard and paper names.
    """

    name: str
    root: Path
    split: str
    classes: list[str]
    has_background: bool
    samples: list[Sample]
    palette: np.ndarray
    label_lut: np.ndarray
    aliases: dict[str, int] = field(default_factory=dict)
    ignore_index: int = IGNORE_INDEX

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_folder(self) -> str | None:
        """The ground-truth folder scored against: its path relative to `root` when inside it (POSIX form, e.g.
        ``SegmentationClassAug``), else absolute; None for an empty dataset. VOC's two label folders give different
        numbers, so reports record which one was read."""
        if not self.samples:
            return None
        folder = Path(self.samples[0].label_path).parent
        with contextlib.suppress(ValueError):
            folder = folder.relative_to(self.root)
        return folder.as_posix()

    @property
    def foreground_ids(self) -> list[int]:
        """Class ids that can be prompted for (all ids except background when there is one)."""
        return list(range(1 if self.has_background else 0, self.num_classes))

    def class_index(self, name: str) -> int:
        """Class id of a class name (standard name, paper rename, or a known alias; case/``_``/``-`` insensitive).

        Raises:
            `ValueError` if the name is not a class of this dataset.
        """
        key = normalize_class_name(name)
        if key not in self.aliases:
            raise ValueError(f"{name!r} is not a class of {self.name}; known classes: {', '.join(self.classes)}")
        return self.aliases[key]

    def load_label(self, sample: Sample | int) -> np.ndarray:
        """Load a ground-truth label map with contiguous class ids.

        Args:
            sample ([`Sample`] or `int`): the sample or its index.

        Returns:
            `np.ndarray` of shape `(H, W)`, int64: class ids ``0 .. C-1``, 255 = ignore.
        """
        if isinstance(sample, int):
            sample = self.samples[sample]
        raw = read_label_png(sample.label_path)
        labels = self.label_lut[raw]
        if (labels < 0).any():
            bad = np.unique(raw[labels < 0])[:10].tolist()
            raise ValueError(
                f"{sample.label_path} holds values {bad}, which are not labels of {self.name} "
                f"(expected on-disk values {self._valid_disk_values()}); is it the right label folder?"
            )
        return labels

    def _valid_disk_values(self) -> str:
        valid = np.flatnonzero(self.label_lut >= 0)
        non_ignore = valid[valid != IGNORE_INDEX]
        return f"{int(non_ignore.min())}..{int(non_ignore.max())} and 255" if non_ignore.size else "255"


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (mode ``L`` or ``P``; palette indices, not colours) as uint8 values.

    Returns:
        `np.ndarray` of shape `(H, W)`, uint8.
    """
    with Image.open(path) as img:
        if img.mode in ("L", "P"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.array(img)
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(f"{path}: label values must be 0..255, got {arr.min()}..{arr.max()}")
            return arr.astype(np.uint8)
        raise ValueError(
            f"{path}: label PNGs must be single-channel (mode L or P holding class indices), got mode {img.mode}; "
            "an RGB colour-coded label must be converted to indices first"
        )


def _identity_lut(num_classes: int) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _reduce_zero_lut(num_classes: int) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: on-disk 0 -> 255 (ignore), i -> i-1."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def _palette(num_classes: int, has_background: bool, colors: tuple[tuple[int, int, int], ...] | None = None):
    """256-entry palette: class colours, VOC colour map for the rest, (224, 224, 192) at 255."""
    cmap = VOC_PALETTE
    palette = np.zeros((256, 3), dtype=np.uint8)
    if colors is not None:
        palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    else:
        # without a background class, class 0 is a real class: start at colour 1 so that no class is black
        offset = 0 if has_background else 1
        palette[:num_classes] = cmap[offset : num_classes + offset]
    palette[IGNORE_INDEX] = cmap[IGNORE_INDEX]
    return palette


def _aliases(standard: tuple[str, ...], renames: dict[str, str], extra: dict[str, str] | None = None):
    aliases: dict[str, int] = {}
    for i, name in enumerate(standard):
        aliases.setdefault(normalize_class_name(name), i)
    index = {name: i for i, name in enumerate(standard)}
    for std, new in renames.items():
        aliases.setdefault(normalize_class_name(new), index[std])
    for alias, std in (extra or {}).items():
        aliases.setdefault(normalize_class_name(alias), index[std])
    return aliases


def _names(standard: tuple[str, ...], renames: dict[str, str], class_names: ClassNames) -> list[str]:
    if class_names not in ("standard", "paper"):
        raise ValueError(f"class_names must be 'standard' or 'paper', got {class_names!r}")
    if class_names == "standard":
        return list(standard)
    return [renames.get(n, n) for n in standard]


def _resolve_root(root: Path, subdirs: tuple[str, ...], marker: str) -> Path:
    """First of root/<subdir> (subdir '' = root) that contains `marker`; root itself if none does."""
    for sub in subdirs:
        candidate = root / sub if sub else root
        if (candidate / marker).exists():
            return candidate
    return root


def _raise_missing(name: str, root: Path, missing: list[Path], total: int | None, hint_key: str) -> None:
    shown = "\n".join(f"  {p}" for p in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    count = f"{len(missing)} of {total} expected files" if total is not None else f"{len(missing)} expected path(s)"
    raise DatasetFilesMissingError(
        f"{name}: {count} missing under {root}:\n{shown}{more}\nHow to prepare: {PREPARE_HINTS[hint_key]}"
    )


def _read_id_list(name: str, root: Path, list_file: Path, hint_key: str) -> list[str]:
    if not list_file.is_file():
        _raise_missing(name, root, [list_file], None, hint_key)
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{name}: split list {list_file} is empty")
    return ids


def _find_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return folder / f"{stem}{suffixes[0]}"


def _check_samples(name: str, root: Path, samples: list[Sample], hint_key: str) -> None:
    missing: list[Path] = []
    for s in samples:
        for p in (s.image_path, s.label_path):
            if not p.is_file():
                missing.append(p)
    if missing:
        _raise_missing(name, root, missing, 2 * len(samples), hint_key)


def _voc_layout(
    name: str,
    root: Path,
    split: str,
    list_dir: str,
    label_dirs: tuple[str, ...],
    image_suffixes: tuple[str, ...],
    hint_key: str,
    label_dir: str | None,
) -> list[Sample]:
    list_file = root / list_dir / f"{split}.txt"
    ids = _read_id_list(name, root, list_file, hint_key)
    if label_dir is not None:
        labels = root / label_dir
    else:
        labels = next((root / d for d in label_dirs if (root / d).is_dir()), root / label_dirs[0])
    for folder in (root / "JPEGImages", labels):
        if not folder.is_dir():
            _raise_missing(name, root, [folder], None, hint_key)
    images = root / "JPEGImages"
    return [Sample(i, _find_file(images, i, image_suffixes), labels / f"{i}.png") for i in ids]


def _glob_layout(
    name: str,
    root: Path,
    image_dir: str,
    pattern: str,
    label_of: Callable[[Path], tuple[str, Path]],
    hint_key: str,
) -> list[Sample]:
    images = root / image_dir
    if not images.is_dir():
        _raise_missing(name, root, [images], None, hint_key)
    # not the hidden files other systems leave: macOS writes ._<name>.jpg beside each image on FAT and exFAT drives,
    # which were listed as images (the run stopped at the first, or reported its label missing)
    paths = sorted(
        p for p in images.glob(pattern) if not any(part.startswith(".") for part in p.relative_to(images).parts)
    )
    if not paths:
        _raise_missing(name, root, [images / pattern], None, hint_key)
    samples = []
    for p in paths:
        image_id, label = label_of(p)
        samples.append(Sample(image_id, p, label))
    return samples


def load_dataset(
    name: str,
    root: str | Path,
    split: str | None = None,
    class_names: ClassNames = "standard",
    label_dir: str | None = None,
    check_files: bool = True,
) -> SegmentationDataset:
    """Open a benchmark split from its standard on-disk layout (see the module docstring).

    Args:
        name (`str`): one of `DATASET_NAMES` (``voc21``, ``voc20``, ``pc60``, ``pc59``, ``object``, ``stuff``,
            ``ade``, ``city``, ``shapes``) or an alias such as ``ade20k`` / ``cityscapes``.
        root (`str` or `Path`): the dataset folder or a parent of it (e.g. mmseg's ``data/``).
        split (`str`, *optional*): split to read; defaults to ``val`` (``test`` for ``shapes``, whose ``val`` is the
            split its settings are chosen on). VOC / PASCAL Context / shapes accept any split
            with a list file (e.g. ``train`` for the WSSS setting); the other datasets have ``val`` only (the
            ``train`` folders are also read when asked for).
        class_names (`"standard"` or `"paper"`, defaults to `"standard"`): ``paper`` uses DiffSegmenter's renames
            (VOC: plane, buses, table, people, plant, monitor; Context: airplane, plant, monitor; COCO-Object:
            VOC-style names such as motorbike / sofa / tvmonitor). Both spellings are accepted by `class_index`.
        label_dir (`str`, *optional*): VOC / Context only, the label folder name under the root (default: the first
            existing of ``SegmentationClass`` and ``SegmentationClassAug`` for VOC).
        check_files (`bool`, defaults to `True`): verify that every image and label file exists.

    Returns:
        [`SegmentationDataset`]

    Raises:
        [`DatasetFilesMissingError`] listing the missing files and how to prepare them; `ValueError` for an unknown
        dataset name or option.
    """
    key = DATASET_ALIASES.get(name.lower(), name.lower())
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if label_dir is not None and key not in ("voc21", "voc20", "pc60", "pc59", "shapes"):
        raise ValueError(f"label_dir applies to the VOC-layout datasets only, not to {key}")
    # the shapes world's settings are chosen on val (the shipped model's were): its reported split is test
    split = split or ("test" if key == "shapes" else "val")
    base = Path(root).expanduser()
    if not base.exists():
        raise DatasetFilesMissingError(
            f"{key}: dataset root {base} does not exist.\nHow to prepare: {PREPARE_HINTS[_hint(key)]}"
        )

    if key in ("voc21", "voc20"):
        ds_root = _resolve_root(base, ("", "VOCdevkit/VOC2012", "VOC2012"), "JPEGImages")
        samples = _voc_layout(
            key,
            ds_root,
            split,
            "ImageSets/Segmentation",
            ("SegmentationClass", "SegmentationClassAug"),
            (".jpg", ".png"),
            "voc",
            label_dir,
        )
        if key == "voc21":
            standard, has_bg, lut = VOC_CLASSES, True, _identity_lut(21)
        else:
            standard, has_bg, lut = VOC_CLASSES[1:], False, _reduce_zero_lut(20)
        renames, extra = VOC_PAPER_RENAMES, None
    elif key in ("pc60", "pc59"):
        ds_root = _resolve_root(base, ("", "VOCdevkit/VOC2010", "VOC2010"), "JPEGImages")
        samples = _voc_layout(
            key,
            ds_root,
            split,
            "ImageSets/SegmentationContext",
            ("SegmentationClassContext",),
            (".jpg", ".png"),
            "pc",
            label_dir,
        )
        if key == "pc60":
            standard, has_bg, lut = ("background", *PC59_CLASSES), True, _identity_lut(60)
        else:
            standard, has_bg, lut = PC59_CLASSES, False, _reduce_zero_lut(59)
        renames, extra = PC_PAPER_RENAMES, None
    elif key in ("object", "stuff"):
        ds_root = _resolve_root(base, ("", "coco_stuff164k"), "images")
        folder = f"{split}2017" if not split.endswith("2017") else split
        suffix = "_instanceTrainIds.png" if key == "object" else "_labelTrainIds.png"
        ann = ds_root / "annotations" / folder
        samples = _glob_layout(
            key, ds_root, f"images/{folder}", "*.jpg", lambda p: (p.stem, ann / f"{p.stem}{suffix}"), key
        )
        if key == "object":
            standard, has_bg, lut = ("background", *COCO_THINGS), True, _identity_lut(81)
            renames, extra = COCO_PAPER_RENAMES, COCO_EXTRA_ALIASES
        else:
            standard, has_bg, lut = (*COCO_THINGS, *COCO_STUFF), False, _identity_lut(171)
            renames, extra = {}, None
    elif key == "ade":
        ds_root = _resolve_root(base, ("", "ADEChallengeData2016", "ade/ADEChallengeData2016"), "images")
        folder = {"val": "validation", "train": "training"}.get(split, split)
        ann = ds_root / "annotations" / folder
        samples = _glob_layout(
            key, ds_root, f"images/{folder}", "*.jpg", lambda p: (p.stem, ann / f"{p.stem}.png"), "ade"
        )
        standard, has_bg, lut, renames, extra = ADE_CLASSES, False, _reduce_zero_lut(150), {}, None
    elif key == "city":
        ds_root = _resolve_root(base, ("", "cityscapes"), "leftImg8bit")
        gt = ds_root / "gtFine" / split

        def city_label(p: Path) -> tuple[str, Path]:
            stem = p.name.removesuffix("_leftImg8bit.png")
            return stem, gt / p.parent.name / f"{stem}_gtFine_labelTrainIds.png"

        samples = _glob_layout(key, ds_root, f"leftImg8bit/{split}", "*/*_leftImg8bit.png", city_label, "city")
        standard, has_bg, lut, renames, extra = CITYSCAPES_CLASSES, False, _identity_lut(19), {}, None
    else:  # shapes
        ds_root = base
        samples = _voc_layout(
            key,
            ds_root,
            split,
            "ImageSets/Segmentation",
            ("SegmentationClass",),
            (".png", ".jpg"),
            "shapes",
            label_dir,
        )
        standard, has_bg, lut, renames, extra = SHAPES_CLASSES, True, _identity_lut(5), {}, None

    if check_files:
        _check_samples(key, ds_root, samples, _hint(key))
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{key}: image ids are not unique under {ds_root}; prediction files would collide")
    colors = CITYSCAPES_PALETTE if key == "city" else None
    return SegmentationDataset(
        name=key,
        root=ds_root,
        split=split,
        classes=_names(standard, renames, class_names),
        has_background=has_bg,
        samples=samples,
        palette=_palette(len(standard), has_bg, colors),
        label_lut=lut,
        aliases=_aliases(standard, renames, extra),
    )


def _hint(key: str) -> str:
    if key.startswith("voc"):
        return "voc"
    if key.startswith("pc"):
        return "pc"
    return key
