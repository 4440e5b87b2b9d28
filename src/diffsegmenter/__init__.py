"""diffsegmenter: training-free open-vocabulary semantic segmentation with a frozen diffusion model.

Importing the package loads no model, reads no file and touches no network: the public names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DiffSegmenter", "SegmentationResult", "SegmenterConfig", "ModelNotFoundError", "__version__"]

__version__ = "0.1.0"

_LAZY = {
    "DiffSegmenter": "segmenter",
    "SegmentationResult": "segmenter",
    "SegmenterConfig": "config",
    "ModelNotFoundError": "hub",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import SegmenterConfig
    from .hub import ModelNotFoundError
    from .segmenter import DiffSegmenter, SegmentationResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'diffsegmenter' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion lists the lazily imported names too
    return sorted(set(globals()) | set(_LAZY))
