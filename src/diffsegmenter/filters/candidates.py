"""Read and write the released category-filter JSON (``predict_syn_txt_0.8_img_0.97.json``, method.md §5.1).

The file maps each filter *source* to a per-image list of class names::

    {"image_similarity": {"2007_000033.jpg": ["plane"], ...},
     "text_similarity":  {"2007_000033.jpg": ["plane"], ...},
     "synonym_matching": {"2007_000033.jpg": ["plane", "people"], ...}}

The released VOC12 file keys images by absolute paths (``/root/autodl-tmp/.../2007_000033.jpg``), the VOC10 and COCO
files by file names (``2007_000033.jpg``), so the released VOC12 script never matches its own file. Here every key is
normalised to its **image id: the file name without folders and without extension** (:func:`image_key`, e.g.
``"2007_000033"``), which is also how dataset readers name images; look images up with ``image_key(path)``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..io.paths import image_key  # the one image key (re-exported: diffsegmenter.filters.image_key)

logger = logging.getLogger(__name__)

#: The three sources of the released files, in the order they are written.
SOURCES: tuple[str, ...] = ("image_similarity", "text_similarity", "synonym_matching")
#: The sources the released segmentation scripts use (their per-image union), method.md §5.2.
DEFAULT_CHOICE: tuple[str, ...] = ("image_similarity", "text_similarity")


def load_candidates(
    path: str | os.PathLike[str],
    choice: Sequence[str] | None = None,
    vocabulary: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Read a category-filter JSON and return, per image, the union of the chosen sources.

    Args:
        path (`str` or `os.PathLike`): the JSON file.
        choice (`Sequence[str]`, *optional*): sources to unite; every one must be in the file. None = those of
            ``("image_similarity", "text_similarity")`` the file has (the released scripts' union; a file with only
            one of them, e.g. written by another filter, is read from that one). Add ``"synonym_matching"`` for the
            three-way union.
        vocabulary (`Sequence[str]`, *optional*): the dataset's class names. When given, each list follows the
            vocabulary's order and names outside it raise; otherwise names keep their order of first appearance
            (sources in ``choice`` order), duplicates removed. Either way the result is deterministic (the released
            reader built unordered sets).

    Returns:
        `dict[str, list[str]]`: image id (see :func:`image_key`) -> class names present. An image that appears in
        any chosen source is included, possibly with an empty list.

    Raises:
        ValueError: the file is not a JSON object of sources, a chosen source is missing, two keys normalise to the
            same image id with different lists, or (with ``vocabulary``) a name is not in the vocabulary.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise ValueError(f"candidate file {str(path)!r} does not exist; pass the path of a filter JSON.") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"candidate file {str(path)!r} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"candidate file {str(path)!r} must hold a JSON object of sources such as {list(SOURCES)}, "
            f"got {type(data).__name__}."
        )
    if choice is None:
        choice = [c for c in DEFAULT_CHOICE if c in data] or list(DEFAULT_CHOICE)
    choice = [choice] if isinstance(choice, str) else list(choice)
    missing = [c for c in choice if c not in data]
    if not choice or missing:
        raise ValueError(
            f"candidate file {str(path)!r} has sources {sorted(data)}; the requested choice {choice} "
            f"{'is empty' if not choice else f'lacks {missing}'}. Pick sources from those present."
        )
    order = {name: i for i, name in enumerate(vocabulary)} if vocabulary is not None else None

    merged: dict[str, list[str]] = {}
    origin: dict[tuple[str, str], str] = {}  # (source, image id) -> raw key, to report collisions
    for source in choice:
        per_image = data[source]
        if not isinstance(per_image, dict):
            raise ValueError(f"source {source!r} in {str(path)!r} must map image keys to lists of class names.")
        for raw_key, names in per_image.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{source}[{raw_key!r}] must be a list of class names, got {names!r}.")
            key = image_key(raw_key)
            if (source, key) in origin and per_image[origin[source, key]] != names:
                raise ValueError(
                    f"keys {origin[source, key]!r} and {raw_key!r} of source {source!r} both normalise to image id "
                    f"{key!r} but list different classes; rename the images so that their file names are unique."
                )
            origin[source, key] = raw_key
            bucket = merged.setdefault(key, [])
            bucket.extend(n for n in names if n not in bucket)

    if order is not None:
        unknown = sorted({n for names in merged.values() for n in names if n not in order})
        if unknown:
            raise ValueError(
                f"candidate file {str(path)!r} names classes {unknown} that are not in the given vocabulary; pass the "
                "vocabulary the file was made with, or vocabulary=None to keep the names as written."
            )
        merged = {k: sorted(v, key=order.__getitem__) for k, v in merged.items()}
    logger.debug("Read candidates for %d images from %s (sources %s)", len(merged), path, choice)
    return merged


def save_candidates(
    path: str | os.PathLike[str],
    per_image: Mapping[str, Mapping[str, Iterable[str]]],
) -> Path:
    """Write per-image, per-source class lists in the released JSON layout (atomically).

    Every source of :data:`SOURCES` is written (so the released reader finds the keys it expects), plus any other
    source present; an image missing from a source gets an empty list there.

    Args:
        path (`str` or `os.PathLike`): output JSON file (parent folders are created).
        per_image (`Mapping[str, Mapping[str, Iterable[str]]]`): image key -> {source -> class names}, e.g.
            ``{"2007_000033": {"image_similarity": ["plane"], "text_similarity": []}}``. Keys are written as given
            (:func:`load_candidates` normalises them when reading).

    Returns:
        `Path`: the file written.

    Raises:
        ValueError: a value is not a mapping of sources to lists of strings.
    """
    sources = list(SOURCES)
    for key, by_source in per_image.items():
        if not isinstance(by_source, Mapping):
            raise ValueError(
                f"per_image[{key!r}] must map source names (e.g. 'image_similarity') to class lists, "
                f"got {type(by_source).__name__}."
            )
        sources.extend(s for s in by_source if s not in sources)
    out: dict[str, dict[str, list[str]]] = {s: {} for s in sources}
    for key, by_source in per_image.items():
        for source in sources:
            names = list(by_source.get(source, []))
            if not all(isinstance(n, str) for n in names):
                raise ValueError(f"per_image[{key!r}][{source!r}] must be class-name strings, got {names!r}.")
            out[source][str(key)] = names
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
