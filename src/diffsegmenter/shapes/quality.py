"""Segmentation quality on shapes-world scenes, in memory: the project's end-to-end gauge.

Three numbers per run, all over a fixed list of scenes:

* ``mIoU``: dataset-level confusion matrix over background + the 4 shapes (the evaluation harness's definition);
* ``class_acc_fg``: on true foreground pixels, the fraction labelled with the right shape ("binding": does each
  shape word light up its own object?), beside ``chance_class_acc``, what guessing uniformly among the classes
  present in each image would give;
* ``fg_iou``: IoU of predicted foreground (any shape) against true foreground ("localisation").

The trivial baselines of the issue are here too, so every report can print them beside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation.metrics import ConfusionMatrix
from .world import CLASS_NAMES, Scene, make_split_scene, shape_mask

__all__ = ["scenes_of", "world_labels", "score_predictions", "evaluate_segmenter", "trivial_baselines"]


def scenes_of(split: str, count: int, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start+count-1`` of a split ("train", "val", "test")."""
    return [make_split_scene(split, i) for i in range(start, start + count)]


def world_labels(res: Any, labels: np.ndarray | None = None) -> np.ndarray:
    """A segmentation result's labels (0 = background, i = ``res.classes[i-1]``) as ``CLASS_NAMES`` ids.

    Args:
        res: a :class:`~diffsegmenter.SegmentationResult` over shape classes.
        labels (`np.ndarray`, *optional*): labels to map instead of ``res.labels`` (e.g. ``res.relabel(tau)``).

    Returns:
        `np.ndarray`: (H, W) int64 in 0..4.
    """
    lut = np.array([0] + [CLASS_NAMES.index(c) for c in res.classes], dtype=np.int64)
    return lut[res.labels if labels is None else labels]


def score_predictions(scenes: Sequence[Scene], predictions: Sequence[np.ndarray]) -> dict[str, float]:
    """Score label maps (class ids of ``CLASS_NAMES``) against the scenes' ground truth.

    Args:
        scenes: the scenes.
        predictions: per scene, (64, 64) integer labels in 0..4.

    Returns:
        `dict[str, float]`: mIoU, class_acc_fg, chance_class_acc, fg_iou (fractions in [0, 1]) and n.
    """
    cm = ConfusionMatrix(len(CLASS_NAMES))
    correct = total = 0
    chance = 0.0
    inter = union = 0
    for scene, pred in zip(scenes, predictions):
        gt = scene.labels.astype(np.int64)
        pred = np.asarray(pred, dtype=np.int64)
        cm.update(pred, gt)
        fg = gt > 0
        correct += int((pred[fg] == gt[fg]).sum())
        total += int(fg.sum())
        chance += float(fg.sum()) / max(1, len(scene.classes))
        inter += int((fg & (pred > 0)).sum())
        union += int((fg | (pred > 0)).sum())
    m = cm.compute()
    return {
        "mIoU": float(m.miou),
        "class_acc_fg": correct / max(1, total),
        "chance_class_acc": chance / max(1, total),
        "fg_iou": inter / max(1, union),
        "n": len(scenes),
        "per_class_iou": {name: float(v) for name, v in zip(CLASS_NAMES, m.iou)},
    }


def evaluate_segmenter(seg: Any, scenes: Sequence[Scene], batch: int = 16, **segment_kwargs: Any) -> dict[str, float]:
    """Run a segmenter with each scene's present classes given (the oracle setting) and score it.

    Args:
        seg: a :class:`~diffsegmenter.DiffSegmenter` (or anything with the same ``segment``).
        scenes: the scenes.
        batch (`int`, *optional*): images per ``segment`` call.
        **segment_kwargs: forwarded to ``segment`` (e.g. ``tau``, ``seed``).

    Returns:
        `dict[str, float]`: see :func:`score_predictions`.
    """
    preds = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        results = seg.segment([s.image for s in chunk], [s.classes for s in chunk], **segment_kwargs)
        preds.extend(world_labels(res) for res in results)
    return score_predictions(scenes, preds)


def trivial_baselines(scenes: Sequence[Scene], seed: int = 0) -> dict[str, dict[str, float]]:
    """The two baselines any model must beat.

    * ``brightness+first_class``: foreground = pixels brighter than the midpoint between the background level
      and the brightest pixel (Otsu-free, per image), all labelled with the first given class;
    * ``true_fg+random_class``: the exact foreground, each object's pixels labelled with a uniformly random class
      among those present.
    """
    rng = np.random.default_rng(seed)
    bright, oracle = [], []
    for s in scenes:
        gray = s.image.astype(np.float64).max(axis=2)
        thr = 0.5 * (np.median(gray) + gray.max())
        first = CLASS_NAMES.index(s.classes[0])
        bright.append(np.where(gray > thr, first, 0))
        pred = np.zeros_like(s.labels, dtype=np.int64)
        for obj in s.objects:
            pred[shape_mask(obj) & (s.labels > 0)] = CLASS_NAMES.index(rng.choice(s.classes))
        oracle.append(pred)
    return {
        "brightness+first_class": score_predictions(scenes, bright),
        "true_fg+random_class": score_predictions(scenes, oracle),
    }
