"""Segment, then edit: the target class's mask drives the same diffusion model to regenerate only what was named.

:func:`edit_images` (and its facade :meth:`DiffSegmenter.edit <diffsegmenter.DiffSegmenter.edit>`) runs four steps:

1. segment each image with its classes (the target among them) and take the target's labels as a mask (``tau``);
2. grow it by ``dilate`` pixels (:func:`dilate_mask`; room for a new shape bigger than the old one) and soften its
   inner edge over ``feather`` pixels (:func:`feather_mask`);
3. blended latent diffusion (Avrahami et al., 2023) with the loaded backbone, no inpainting weights: from the image's
   latents noised to the first step (``strength`` of the way to pure noise), every reverse step is guided by the
   prompt (classifier-free guidance against the model's unconditional embedding: the empty prompt's, zeros for
   SDXL base as its pipeline) and then the latents outside the mask are replaced by
   the original latents noised to the next step (the clean ones after the last);
4. decode, resize to the input size and paste the original pixels back outside the mask (a weighted mean in the
   feathered band): pixels outside the dilated mask are exactly the input's; inside they carry the VAE's round-trip
   error besides the edit (:func:`vae_round_trip_error` measures it).

Only the backbone's public operations are used (``encode_latents``, ``noise_like``, ``add_noise``, ``denoise``,
``unconditional_embedding``, ``prompt_ids``, ``prompt_embedding``, ``sampler``, ``guide``, ``decode_latents``), so
every backbone family that implements them can edit. The mask helpers are pure tensor functions.

The command line's ``edit`` subcommand (arguments in, files out) is :mod:`diffsegmenter.cli.edit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .classes import check_class_names, find_class, short_name
from .config import check_tau
from .result import SegmentationResult
from .tokens import readable_token

__all__ = [
    "EditSettings",
    "EditResult",
    "dilate_mask",
    "feather_mask",
    "latent_mask",
    "paste_back",
    "blended_latent_edit",
    "vae_round_trip_error",
    "verify_share",
    "check_generation",
    "edit_images",
    "edit_segmented",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditSettings:
    """How an edit runs. The defaults are generic (the shapes model card samples with guidance 4; for SD1.5, 7.5 is
    usual). The shapes evaluation (``research/shapes/edit_eval.py``) chose ``steps=10, guidance=1.0`` on val scenes.

    Attributes:
        dilate (`int`): pixels the target's mask grows by (disk), >= 0.
        feather (`int`): pixels over which the pasted edit fades out inside the dilated mask's edge, >= 0.
        steps (`int`): reverse-process steps of the full schedule, >= 1 (``strength`` of them run).
        guidance (`float`): classifier-free guidance scale against the unconditional embedding, >= 0 (1 = no
            guidance).
        strength (`float`): in (0, 1]: how far towards pure noise the masked region starts (1 = from noise).
        resolution (`int | None`): side length the edit runs at; None = the backbone's native resolution.
        candidates (`int`): edits tried per image, >= 1: candidate k uses noise seed ``seed + k``. With more than
            one, each candidate is segmented again with the image's classes plus the class the prompt makes
            (``new_class``; the target stays offered, so a candidate that kept the old object loses) and the one
            whose found region is most labelled ``new_class`` is kept (:func:`verify_share`). Costs ``candidates``
            edits and segmentations per image.
    """

    dilate: int = 3
    feather: int = 1
    steps: int = 25
    guidance: float = 4.0
    strength: float = 1.0
    resolution: int | None = None
    candidates: int = 1

    def __post_init__(self) -> None:
        for name, low in (("dilate", 0), ("feather", 0), ("steps", 1), ("candidates", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not _finite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be a number >= 0 (1 = no guidance, 4-8 usual), got {self.guidance!r}")
        if not _finite(self.strength) or not 0.0 < self.strength <= 1.0:
            raise ValueError(
                f"strength must be in (0, 1] (1 = regenerate the masked region from noise), got {self.strength!r}"
            )
        if self.resolution is not None and (
            isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 8
        ):
            raise ValueError(f"resolution must be an integer >= 8 or None (the model's own), got {self.resolution!r}")


@dataclass
class EditResult:
    """One edited image.

    Attributes:
        image (`np.ndarray`): (H, W, 3) uint8, the edited image at the input's size.
        mask (`np.ndarray`): (H, W) float32 in [0, 1], the paste-back weight used: 0 = the input's pixel exactly,
            1 = the regenerated pixel (the target's mask, dilated, its inner edge feathered).
        region (`np.ndarray`): (H, W) bool, the dilated mask (where anything may change).
        segmentation (`SegmentationResult`): the segmentation the mask came from.
        target (`str`), prompt (`str`), settings (`EditSettings`): what was asked.
        seed (`int`): the noise seed of the kept edit (``seed + k`` for candidate k).
        new_class (`str | None`): the class the prompt makes, as given (checks the candidates).
        candidate_scores (`list[float] | None`): with several candidates, per candidate (seed order) the share in
            [0, 1] of the target's found region that its re-segmentation labels ``new_class``
            (:func:`verify_share`); the kept one has the highest (the first on ties). None with one candidate.
    """

    image: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    segmentation: SegmentationResult
    target: str
    prompt: str
    seed: int
    settings: EditSettings
    new_class: str | None = None
    candidate_scores: list[float] | None = None

    @property
    def edited(self) -> bool:
        """False when the target was not found (empty mask: the image is returned unchanged)."""
        return bool(self.region.any())


# ---------------------------------------------------------------------------------------------------------- masks
def _squared_distance(source: torch.Tensor, limit: int) -> torch.Tensor:
    """Each pixel's squared Euclidean distance to the nearest set pixel of `source`, exact up to `limit`.

    Separable (a column pass, then a row pass), so it costs O(limit * H * W), not the O(limit^3 * H * W) of growing
    a disk kernel ring by ring (``feather=200`` took 39 s on a 40 x 48 mask that way).

    Args:
        source (`torch.Tensor`): (H, W) bool.
        limit (`int`): >= 0; farther pixels get ``inf``.

    Returns:
        `torch.Tensor`: (H, W) float64, whole numbers <= ``limit**2`` (0 on `source`), else ``inf``.
    """
    height, width = source.shape
    far = torch.tensor(float("inf"), dtype=torch.float64)  # whole numbers stay exact beyond 2**24 (4k images)
    column = torch.where(
        source, torch.tensor(0.0, dtype=torch.float64), far
    )  # vertical distance to the nearest source pixel in the same column
    for dy in range(1, min(limit, height - 1) + 1):
        step = torch.tensor(float(dy), dtype=torch.float64)
        column[dy:] = torch.minimum(column[dy:], torch.where(source[:-dy], step, far))
        column[:-dy] = torch.minimum(column[:-dy], torch.where(source[dy:], step, far))
    column = column * column
    squared = column.clone()
    for dx in range(1, min(limit, width - 1) + 1):
        squared[:, dx:] = torch.minimum(squared[:, dx:], column[:, :-dx] + dx * dx)
        squared[:, :-dx] = torch.minimum(squared[:, :-dx], column[:, dx:] + dx * dx)
    return torch.where(squared <= limit * limit, squared, far)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a binary mask by a disk of ``radius`` pixels (Euclidean; nothing enters from beyond the border).

    Args:
        mask (`torch.Tensor`): (H, W) bool (or 0/1 numbers).
        radius (`int`): >= 0; 0 returns the mask unchanged. Any radius beyond the image's diagonal gives the same
            mask as the diagonal (the cost grows with the radius used, at most the image's height plus width).

    Returns:
        `torch.Tensor`: (H, W) bool; a pixel is set when some set pixel lies within ``radius`` of it
        (``dy² + dx² <= radius²``).
    """
    m = torch.as_tensor(mask).bool()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0 or not m.any():
        return m.clone()
    limit = min(int(radius), sum(m.shape))  # no two pixels are farther apart than height + width
    return torch.isfinite(_squared_distance(m, limit))


def feather_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soften a binary mask's inner edge: a paste-back weight that is 0 outside the mask and ramps up inside it.

    A set pixel whose nearest unset pixel is ``k`` disk-steps away (``k = 1`` for the mask's edge pixels; ``k`` is
    the Euclidean distance rounded up) gets ``min(1, k / (radius + 1))``; the image border does not count as unset.
    So the weight never reaches outside the mask: pasting with it leaves every pixel outside the mask exactly as it
    was.

    Args:
        mask (`torch.Tensor`): (H, W) bool (or 0/1 numbers).
        radius (`int`): >= 0; 0 = the mask as 0/1. The cost grows with ``min(radius, height + width)``.

    Returns:
        `torch.Tensor`: (H, W) float32 in [0, 1].
    """
    m = torch.as_tensor(mask).bool()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    weight = m.float()
    if radius == 0 or not m.any() or m.all():
        return weight
    squared = _squared_distance(~m, min(int(radius), sum(m.shape)))
    steps = torch.ceil(torch.sqrt(squared))
    steps = torch.where((steps - 1) * (steps - 1) >= squared, steps - 1, steps)  # exact for whole-number squares
    ring = m & torch.isfinite(squared)
    weight[ring] = (steps[ring] / (radius + 1)).float()
    return weight


def latent_mask(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where the latents may change: a latent pixel is free when any image pixel it covers is in ``region``.

    Args:
        region (`torch.Tensor`): (H, W) bool, at the image's size (any aspect: resized like the image).
        size (`tuple[int, int]`): the latent size (h, w).

    Returns:
        `torch.Tensor`: (h, w) float32, 0 or 1.
    """
    r = torch.as_tensor(region).float()[None, None]
    r = F.interpolate(r, size=tuple(int(s) for s in size), mode="area")[0, 0]
    return (r > 0).float()


def paste_back(original: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``weight * generated + (1 - weight) * original``, rounded: where ``weight`` is 0 the original exactly.

    Args:
        original (`np.ndarray`), generated (`np.ndarray`): (H, W, 3) uint8.
        weight (`np.ndarray`): (H, W) float in [0, 1].

    Returns:
        `np.ndarray`: (H, W, 3) uint8.
    """
    if original.shape != generated.shape or original.shape[:2] != weight.shape:
        raise ValueError(
            f"shapes differ: original {original.shape}, generated {generated.shape}, weight {weight.shape}"
        )
    w = np.clip(weight.astype(np.float32), 0.0, 1.0)[..., None]
    out = w * generated.astype(np.float32) + (1.0 - w) * original.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[weight <= 0] = original[weight <= 0]
    return out


# ---------------------------------------------------------------------------------------------------------- diffusion
def _to_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(3, R, R) float in [-1, 1] -> (H, W, 3) uint8 at ``size``."""
    x = pixels[None].float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    x = ((x[0].clamp(-1, 1) + 1.0) * 127.5).round().clamp(0, 255)
    return x.permute(1, 2, 0).to(torch.uint8).numpy()


@torch.inference_mode()
def blended_latent_edit(
    backbone,
    images: Sequence[np.ndarray],
    regions: Sequence[torch.Tensor | np.ndarray],
    prompts: Sequence[str],
    *,
    settings: EditSettings | None = None,
    seed: int = 0,
    antialias: bool = True,
    progress: bool = True,
) -> list[np.ndarray]:
    """Regenerate each image inside its region with its prompt by blended latent diffusion (no paste-back).

    Args:
        backbone (`DiffusionBackbone`): the model.
        images (`Sequence[np.ndarray]`): (H, W, 3) uint8 RGB, any sizes (resized to the edit resolution).
        regions (`Sequence`): per image, (H, W) bool: where the latents may change (:func:`latent_mask`).
        prompts (`Sequence[str]`): per image, what to generate there.
        settings (`EditSettings`, *optional*): steps, guidance, strength, resolution.
        seed (`int`, *optional*): noise seed; each image gets ``noise_like`` of it, whatever else is in the batch.
        antialias (`bool`, *optional*): antialias the resize to the edit resolution.
        progress (`bool`, *optional*): show a tqdm bar over the steps.

    Returns:
        `list[np.ndarray]`: per image, the decoded result, (H, W, 3) uint8 at its input size (outside the region:
        the VAE's round trip of the input).

    Raises:
        ValueError: the denoising or the decoding overflowed (inf or NaN: a very large guidance, or half
            precision).
    """
    s = settings or EditSettings()
    n = len(images)
    if not len(regions) == len(prompts) == n:
        raise ValueError(f"got {n} images, {len(regions)} regions and {len(prompts)} prompts")
    if n == 0:
        return []
    res = int(s.resolution or backbone.native_resolution)
    z0 = backbone.encode_latents(list(images), res, sample=False, seed=seed, antialias=antialias)
    masks = torch.stack([latent_mask(r, z0.shape[-2:]) for r in regions])[:, None]  # (N, 1, h, w)
    noise = backbone.noise_like(z0, seed)
    sampler = backbone.sampler(s.steps, latent_size=tuple(z0.shape[-2:]))
    timesteps = list(sampler.timesteps)
    timesteps = timesteps[len(timesteps) - max(1, int(round(len(timesteps) * s.strength))) :]
    cond = torch.stack([backbone.prompt_embedding(p) for p in prompts])
    empty = backbone.unconditional_embedding()[None].expand(n, *cond.shape[1:])
    text = cond if s.guidance == 1.0 else torch.cat([empty, cond])
    x = backbone.add_noise(z0, noise, timesteps[0])
    from tqdm.auto import tqdm

    for i, t in enumerate(tqdm(timesteps, desc="edit", disable=not progress, leave=False)):
        x_in = x if s.guidance == 1.0 else torch.cat([x, x])
        pred = backbone.denoise(x_in.to(backbone.device, backbone.dtype), t, text).float().cpu()
        if s.guidance != 1.0:
            pred = backbone.guide(pred[:n], pred[n:], float(s.guidance))
        x = sampler.step(pred, t, x)
        known = backbone.add_noise(z0, noise, timesteps[i + 1]) if i + 1 < len(timesteps) else z0
        x = masks * x + (1 - masks) * known
    if not torch.isfinite(x).all():  # the decoder and the uint8 conversion would turn it into a black region
        raise ValueError(
            f"the edit's latents overflowed to inf/NaN (guidance={s.guidance}, steps={s.steps}, weights in "
            f"{backbone.dtype}): lower guidance (7.5 is usual)"
            + (", or load the model in float32" if backbone.dtype != torch.float32 else "")
        )
    decoded = backbone.decode_latents(x)
    if not torch.isfinite(decoded).all():  # finite latents, but a half-precision decoder overflowed
        raise ValueError(
            f"the autoencoder's output overflowed to inf/NaN (weights in {backbone.dtype}): load the model in float32 "
            "(or, for SDXL in float16, with a VAE fixed for it)"
        )
    return [_to_uint8(decoded[j], im.shape[:2]) for j, im in enumerate(images)]


@torch.inference_mode()
def vae_round_trip_error(backbone, images: Sequence[np.ndarray], resolution: int | None = None) -> float:
    """Mean absolute change, in 0..255 units, of images encoded and decoded by the backbone's autoencoder at
    ``resolution`` (None = native) and resized back: the error an edit without paste-back leaves outside its mask."""
    res = int(resolution or backbone.native_resolution)
    z0 = backbone.encode_latents(list(images), res, sample=False, antialias=True)
    decoded = backbone.decode_latents(z0)
    errs = [
        np.abs(_to_uint8(decoded[j], im.shape[:2]).astype(np.float64) - im.astype(np.float64)).mean()
        for j, im in enumerate(images)
    ]
    return float(np.mean(errs))


# ---------------------------------------------------------------------------------------------------------- the job
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_prompt(prompt: Any, target: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"the edit prompt is empty: say what to put where {target!r} is, e.g. prompt='a tiger' "
            "(to only see the mask, use segment())"
        )
    return " ".join(prompt.split())


def _edit_classes(seg, target: str, classes: Sequence[str] | None) -> tuple[str, list[str]]:
    """The target as spelled in its class list, and the classes to segment it against: the given ones (the target
    must be among them), else the model's own classes when they hold the target, else the target alone. Names match
    as duplicates do (:func:`~diffsegmenter.classes.find_class`: ``"Cat"`` is ``"cat"``)."""
    if classes is None:
        defaults = list(seg.default_classes or [])
        at = find_class(target, defaults)
        return (target, [target]) if at is None else (defaults[at], defaults)
    names = check_class_names(classes)
    at = find_class(target, names)
    if at is None:
        shown = ", ".join(repr(short_name(c)) for c in names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"the target {short_name(target)!r} is not among the classes [{shown}]: add it to classes "
            "(the other classes compete with it for each pixel) or leave classes out"
        )
    return names[at], names


def check_generation(backbone, prompts: Sequence[str], settings: EditSettings) -> None:
    """Refuse, before anything is segmented, what :func:`blended_latent_edit` would only fail on later: a prompt the
    text encoder cannot read whole (or reads no word of), a resolution the model cannot read, a number of steps its
    schedule cannot take.

    Args:
        backbone (`DiffusionBackbone`): the model that will edit.
        prompts (`Sequence[str]`): the edit prompts.
        settings (`EditSettings`): reads ``resolution`` and ``steps``.

    Raises:
        ValueError: the message names the prompt or the steps and the limit.
    """
    for prompt in dict.fromkeys(prompts):
        ids = backbone.prompt_ids(prompt)
        if not any(readable_token(backbone.tokenizer, i) for i in ids):
            # every piece unknown (CJK or emoji on T5): the region would be regenerated from an empty condition
            raise ValueError(
                f"this model's tokenizer cannot read any word of the edit prompt {prompt!r} (every piece is unknown "
                "to it): describe the new content in words its text encoder knows (e.g. English)"
            )
    if settings.resolution is not None:
        backbone.check_resolution(settings.resolution, "the edit's resolution")
    try:
        backbone.sampler(settings.steps)
    except ValueError as exc:
        raise ValueError(f"steps={settings.steps} does not fit this model's schedule: {exc}") from None


def edit_images(
    seg,
    images: Sequence[Any],
    targets: Sequence[str],
    prompts: Sequence[str],
    *,
    classes: Sequence[str] | Sequence[Sequence[str]] | None = None,
    new_classes: str | Sequence[str | None] | None = None,
    tau: float | None = None,
    settings: EditSettings | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> list[EditResult]:
    """Segment each image's target and regenerate it from its prompt (module docstring), in one batch.

    Args:
        seg (`DiffSegmenter`): the segmenter; its backbone edits.
        images (`Sequence`): paths, PIL images or arrays (as :meth:`DiffSegmenter.segment` reads them).
        targets (`Sequence[str]`): per image, the class to replace.
        prompts (`Sequence[str]`): per image, the text of what to put there, e.g. ``"a tiger"``.
        classes (*optional*): one class list for all images or one per image; must hold each target. None = the
            model's own classes when they hold the target, else the target alone.
        new_classes (*optional*): the class each prompt makes, e.g. ``"tiger"`` (one for all images or one per
            image); needed with ``settings.candidates > 1`` to check the candidates (:func:`edit_segmented`).
        tau (`float`, *optional*): background score in [0, 1] for the target's mask; defaults to ``config.tau``.
        settings (`EditSettings`, *optional*): dilation, feathering, steps, guidance, strength, resolution,
            candidates.
        seed (`int`, *optional*): seed of the segmentation and of the edit's noise; defaults to ``config.seed``.
        progress (`bool`, *optional*): show a progress bar.

    Returns:
        `list[EditResult]`, one per image, in order.

    Raises:
        ValueError: an empty prompt, a target missing from its classes, a bad class list, tau outside [0, 1], bad
            settings; each message says how to fix it.
    """
    from .images import load_image

    settings = settings or EditSettings()
    n = len(images)
    if not len(targets) == len(prompts) == n:
        raise ValueError(
            f"got {n} images, {len(targets)} targets and {len(prompts)} prompts: give one of each per image"
        )
    targets = [check_class_names([t])[0] for t in targets]
    prompts = [_check_prompt(p, t) for p, t in zip(prompts, targets)]
    new_classes = _check_new_classes(new_classes, n, settings, targets)
    if tau is not None:
        tau = check_tau(tau)
    if classes is not None and not isinstance(classes, str) and classes and isinstance(classes[0], (list, tuple)):
        if len(classes) != n:
            raise ValueError(f"got {len(classes)} class lists for {n} images; give one list per image or one list")
        planned = [_edit_classes(seg, t, c) for t, c in zip(targets, classes)]
    else:
        planned = [_edit_classes(seg, t, classes) for t in targets]
    targets = [target for target, _ in planned]
    class_lists = [names for _, names in planned]
    # the candidates' check segments each new class with its image's classes: refuse now what the model cannot
    # read, not after an edit (each distinct list once: a batch usually shares one)
    checks = [(*names, new) for names, new in zip(class_lists, new_classes) if new and find_class(new, names) is None]
    for names in dict.fromkeys(checks):
        seg.check_classes(list(names))
    # a per-call seed follows the config's rule and message, as in segment()
    seed = seg.config.with_seed(seed).seed
    check_generation(seg.backbone, prompts, settings)
    arrays = [load_image(x, max_pixels=seg.config.max_image_pixels) for x in images]
    segs = seg.segment(arrays, classes=class_lists, seed=seed, tau=tau)
    return edit_segmented(
        seg, arrays, segs, targets, prompts, new_classes=new_classes, settings=settings, seed=seed, progress=progress
    )


def verify_share(labels: np.ndarray, found: np.ndarray, index: int) -> float:
    """Share of the found region that a re-segmentation labels with class ``index``: how well an edit made what
    was asked.

    Args:
        labels (`np.ndarray`): (H, W) int labels of the edited image (0 = background, i = its i-th class).
        found (`np.ndarray`): (H, W) bool, the target's pixels in the original segmentation (not dilated).
        index (`int`): the label of the class the prompt makes, >= 1.

    Returns:
        `float` in [0, 1]; 0 for an empty region.
    """
    n = int(found.sum())
    return float((labels[found] == index).sum()) / n if n else 0.0


def _check_new_classes(new_classes, n: int, settings: EditSettings, targets: Sequence[str]) -> list[str | None]:
    if new_classes is None or isinstance(new_classes, str):
        out = [new_classes] * n
    else:
        out = list(new_classes)
        if len(out) != n:
            raise ValueError(f"got {len(out)} new classes for {n} images: give one per image or one for all")
    out = [None if c is None else check_class_names([c])[0] for c in out]
    for new, target in zip(out, targets):
        if settings.candidates > 1 and new is not None and find_class(new, [target]) is not None:
            raise ValueError(
                f"new_class {new!r} is the target itself: it names what the prompt puts in the target's place (e.g. "
                "new_class='tiger' for prompt='a tiger'); checking the candidates with it would keep the one that "
                "changed the least"
            )
    if settings.candidates > 1 and any(c is None for c in out):
        raise ValueError(
            f"candidates={settings.candidates} needs the class the prompt makes, to check each candidate: give "
            "new_class (e.g. new_class='tiger' for prompt='a tiger'; --new-class tiger on the command line), or "
            "candidates=1"
        )
    return out


def edit_segmented(
    seg,
    arrays: Sequence[np.ndarray],
    segmentations: Sequence[SegmentationResult],
    targets: Sequence[str],
    prompts: Sequence[str],
    *,
    new_classes: str | Sequence[str | None] | None = None,
    settings: EditSettings | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[EditResult]:
    """Steps 2-4 of :func:`edit_images` on images already segmented (e.g. to try several edit settings on one
    segmentation): each target's labels -> dilated, feathered mask -> blended latent edit -> paste-back; with
    ``settings.candidates > 1``, every candidate is re-segmented and the best kept (:class:`EditSettings`).

    Args:
        seg (`DiffSegmenter`): its backbone edits (and re-segments the candidates).
        arrays (`Sequence[np.ndarray]`): (H, W, 3) uint8 RGB images.
        segmentations (`Sequence[SegmentationResult]`): their segmentations; each must hold its target's class.
        targets, prompts: per image (prompts checked as in :func:`edit_images`).
        new_classes (*optional*): the class each prompt makes (one for all images or one per image); needed when
            ``settings.candidates > 1``, where it is added to the image's classes to check each candidate.
        settings, seed, progress: as :func:`edit_images`; candidate k's noise seed is ``seed + k``, its
            re-segmentation uses ``seed`` and the original segmentation's tau.

    Returns:
        `list[EditResult]`, one per image.
    """
    settings = settings or EditSettings()
    n = len(arrays)
    if not len(segmentations) == len(targets) == len(prompts) == n:
        raise ValueError("give one segmentation, target and prompt per image")
    prompts = [_check_prompt(p, t) for p, t in zip(prompts, targets)]
    new_classes = _check_new_classes(new_classes, n, settings, targets)
    regions, weights, found = [], [], []
    targets = list(targets)
    for i, res in enumerate(segmentations):
        at = find_class(targets[i], res.classes)
        if at is None:
            raise ValueError(f"the target {short_name(targets[i])!r} was not segmented (classes: {res.classes})")
        targets[i] = res.classes[at]
        hit = torch.from_numpy(res.labels == at + 1)
        found.append(hit.numpy())
        region = dilate_mask(hit, settings.dilate)
        regions.append(region)
        weights.append(feather_mask(region, settings.feather).numpy())
    todo = [i for i in range(n) if regions[i].any()]
    for i in sorted(set(range(n)) - set(todo)):
        where = "the image" if n == 1 else f"image {i} of the {n} given"
        logger.warning("%s: no pixel was labelled %r, so it is returned unchanged", where, targets[i])
    out_images = [np.array(a, copy=True) for a in arrays]
    kept_seed = {i: seed for i in range(n)}
    scores: dict[int, list[float]] = {i: [] for i in todo}
    check_classes = {
        i: list(segmentations[i].classes)
        + [c for c in [new_classes[i]] if c is not None and find_class(c, segmentations[i].classes) is None]
        for i in todo
    }
    for k in range(settings.candidates):
        generated = blended_latent_edit(
            seg.backbone,
            [arrays[i] for i in todo],
            [regions[i] for i in todo],
            [prompts[i] for i in todo],
            settings=settings,
            seed=seed + k,
            antialias=seg.config.antialias,
            progress=progress,
        )
        pasted = [paste_back(arrays[i], gen, weights[i]) for i, gen in zip(todo, generated)]
        if settings.candidates == 1:
            for i, im in zip(todo, pasted):
                out_images[i] = im
            break
        checks = seg.segment(pasted, classes=[check_classes[i] for i in todo], seed=seed) if todo else []
        for i, im, res in zip(todo, pasted, checks):
            labels = res.relabel(segmentations[i].tau)
            share = verify_share(labels, found[i], find_class(new_classes[i], check_classes[i]) + 1)
            if not scores[i] or share > max(scores[i]):
                out_images[i], kept_seed[i] = im, seed + k
            scores[i].append(share)
    return [
        EditResult(
            image=out_images[i],
            mask=weights[i].astype(np.float32),
            region=regions[i].numpy(),
            segmentation=segmentations[i],
            target=targets[i],
            prompt=prompts[i],
            seed=kept_seed[i],
            settings=settings,
            new_class=new_classes[i],
            candidate_scores=scores.get(i) if settings.candidates > 1 else None,
        )
        for i in range(n)
    ]
