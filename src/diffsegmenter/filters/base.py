"""The category-filter contract: which classes of a vocabulary are present in an image.

In the open-vocabulary setting the segmenter gets a whole vocabulary (20 to 171 classes) and segments only the classes
a filter keeps: a class the filter misses can never be segmented, and a false one always claims some pixels
(method.md §5). Every filter (the paper's BLIP+CLIP recipe in :mod:`diffsegmenter.filters.clip`, a diffusion-only
one) implements :class:`CategoryFilter`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["CategoryFilter", "FilterDecision", "build_filter", "select_classes", "validate_vocabulary"]


@dataclass
class FilterDecision:
    """What a category filter decided for one image.

    Attributes:
        kept (`list[str]`): the classes judged present, in vocabulary order (possibly empty).
        scores (`dict[str, float]`): presence score of every vocabulary class, in vocabulary order; higher means
            more likely present (each filter documents its range).
        best_guess (`bool`, defaults to False): no class reached the filter's threshold, and ``kept`` is the
            best-scoring one alone (the filter assumes every image shows a class of the vocabulary).
    """

    kept: list[str]
    scores: dict[str, float]
    best_guess: bool = False


@runtime_checkable
class CategoryFilter(Protocol):
    """Decides which classes of a vocabulary are present in an image: :meth:`select` is the one call the segmenter
    makes (one model run per image). ``scores`` and ``predict`` give either half alone (each its own run)."""

    def select(self, image: np.ndarray, vocabulary: list[str]) -> FilterDecision:
        """The kept classes and every class's presence score, from one run on the image.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image, values in [0, 255].
            vocabulary (`list[str]`): candidate class names, unique.

        Returns:
            `FilterDecision`.
        """
        ...

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


def select_classes(flt: Any, image: np.ndarray, vocabulary: list[str]) -> FilterDecision:
    """Ask a filter object for its decision: its :meth:`CategoryFilter.select`, or, for a user object that only has
    ``scores(image, vocabulary)`` and ``predict(image, vocabulary)``, those two calls.

    Raises:
        TypeError: the object has neither.
    """
    if hasattr(flt, "select"):
        decision = flt.select(image, vocabulary)
        if not (hasattr(decision, "kept") and hasattr(decision, "scores")):
            raise TypeError(
                f"{type(flt).__name__}.select() must return a FilterDecision(kept, scores), got "
                f"{type(decision).__name__}"
            )
        what = f"{type(flt).__name__}.select()"
        return FilterDecision(
            _in_vocabulary(decision.kept, vocabulary, f"{what}.kept"),
            _scores_in_vocabulary(decision.scores, vocabulary, f"{what}.scores"),
            bool(getattr(decision, "best_guess", False)),
        )
    if hasattr(flt, "scores") and hasattr(flt, "predict"):
        scores = _scores_in_vocabulary(flt.scores(image, vocabulary), vocabulary, f"{type(flt).__name__}.scores()")
        kept = _in_vocabulary(flt.predict(image, vocabulary), vocabulary, f"{type(flt).__name__}.predict()")
        return FilterDecision(kept, scores)
    raise TypeError(
        f"a filter must have select(image, vocabulary) (or scores() and predict()), got {type(flt).__name__}"
    )


def _in_vocabulary(names: Any, vocabulary: list[str], what: str) -> list[str]:
    """A filter's kept names as the vocabulary spells them, in its order (compared as class lists compare names:
    ``"Cat"`` is ``"cat"``); a name outside it, or a plain string (read letter by letter), is refused: either left
    the image with no class and no word."""
    from ..classes import find_class

    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(f"{what} must give a list of class names, got {names!r}")
    where = set()
    for name in names:
        index = find_class(name, vocabulary) if isinstance(name, str) else None
        if index is None:
            raise ValueError(f"{what} kept {name!r}, which is not in the vocabulary it was given {vocabulary!r}")
        where.add(index)
    return [vocabulary[i] for i in sorted(where)]


def _scores_in_vocabulary(scores: Any, vocabulary: list[str], what: str) -> dict[str, float]:
    """Every vocabulary class's score from a filter's mapping, its keys matched as class lists match names (0.0
    for a class it did not score; a key outside the vocabulary, such as a filter's own "background", is left out,
    as before)."""
    from ..classes import find_class

    if not isinstance(scores, Mapping):
        raise TypeError(f"{what} must give a mapping of class name -> score, got {type(scores).__name__}")
    out = dict.fromkeys(vocabulary, 0.0)
    for name, score in scores.items():
        index = find_class(name, vocabulary) if isinstance(name, str) else None
        if index is not None:
            out[vocabulary[index]] = float(score)
    return out


def build_filter(name: str, segmenter: Any, **options: Any) -> Any:
    """The factory of the built-in filters, by name.

    Args:
        name (`str`): ``"diffusion"`` (the segmenter's own diffusion model: denoising-error reduction per class,
            settings from the model folder's recommendation) or ``"clip"`` (the paper's BLIP + CLIP recipe; reuses
            the segmenter's BLIP captioner when it has one).
        segmenter (`DiffSegmenter`): supplies the model (diffusion) or the device, dtype and captioner (clip).
        **options: forwarded to :class:`~diffsegmenter.filters.diffusion.DiffusionFilter` or
            :meth:`~diffsegmenter.filters.clip.ClipBlipFilter.from_pretrained` (e.g. ``threshold=``, ``clip=``;
            ``blip=`` loads that BLIP, or None for none, instead of reusing the segmenter's captioner).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name == "diffusion":
        from .diffusion import DiffusionFilter

        return DiffusionFilter(segmenter, **options)
    if name == "clip":
        from ..captioner import BlipCaptioner
        from .clip import ClipBlipFilter

        # the segmenter's BLIP is reused unless `blip=` names the filter's own (None: image similarity only)
        captioner = segmenter.captioner if isinstance(segmenter.captioner, BlipCaptioner) else None
        if "blip" in options:
            captioner = None
        kwargs = {"device": segmenter.device, "dtype": segmenter.dtype, "captioner": captioner, **options}
        return ClipBlipFilter.from_pretrained(**kwargs)
    raise ValueError(
        f"unknown filter {name!r}: use None, 'clip' (BLIP + CLIP, the paper's recipe), 'diffusion' (the diffusion "
        "model alone), or pass a filter object with select(image, vocabulary)"
    )
