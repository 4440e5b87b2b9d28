"""The category-filter contract: which classes of a vocabulary are present in an image.

In the open-vocabulary setting the segmenter gets a whole vocabulary (20 to 171 classes) and segments only the classes
a filter keeps: a class the filter misses can never be segmented, and a false one always claims some pixels
(method.md §5). Every filter (the paper's BLIP+CLIP recipe in :mod:`diffsegmenter.filters.clip`, a diffusion-only
one) implements :class:`CategoryFilter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CategoryFilter(Protocol):
    """Decides which classes of a vocabulary are present in an image."""

    def scores(self, image: np.ndarray, vocabulary: list[str]) -> dict[str, float]:
        """Presence score of every vocabulary class.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image, values in [0, 255].
            vocabulary (`list[str]`): candidate class names, unique.

        Returns:
            `dict[str, float]`: one score per class, in vocabulary order; higher means more likely present. Each
            filter documents its range (e.g. [0, 1]).
        """
        ...

    def predict(self, image: np.ndarray, vocabulary: list[str]) -> list[str]:
        """Classes judged present.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image, values in [0, 255].
            vocabulary (`list[str]`): candidate class names, unique.

        Returns:
            `list[str]`: the kept classes, in vocabulary order (possibly empty).
        """
        ...


def validate_vocabulary(vocabulary: Sequence[str]) -> list[str]:
    """Check that a vocabulary is a non-empty sequence of unique, non-blank class names (duplicates compared
    case-insensitively): :func:`diffsegmenter.classes.check_class_names`, the rule of ``segment`` and the CLI.

    Args:
        vocabulary (`Sequence[str]`): candidate class names.

    Returns:
        `list[str]`: the vocabulary as a list, unchanged.

    Raises:
        ValueError: not a sequence of strings, empty, blank names, or duplicates (each named in the message).
    """
    from diffsegmenter.classes import ClassListError, check_class_names

    try:
        check_class_names(vocabulary, example="['cat', 'dog']")  # the rule segment() and the CLI apply
    except ClassListError as exc:
        raise ClassListError(f"vocabulary: {exc}") from None
    return list(vocabulary)
