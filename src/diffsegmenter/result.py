"""The result of segmenting one image (:class:`SegmentationResult`), and how a call's class maps become results
(:func:`build_results`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .aggregation import label_with_background
from .config import check_tau
from .transfer import to_host

if TYPE_CHECKING:
    from .decision import ClassDecision
    from .passes import ClassMaps
    from .prompts import ClassPrompt
    from .refinement import Refiner

__all__ = ["SegmentationResult", "build_results", "check_full_size_memory", "DEVICE_RESULT_BYTES"]

#: Bytes of full-size scores computed on the device before they are copied to the host (bounds the device memory
#: the results of one call take).
DEVICE_RESULT_BYTES = 256 * 1024**2


@dataclass(eq=False)  # NumPy fields: the generated == raised 'truth value of an array is ambiguous'
class SegmentationResult:
    """Segmentation of one image.

    Attributes:
        labels (`np.ndarray`): (H, W) int32 at the input's size; 0 = background, i = ``classes[i-1]``.
        scores (`np.ndarray`): (K, H, W) float32 in [0, 1], one map per class in ``classes`` order; each map
            reaches 1 at its peak (per-class min-max, as the paper). With ``config.class_level_weights`` set, a map
            is the foreground evidence times the class's share of the class evidence
            (:func:`~diffsegmenter.aggregation.split_where_and_which`), so it need not reach 1; with
            ``config.flip``, the mean of the image's and its mirror image's maps, which need not reach 1 either; with
            ``config.refine``, refined with the image's colours (:mod:`~diffsegmenter.refinement`), still in [0, 1].
            With ``config.readout="single-block"`` the maps are raw attention probabilities (no min-max), often far
            below 1, so that read-out needs a small ``tau``.
        classes (`list[str]`): the classes segmented, in order (after the category filter, if one ran).
        prompts (`list[str]`): the exact text prompt whose attention gave each class's map.
        tau (`float`): the background score used for ``labels``.
        candidates (`dict[str, float] | None`): presence score of every vocabulary class when a filter ran.
        filter_best_guess (`bool`): the filter found no class reaching its threshold and kept the best-scoring one
            (``classes``) alone: that class may well be absent.
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float
    candidates: dict[str, float] | None = None
    filter_best_guess: bool = False

    def relabel(self, tau: float) -> np.ndarray:
        """Labels for another background score, from the stored score maps (no model call).

        Args:
            tau (`float`): background score.

        Returns:
            `np.ndarray`: (H, W) int32 labels.
        """
        tau = check_tau(tau, allow_no_background=True)
        return label_with_background(torch.from_numpy(self.scores), tau).numpy().astype(np.int32)

    def background_note(self) -> str | None:
        """Why every pixel is background when the reason is ``tau``: every class's score is at most it (the
        single-block read-out's raw probabilities under a tau chosen for min-max maps). None otherwise (no class,
        or some score above tau)."""
        if not self.classes or self.scores.size == 0:
            return None
        peak = float(self.scores.max())
        if peak > self.tau:
            return None
        return (
            f"every class's score is at most tau={self.tau:g} (the highest is {peak:.3g}), so the whole image is "
            f"background: give a tau below {peak:.3g}"
        )


def build_results(
    arrays: list[np.ndarray],
    class_lists: list[list[str]],
    work: list[tuple[int, ClassPrompt]],
    maps: ClassMaps,
    decision: ClassDecision,
    tau: float,
    *,
    flip: bool = False,
    refiner: Refiner | None = None,
) -> list[SegmentationResult]:
    """Every image's result from its classes' maps: scores and labels computed where the maps are (the GPU, for a
    GPU model) and brought to the host in one copy per :data:`DEVICE_RESULT_BYTES` of scores.

    Args:
        arrays (`list[np.ndarray]`): the (H, W, 3) images (their sizes are the results' sizes).
        class_lists (`list[list[str]]`): each image's classes.
        work (`list[tuple[int, ClassPrompt]]`): the (image index, prompt) items the maps came from.
        maps (`ClassMaps`): per (image, class) its where (and which) maps.
        decision (`ClassDecision`): how the maps become scores.
        tau (`float`): the background score.
        flip (`bool`): ``maps`` also hold each image's mirror image, as image ``len(arrays) + i``
            (``SegmenterConfig.flip``): an image's scores are the mean of its own and its mirror's, mirrored back.
        refiner (`Refiner`, *optional*): ``SegmenterConfig.refine``: the scores are computed at its working size,
            refined with the image's colours, then resized to the image's size (after the flip mean).

    Returns:
        `list[SegmentationResult]`: one per image, in order (``candidates`` not set).
    """
    texts = {(i, ci): p.text for i, p in work for ci in p.class_indices}
    results: list[SegmentationResult] = []
    pending: list[tuple[list[str], list[str], torch.Tensor, torch.Tensor]] = []
    size = 0

    def flush() -> None:
        host = to_host([t for _, _, scores, labels in pending for t in (scores, labels)])
        for k, (names, prompts, _, _) in enumerate(pending):
            results.append(
                SegmentationResult(
                    labels=host[2 * k + 1].numpy(),
                    scores=np.asarray(host[2 * k].numpy(), dtype=np.float32),  # no copy: K x H x W can be large
                    classes=names,
                    prompts=prompts,
                    tau=tau,
                )
            )
        pending.clear()

    for i, (im, names) in enumerate(zip(arrays, class_lists)):
        at = im.shape[:2] if refiner is None else refiner.working_size(im.shape[:2])
        scores = image_scores(i, at, names, maps, decision)
        if flip:
            scores = (scores + image_scores(len(arrays) + i, at, names, maps, decision).flip(-1)) / 2
        if refiner is not None:
            scores = refiner(im, scores, im.shape[:2])
        labels = label_with_background(scores, tau).to(torch.int32)
        pending.append((list(names), [texts[(i, ci)] for ci in range(len(names))], scores, labels))
        size += scores.numel() * scores.element_size()
        if size > DEVICE_RESULT_BYTES:
            flush()
            size = 0
    flush()
    return results


def image_scores(
    i: int,
    size: tuple[int, int],
    classes: list[str],
    maps: ClassMaps,
    decision: ClassDecision,
) -> torch.Tensor:
    """Image ``i``'s (K, H, W) float32 scores in [0, 1] at ``size`` (H, W), on the maps' device."""
    h, w = size
    if not classes:
        return torch.zeros(0, h, w)
    where = torch.stack([maps.where[(i, ci)] for ci in range(len(classes))])
    which = torch.stack([maps.which[(i, ci)] for ci in range(len(classes))]) if maps.which else None
    return decision.scores(where, which, (h, w))


#: Estimated bytes per input pixel of :meth:`DiffSegmenter.segment <diffsegmenter.DiffSegmenter.segment>`'s
#: full-size work: per class (score maps, their upsampling and labelling copies) and per image (the decoded image,
#: its resize, labels). An over-estimate of the measured 96 bytes per pixel for 4 classes (119 with ``flip``; 340 and
#: 404 for 16 classes: ``benchmarks/full_size_memory.py``); a call whose estimate exceeds the machine's RAM is refused
#: up front.
BYTES_PER_PIXEL_PER_CLASS = 28
BYTES_PER_PIXEL = 64

#: Bytes per input pixel that each :class:`SegmentationResult` of a call keeps until the call returns: float32 score
#: maps per class; int32 labels and the decoded RGB image per image.
BYTES_PER_PIXEL_KEPT_PER_CLASS = 4
BYTES_PER_PIXEL_KEPT = 4 + 3


def check_full_size_memory(sizes: list[tuple[int, int]], class_lists: list[list[str]]) -> None:
    """Refuse up front a call whose full-size score maps and labels could not fit this machine's memory at all
    (instead of being killed by the system part-way): the results every image of the call keeps until it returns
    (:data:`BYTES_PER_PIXEL_KEPT_PER_CLASS`, :data:`BYTES_PER_PIXEL_KEPT`) plus the largest one image's work
    (:data:`BYTES_PER_PIXEL_PER_CLASS`, :data:`BYTES_PER_PIXEL`), against the total RAM.

    Args:
        sizes (`list[tuple[int, int]]`): each image's (height, width) in pixels.
        class_lists (`list[list[str]]`): each image's classes.

    Raises:
        MemoryError: naming the image size and class count (one image) or the number of images (a list), the
            estimate and the way out.
    """
    import psutil

    total = int(psutil.virtual_memory().total)
    work = [h * w * (BYTES_PER_PIXEL_PER_CLASS * len(c) + BYTES_PER_PIXEL) for (h, w), c in zip(sizes, class_lists)]
    kept = [
        h * w * (BYTES_PER_PIXEL_KEPT_PER_CLASS * len(c) + BYTES_PER_PIXEL_KEPT)
        for (h, w), c in zip(sizes, class_lists)
    ]
    for (h, w), classes, need in zip(sizes, class_lists, work):
        if need > total:
            raise MemoryError(
                f"segmenting {len(classes)} classes on a {w}x{h} image needs about {need / 1e9:.1f} GB for its "
                f"full-size score maps, more than this machine's {total / 1e9:.1f} GB of memory: pass fewer classes "
                "per call (or a filter), or downscale the image"
            )
    if len(sizes) > 1 and sum(kept) + max(work) > total:
        need = sum(kept) + max(work)
        raise MemoryError(
            f"segmenting {len(sizes)} images in one call needs about {need / 1e9:.1f} GB (every image's full-size "
            f"score maps are kept until the call returns), more than this machine's {total / 1e9:.1f} GB of memory: "
            "pass fewer images per call (e.g. a loop over smaller lists, writing each list's results before the "
            "next; `diffsegmenter segment` does so), fewer classes, or smaller images"
        )
