"""Post-processing of score maps with the image's colours: pixel-adaptive mask refinement (PAMR).

PAMR (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020) moves every pixel's
class scores towards those of its neighbours of similar colour: a few rounds of a weighted average over a sparse
neighbourhood (the 8 neighbours at each of several dilations), the weights a softmax of the negative colour
distance, scaled by the local colour spread. Training-free methods of this field report it as an optional step
(NACLIP's default; OVDiff 67.1 -> 69.0 VOC; ``shared/docs/protocols.md``), separately from their main tables.
The paper's method has none ([CODE]: bilinear upsampling only), so it is off by default
(``SegmenterConfig.refine``).

Pure tensor functions (no model; the default dilations are ``config.PAMR_DILATIONS``). Each round is a convex
combination of neighbouring scores, so scores in [0, 1] stay in [0, 1] and ``tau`` keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import PAMR_DILATIONS

__all__ = ["Refiner", "neighbour_offsets", "pamr", "pamr_weights"]


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of the 8 neighbours of a 3x3 window at each dilation, without the centre."""
    return [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(C, H + 2 pad, W + 2 pad): ``x`` (C, H, W) with its edges replicated (a pixel near the border sees the border
    pixel in place of a neighbour outside the image)."""
    return F.pad(x.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]


def _at(padded: torch.Tensor, pad: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) view: every pixel's neighbour at offset (dy, dx), read from :func:`_padded`'s output."""
    h, w = size
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pamr_weights(
    image: torch.Tensor, dilations: tuple[int, ...] = PAMR_DILATIONS, temperature: float = 0.1
) -> torch.Tensor:
    """Each pixel's weights over its neighbours, from the image's colours.

    For pixel i and neighbour j (:func:`neighbour_offsets`): ``k_ij = -mean_c |I_ci - I_cj| / (temperature *
    s_ci)``, with ``s_ci`` the standard deviation of channel c over i and all its neighbours; the weights are
    ``softmax_j k_ij``. Dividing by the local spread makes them invariant to a per-channel scale and offset of the
    image, and adaptive to texture: in a flat region small colour steps still separate.

    Args:
        image (`torch.Tensor`): (C, H, W) float, any range (e.g. RGB in [0, 1]).
        dilations (`tuple[int, ...]`): neighbourhood dilations, each >= 1.
        temperature (`float`): > 0; smaller sharpens the weights (the PAMR paper's 0.1).

    Returns:
        `torch.Tensor`: (P, H, W) weights in [0, 1], summing to 1 over P = 8 x len(dilations), the image's dtype
        and device. Working memory: a few (C, H, W) tensors beside the (P, H, W) result (one neighbour at a time).
    """
    offsets = neighbour_offsets(dilations)
    pad, size = max(dilations), image.shape[-2:]
    padded = _padded(image, pad)
    # the local spread, in two passes as torch.std (no cancellation in flat regions): mean, then squared deviations
    count = len(offsets) + 1
    mean = image.clone()
    for dy, dx in offsets:
        mean += _at(padded, pad, dy, dx, size)
    mean /= count
    deviations = (image - mean).square()
    for dy, dx in offsets:
        deviations += (_at(padded, pad, dy, dx, size) - mean).square()
    scale = temperature * (deviations / (count - 1)).sqrt() + 1e-8
    affinity = image.new_empty(len(offsets), *size)
    for p, (dy, dx) in enumerate(offsets):
        affinity[p] = -((_at(padded, pad, dy, dx, size) - image).abs() / scale).mean(0)
    return affinity.softmax(0)


def pamr(
    image: torch.Tensor,
    scores: torch.Tensor,
    *,
    iterations: int = 10,
    dilations: tuple[int, ...] = PAMR_DILATIONS,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Refine score maps with the image's colours: ``iterations`` rounds of ``s_i <- sum_j w_ij s_j``
    (:func:`pamr_weights`).

    Args:
        image (`torch.Tensor`): (C, H, W) float, the image at the maps' size.
        scores (`torch.Tensor`): (K, H, W) float score maps (any K >= 0), e.g. in [0, 1].
        iterations (`int`): rounds, >= 0 (0 returns ``scores`` unchanged); the PAMR paper's 10.
        dilations (`tuple[int, ...]`), temperature (`float`): as :func:`pamr_weights`.

    Returns:
        `torch.Tensor`: (K, H, W) refined scores, ``scores``' dtype and device; each value a convex combination of
        the input's, so its range stays within the input's.

    Raises:
        ValueError: ``image`` and ``scores`` of different sizes.
    """
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} must have the same H x W")
    if iterations == 0 or scores.shape[0] == 0:
        return scores
    weights = pamr_weights(image.to(scores), dilations, temperature)
    offsets = neighbour_offsets(dilations)
    pad, size = max(dilations), scores.shape[-2:]
    for _ in range(iterations):
        # one neighbour at a time: memory stays O(K x H x W), not O(K x P x H x W)
        padded = _padded(scores, pad)
        out = torch.zeros_like(scores)
        for p, (dy, dx) in enumerate(offsets):
            out += weights[p] * _at(padded, pad, dy, dx, size)
        scores = out
    return scores


@dataclass(frozen=True)
class Refiner:
    """PAMR as one image's last step (``SegmenterConfig.refine="pamr"``): the size it runs at, and the run.

    Args:
        iterations (`int`): PAMR rounds.
        dilations (`tuple[int, ...]`): neighbourhood dilations.
        max_side (`int`): the longer side of the size PAMR runs at (an image no larger runs at its own size).
    """

    iterations: int
    dilations: tuple[int, ...]
    max_side: int

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) PAMR runs at for an image of ``size`` (H, W): the image's size shrunk, aspect kept, so that the
        longer side is at most ``max_side``."""
        h, w = size
        scale = min(1.0, self.max_side / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))

    def __call__(self, image: np.ndarray, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Refine one image's scores.

        Args:
            image (`np.ndarray`): (H, W, 3) uint8 RGB at the image's ``size``.
            scores (`torch.Tensor`): (K, h, w) float scores in [0, 1] at :meth:`working_size` of ``size``.
            size (`tuple[int, int]`): the image's (H, W).

        Returns:
            `torch.Tensor`: (K, H, W) refined scores in [0, 1], on ``scores``' device and dtype.
        """
        if scores.shape[0] == 0:
            return scores.new_zeros(0, *size)
        rgb = torch.from_numpy(np.ascontiguousarray(image)).to(scores.device).permute(2, 0, 1).to(scores.dtype) / 255
        if rgb.shape[-2:] != scores.shape[-2:]:
            rgb = F.interpolate(rgb[None], size=scores.shape[-2:], mode="bilinear", antialias=True)[0]
        out = pamr(rgb, scores, iterations=self.iterations, dilations=self.dilations)
        if out.shape[-2:] != tuple(size):
            out = F.interpolate(out[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        return out
