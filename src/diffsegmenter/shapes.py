"""The shapes world's class names: the only part of the world the library needs at run time.

The world itself (scene generator, captions, VOC export) and the shipped model's training and tuning live outside the
installed package, in the repository's ``research/shapes/``; they import these names from here. The shipped model's
folder is ``diffsegmenter/models/shapes/``.
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "SHAPE_NAMES"]

#: Label values of the world's ground truth: 0 background, 1 circle, 2 square, 3 triangle, 4 cross.
CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle", "cross")
#: The shape classes (``CLASS_NAMES`` without background): the shipped model's vocabulary.
SHAPE_NAMES: tuple[str, ...] = CLASS_NAMES[1:]
