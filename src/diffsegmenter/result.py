"""The result of segmenting one image: :class:`SegmentationResult`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .aggregation import label_with_background
from .config import check_tau

__all__ = ["SegmentationResult"]


@dataclass
class SegmentationResult:
    """Segmentation of one image.

    Attributes:
        labels (`np.ndarray`): (H, W) int32 at the input's size; 0 = background, i = ``classes[i-1]``.
        scores (`np.ndarray`): (K, H, W) float32 in [0, 1], one map per class in ``classes`` order; each map
            reaches 1 at its peak (per-class min-max, as the paper). With ``config.class_level_weights`` set, a map
            is the foreground evidence times the class's share of the class evidence
            (:func:`~diffsegmenter.aggregation.split_where_and_which`), so it need not reach 1.
        classes (`list[str]`): the classes segmented, in order (after the category filter, if one ran).
        prompts (`list[str]`): the exact text prompt whose attention gave each class's map.
        tau (`float`): the background score used for ``labels``.
        candidates (`dict[str, float] | None`): presence score of every vocabulary class when a filter ran.
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float
    candidates: dict[str, float] | None = None

    def relabel(self, tau: float) -> np.ndarray:
        """Labels for another background score, from the stored score maps (no model call).

        Args:
            tau (`float`): background score.

        Returns:
            `np.ndarray`: (H, W) int32 labels.
        """
        tau = check_tau(tau, allow_no_background=True)
        return label_with_background(torch.from_numpy(self.scores), tau).numpy().astype(np.int32)
