"""The one rule for a list of class names, shared by the API (``DiffSegmenter.segment``) and the command line.

Kept free of heavy imports so that the command line can check ``--classes`` before anything is loaded.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ClassListError",
    "check_class_names",
    "class_key",
    "class_lists_per_image",
    "clean_class_name",
    "find_class",
    "short_name",
]


BACKGROUND = "background"
"""The name of label 0 in every label map and export; no class may take it."""


class ClassListError(ValueError):
    """A class list that cannot be segmented: empty, a plain string, an empty, duplicate or reserved name."""


def short_name(name: str, limit: int = 40) -> str:
    """``name`` cut to ``limit`` characters for messages (an ellipsis marks the cut)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


_JOINERS = frozenset("\u200c\u200d")  # zero-width non-joiner and joiner: part of Persian, Indic and emoji spelling


def clean_class_name(name: str) -> str:
    """A class name as it is kept: Unicode NFC, invisible format characters (zero-width space, soft hyphen, BOM, ...)
    removed but for the zero-width (non-)joiners that some scripts spell with, whitespace runs as single spaces, ends
    stripped."""
    nfc = unicodedata.normalize("NFC", name)
    return " ".join("".join(ch for ch in nfc if unicodedata.category(ch) != "Cf" or ch in _JOINERS).split())


def _unwritable(ch: str) -> bool:
    """A control character (DEL, C0/C1 controls left after whitespace is collapsed), a lone surrogate (a byte that
    was not UTF-8) or a Unicode non-character: YAML and XML writers cannot hold them."""
    code = ord(ch)
    return unicodedata.category(ch) in ("Cc", "Cs") or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def class_key(name: str) -> str:
    """The form in which two class names are compared: :func:`clean_class_name`, Unicode NFKC, case-folded, without
    any format character. Names that look alike (``"café"`` typed or pasted decomposed, ``"cat"`` with a zero-width
    space, ``"Cat"``) share it."""
    key = unicodedata.normalize("NFKC", clean_class_name(name)).casefold()
    return "".join(ch for ch in key if unicodedata.category(ch) != "Cf")


def check_class_names(names: Any, *, example: str = "classes=['cat', 'sofa']") -> list[str]:
    """Validate and normalise class names: the rule both the API and the command line apply.

    - a list (or tuple) of strings, not a single string;
    - at least one name (an empty list would silently give an all-background result);
    - every name non-empty after :func:`clean_class_name` (single spaces, NFC, no invisible format characters);
    - no duplicates, compared by :func:`class_key` (case-insensitively, and text pasted with a zero-width space or
      a decomposed accent equals the typed name);
    - no control character, lone surrogate or Unicode non-character (YAML and XML exports cannot hold them);
    - no class named "background" (any case): label 0 is the background, the pixels no class claims above the
      threshold, and a second label of that name would make the label map and every export ambiguous.

    Whether the model's tokenizer can place each name is checked by ``DiffSegmenter.check_classes``.

    Args:
        names: the class names.
        example (`str`, *optional*): how a correct list is written where the names came from, shown in the messages
            (the command line passes ``"--classes 'cat,sofa'"``).

    Returns:
        `list[str]`: the names as :func:`clean_class_name` keeps them, in order.

    Raises:
        ClassListError: the message names the problem and shows a correct list.
    """
    if isinstance(names, str):
        raise ClassListError(f"classes must be a list of names, not a single string ({names!r}); e.g. {example}")
    if not isinstance(names, Sequence):
        raise ClassListError(f"classes must be a list of names, got {type(names).__name__}; e.g. {example}")
    if not names:
        raise ClassListError(
            f"the class list is empty, so nothing could be segmented; give at least one name, e.g. {example}"
        )
    out: list[str] = []
    seen: dict[str, str] = {}
    for position, name in enumerate(names, start=1):
        clean = clean_class_name(name) if isinstance(name, str) else ""
        if not clean:
            raise ClassListError(
                f"class names must be non-empty strings, got {name!r} as name {position} of {len(names)}; "
                f"e.g. {example}"
            )
        bad = next((ch for ch in clean if _unwritable(ch)), None)
        if bad is not None:
            raise ClassListError(
                f"class name {short_name(clean)!r} (name {position} of {len(names)}) holds the character "
                f"U+{ord(bad):04X}, a control character or non-character that label files (YAML, XML) cannot hold; "
                "remove it (a name read from a file in another encoding than UTF-8 gives such characters too)"
            )
        key = class_key(clean)
        if key == BACKGROUND:
            raise ClassListError(
                f"{clean!r} cannot be a class: label 0 is the background, every pixel that no class scores above "
                "the threshold tau; leave it out (a higher tau gives more background) or name what the region "
                f"shows, e.g. 'wall' or 'sky'; e.g. {example}"
            )
        if key in seen:
            raise ClassListError(
                f"duplicate class name {short_name(clean)!r} (also given as {short_name(seen[key])!r}); "
                "give each class once"
            )
        seen[key] = clean
        out.append(clean)
    return out


def find_class(name: str, names: Sequence[str]) -> int | None:
    """Where ``name`` is in ``names``, compared as :func:`check_class_names` compares duplicates
    (:func:`class_key`), so that ``"Cat"`` finds ``"cat"``; None when it is not there.

    Args:
        name (`str`): a class name.
        names (`Sequence[str]`): class names, unique in that sense (a checked list).

    Returns:
        `int | None`: the index in ``names``.
    """
    key = class_key(name)
    return next((i for i, other in enumerate(names) if class_key(other) == key), None)


def class_lists_per_image(classes: Any, n: int, default: Sequence[str] | None = None) -> list[list[str]]:
    """One checked class list per image, from what ``DiffSegmenter.segment`` was given.

    Args:
        classes: one list of names for every image, one list per image (a list of lists), or None (``default``).
        n (`int`): the number of images.
        default (`Sequence[str]`, *optional*): the model's own classes, used when ``classes`` is None.

    Returns:
        `list[list[str]]`: ``n`` lists of names as :func:`clean_class_name` keeps them (copies: one list per image).

    Raises:
        ValueError: no classes and no default; a number of lists other than ``n``; a list that breaks
            :func:`check_class_names`.
    """
    if classes is None:
        if not default:
            raise ValueError(
                "no classes given: pass classes=['cat', 'sofa', ...] (with filter='clip' or 'diffusion' to pick "
                "the present ones from a vocabulary)"
            )
        classes = default
    per_image = not isinstance(classes, str) and isinstance(classes, Sequence) and classes
    if per_image and all(isinstance(c, (list, tuple)) for c in classes):
        if len(classes) != n:
            raise ValueError(f"got {len(classes)} class lists for {n} images; give one list per image or one list")
        return [check_class_names(c) for c in classes]
    validated = check_class_names(classes)
    return [list(validated) for _ in range(n)]
