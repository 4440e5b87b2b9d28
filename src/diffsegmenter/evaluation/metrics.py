"""Dataset-level semantic segmentation metrics (mIoU, mAcc, aAcc) from an accumulated confusion matrix.

The definition is the benchmark one used by mmsegmentation's ``IoUMetric`` and by torchmetrics'
``MulticlassJaccardIndex(num_classes, ignore_index=255, average="macro")``:

* pixels whose ground truth equals ``ignore_index`` (255) are dropped;
* intersection, prediction area and ground-truth area are **summed over the whole dataset** (not averaged per image);
* ``IoU_c = TP_c / (GT_c + PRED_c - TP_c)``; a class with no pixel in either the ground truth or the prediction has
  an undefined IoU (NaN) and is left out of the mean (``mIoU = nanmean(IoU)``);
* ``Acc_c = TP_c / GT_c`` (NaN when the class has no ground-truth pixel), ``mAcc = nanmean(Acc)``,
  ``aAcc = sum(TP) / sum(GT)``.

A prediction may also hold ``ignore_index`` ("no prediction", e.g. a missing prediction file on a dataset without a
background class). Such a pixel counts in the ground-truth area of its class but in no prediction area, so it is a
miss, exactly as in mmsegmentation (whose histogram drops out-of-range predictions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "metrics_from_confusion"]

IGNORE_INDEX = 255


@dataclass
class SegmentationMetrics:
    """Metrics computed from a dataset-level confusion matrix. All values are fractions in [0, 1] (not percent).

    Attributes:
        iou (`np.ndarray` of shape `(num_classes,)`, float64):
            Per-class IoU; NaN for a class absent from both the ground truth and the prediction.
        acc (`np.ndarray` of shape `(num_classes,)`, float64):
            Per-class accuracy (recall) ``TP / GT``; NaN for a class with no ground-truth pixel.
        miou (`float`): NaN-mean of `iou` (NaN if every class is NaN).
        macc (`float`): NaN-mean of `acc`.
        aacc (`float`): overall pixel accuracy ``sum(TP) / sum(GT)`` (NaN if there is no valid pixel).
        gt_area, pred_area, intersection (`np.ndarray` of shape `(num_classes,)`, int64): the summed pixel counts.
    """

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    aacc: float
    gt_area: np.ndarray
    pred_area: np.ndarray
    intersection: np.ndarray

    def to_dict(self, class_names: list[str] | None = None, percent: bool = True, ndigits: int = 4) -> dict[str, Any]:
        """JSON-ready summary.

        Args:
            class_names (`list[str]`, *optional*): one name per class; defaults to the class indices as strings.
            percent (`bool`, defaults to `True`): report values in percent (0-100) instead of fractions.
            ndigits (`int`, defaults to 4): rounding of the reported values.

        Returns:
            `dict`: ``{"mIoU", "mAcc", "aAcc", "per_class_iou": {name: value | None}, "per_class_acc": {...}}``;
            NaN values become ``None`` so that the dict serialises to strict JSON.
        """
        names = class_names if class_names is not None else [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"got {len(names)} class names for {len(self.iou)} classes")
        scale = 100.0 if percent else 1.0

        def fmt(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value) * scale, ndigits)

        return {
            "mIoU": fmt(self.miou),
            "mAcc": fmt(self.macc),
            "aAcc": fmt(self.aacc),
            "per_class_iou": {name: fmt(v) for name, v in zip(names, self.iou)},
            "per_class_acc": {name: fmt(v) for name, v in zip(names, self.acc)},
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def metrics_from_confusion(matrix: np.ndarray, unassigned: np.ndarray | None = None) -> SegmentationMetrics:
    """Compute IoU / accuracy metrics from a confusion matrix.

    Args:
        matrix (`np.ndarray` of shape `(C, C)`, integer):
            ``matrix[g, p]`` = number of valid pixels with ground truth ``g`` predicted as ``p``.
        unassigned (`np.ndarray` of shape `(C,)`, integer, *optional*):
            Number of valid pixels of ground-truth class ``g`` that received no prediction (prediction = ignore
            index). They count as misses.

    Returns:
        [`SegmentationMetrics`]
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square (C, C), got shape {matrix.shape}")
    num_classes = matrix.shape[0]
    if unassigned is None:
        unassigned = np.zeros(num_classes, dtype=np.int64)
    unassigned = np.asarray(unassigned, dtype=np.int64)
    if unassigned.shape != (num_classes,):
        raise ValueError(f"unassigned must have shape ({num_classes},), got {unassigned.shape}")

    intersection = np.diag(matrix).astype(np.int64)
    gt_area = matrix.sum(axis=1).astype(np.int64) + unassigned
    pred_area = matrix.sum(axis=0).astype(np.int64)
    union = gt_area + pred_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.maximum(union, 1), np.nan)
        acc = np.where(gt_area > 0, intersection / np.maximum(gt_area, 1), np.nan)
    total = int(gt_area.sum())
    aacc = float(intersection.sum() / total) if total > 0 else float("nan")
    return SegmentationMetrics(
        iou=iou.astype(np.float64),
        acc=acc.astype(np.float64),
        miou=_nanmean(iou),
        macc=_nanmean(acc),
        aacc=aacc,
        gt_area=gt_area,
        pred_area=pred_area,
        intersection=intersection,
    )


class ConfusionMatrix:
    """Accumulates a dataset-level confusion matrix over (prediction, ground truth) label maps.

    Args:
        num_classes (`int`): number of classes ``C``; valid labels are ``0 .. C-1``.
        ignore_index (`int`, defaults to 255): ground-truth value that is not evaluated. In a prediction the same value
            means "no prediction" and counts as a miss for the ground-truth class.

    Example:
        ```python
        >>> cm = ConfusionMatrix(num_classes=21)
        >>> cm.update(pred, gt)  # (H, W) integer arrays, once per image
        >>> cm.compute().miou
        ```
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.unassigned = np.zeros(num_classes, dtype=np.int64)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix[:] = 0
        self.unassigned[:] = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image (or a batch) to the counts.

        Args:
            pred (`np.ndarray` of any shape, integer): predicted class ids in ``0 .. C-1``, or ``ignore_index`` for
                "no prediction".
            target (`np.ndarray` of the same shape, integer): ground-truth class ids in ``0 .. C-1`` or
                ``ignore_index``.
        """
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {target.shape}")
        if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(target.dtype, np.integer)):
            raise ValueError(f"labels must be integer arrays, got {pred.dtype} and {target.dtype}")
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        target = target.reshape(-1).astype(np.int64, copy=False)
        c = self.num_classes

        valid = target != self.ignore_index
        target = target[valid]
        pred = pred[valid]
        if target.size and (target.min() < 0 or target.max() >= c):
            bad = np.unique(target[(target < 0) | (target >= c)])[:10].tolist()
            raise ValueError(f"ground truth holds values {bad} outside 0..{c - 1} and != {self.ignore_index}")
        assigned = pred != self.ignore_index
        if pred.size and assigned.any():
            p = pred[assigned]
            if p.min() < 0 or p.max() >= c:
                bad = np.unique(p[(p < 0) | (p >= c)])[:10].tolist()
                raise ValueError(f"prediction holds values {bad} outside 0..{c - 1} and != {self.ignore_index}")
        self.matrix += np.bincount(target[assigned] * c + pred[assigned], minlength=c * c).reshape(c, c)
        self.unassigned += np.bincount(target[~assigned], minlength=c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of another accumulator (e.g. from another shard) in place and return `self`."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError("cannot merge confusion matrices with different num_classes / ignore_index")
        self.matrix += other.matrix
        self.unassigned += other.unassigned
        return self

    def compute(self) -> SegmentationMetrics:
        """Metrics of everything accumulated so far, see [`metrics_from_confusion`]."""
        return metrics_from_confusion(self.matrix, self.unassigned)
