"""Import an optional dependency where a feature needs it, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PIP_NAMES", "require"]

#: Import name -> what ``pip install`` takes, where they differ.
PIP_NAMES: dict[str, str] = {"cv2": "opencv-python-headless", "ray": "'ray[data]'"}


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``"pycocotools.mask"``) for ``feature``; it ships with ``diffsegmenter[extra]``.

    Raises:
        ImportError: the module is not installed; the message says which extra installs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise ImportError(
            f"{feature} needs {top}, which is not installed: pip install 'diffsegmenter[{extra}]' (or pip install "
            f"{PIP_NAMES.get(top, top)})"
        ) from err
