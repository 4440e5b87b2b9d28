"""Class decision: which attention passes a segmentation runs, and how their maps become class scores.

Three strategies, chosen from the config by :func:`class_decision`:

- :class:`PaperDecision` (the paper; ``class_level_weights`` None): each class's fused, completed map decides both
  *where* a class is and *which* class a pixel gets. One pass.
- :class:`SeparateWeightsDecision` (``class_level_weights`` set, not in the paper; or a read-out whose own maps only
  decide which, ``background="paper"``, with ``level_weights``): the paper's maps decide *where*;
  the raw cross-attention fused with ``class_level_weights`` decides *which*
  (:func:`~diffsegmenter.aggregation.split_where_and_which`). One pass computes both.
- :class:`SecondPassDecision` (also ``class_resolution``, not in the paper): as above, but the *which* maps come from
  a second pass at an input size of their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .aggregation import split_where_and_which, upsample_scores
from .readouts import readout_for, splits_where_and_which

__all__ = [
    "PassPlan",
    "ClassDecision",
    "PaperDecision",
    "SeparateWeightsDecision",
    "SecondPassDecision",
    "RawScoresDecision",
    "class_decision",
]


@dataclass(frozen=True)
class PassPlan:
    """One attention pass a decision needs.

    Attributes:
        resolution (`int`, *optional*): input side length of the pass; None = the segmenter's resolution.
        where (`bool`): the pass computes the paper's fused, completed maps.
        which_weights (`dict[int, float]`, *optional*): the pass also fuses class-decision maps with these weights.
    """

    resolution: int | None = None
    where: bool = True
    which_weights: dict[int, float] | None = None


class ClassDecision(ABC):
    """Which passes to run (:meth:`passes`) and how their maps become one image's class scores (:meth:`scores`)."""

    @abstractmethod
    def passes(self) -> list[PassPlan]:
        """The passes to run, in order."""

    @abstractmethod
    def scores(self, where: torch.Tensor, which: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """One image's class scores at its size.

        Args:
            where (`torch.Tensor`): (K, h, w) the where maps of its K classes, K >= 1.
            which (`torch.Tensor`, *optional*): (K, h', w') its class-decision maps (None if no pass made them).
            size (`tuple[int, int]`): the image's (H, W).

        Returns:
            `torch.Tensor`: (K, H, W) float32 in [0, 1].
        """


class PaperDecision(ClassDecision):
    """The paper: the fused, completed maps, upsampled and min-max normalised per class, decide where and which."""

    def passes(self) -> list[PassPlan]:
        return [PassPlan(resolution=None, where=True)]

    def scores(self, where: torch.Tensor, which: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        return upsample_scores(where, size)


class SeparateWeightsDecision(ClassDecision):
    """The paper's maps decide where; the raw cross-attention fused with other level weights decides which.

    Args:
        class_level_weights (`dict[int, float]`): fusion weights of the class-decision maps.
    """

    def __init__(self, class_level_weights: dict[int, float]) -> None:
        self.class_level_weights = dict(class_level_weights)

    def passes(self) -> list[PassPlan]:
        return [PassPlan(resolution=None, where=True, which_weights=self.class_level_weights)]

    def scores(self, where: torch.Tensor, which: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if which is None:
            raise ValueError("this class decision needs class-decision maps; none were computed")
        scores = upsample_scores(where, size)
        which = F.interpolate(which[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        return split_where_and_which(scores, which)


class SecondPassDecision(SeparateWeightsDecision):
    """As :class:`SeparateWeightsDecision`, with the class-decision maps from a second pass at ``class_resolution``.

    Args:
        class_level_weights (`dict[int, float]`): fusion weights of the class-decision maps.
        class_resolution (`int`): input side length of the second pass.
    """

    def __init__(self, class_level_weights: dict[int, float], class_resolution: int) -> None:
        super().__init__(class_level_weights)
        self.class_resolution = int(class_resolution)

    def passes(self) -> list[PassPlan]:
        return [
            PassPlan(resolution=None, where=True),
            PassPlan(resolution=self.class_resolution, where=False, which_weights=self.class_level_weights),
        ]


class RawScoresDecision(PaperDecision):
    """For read-outs whose maps are probabilities (``readout="single-block"``): upsampled without the final min-max,
    so the class decision is the argmax of the raw maps and tau is compared with them."""

    def scores(self, where: torch.Tensor, which: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(where[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
        return x.clamp(0, 1)


def class_decision(config, resolution: int) -> ClassDecision:
    """The strategy a :class:`~diffsegmenter.config.SegmenterConfig` asks for.

    Args:
        config (`SegmenterConfig`): reads ``class_level_weights`` and ``class_resolution``.
        resolution (`int`): the segmenter's input side length (a ``class_resolution`` equal to it is no second pass).
    """
    if getattr(config, "readout", "paper") == "single-block":
        return RawScoresDecision()  # SegmenterConfig refuses class_level_weights with it
    if config.class_level_weights is None:
        if splits_where_and_which(readout_for(getattr(config, "readout", "paper"))):
            # the paper's maps decide where and the read-out's own (fused with level_weights) which, in one pass
            return SeparateWeightsDecision(config.level_weights)
        return PaperDecision()
    # class_resolution is set only with class_level_weights (SegmenterConfig checks)
    if config.class_resolution is not None and config.class_resolution != resolution:
        return SecondPassDecision(config.class_level_weights, config.class_resolution)
    return SeparateWeightsDecision(config.class_level_weights)
