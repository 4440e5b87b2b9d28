"""Category filters: decide which classes of a vocabulary are present in an image (method.md §5).

- :class:`CategoryFilter`: the protocol every filter implements (``select`` -> :class:`FilterDecision`).
- :func:`build_filter`: the built-in filters by name (``"diffusion"``, ``"clip"``).
- :class:`ClipBlipFilter`: the paper's recipe, BLIP captions + CLIP image-text and text-text similarity.
- :class:`DiffusionFilter`: needs only the diffusion model (denoising-error reduction of each class prompt).
- :func:`load_candidates` / :func:`save_candidates`: the released JSON format of precomputed filter outputs.

Names are resolved lazily, so importing this package loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffsegmenter.filters.base import (
        CategoryFilter,
        FilterDecision,
        build_filter,
        select_classes,
        validate_vocabulary,
    )
    from diffsegmenter.filters.candidates import image_key, load_candidates, save_candidates
    from diffsegmenter.filters.clip import ClipBlipDecision, ClipBlipFilter
    from diffsegmenter.filters.diffusion import DiffusionFilter

_LAZY = {
    "CategoryFilter": "base",
    "FilterDecision": "base",
    "build_filter": "base",
    "select_classes": "base",
    "validate_vocabulary": "base",
    "image_key": "candidates",
    "load_candidates": "candidates",
    "save_candidates": "candidates",
    "ClipBlipDecision": "clip",
    "ClipBlipFilter": "clip",
    "DiffusionFilter": "diffusion",
}

__all__ = [
    "CategoryFilter",
    "ClipBlipDecision",
    "ClipBlipFilter",
    "DiffusionFilter",
    "FilterDecision",
    "build_filter",
    "image_key",
    "load_candidates",
    "save_candidates",
    "select_classes",
    "validate_vocabulary",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
