"""A category filter that needs nothing but the diffusion model that segments.

Diffusion-classifier idea, made spatial: a class that is in the image helps the UNet predict the noise *on that
class's pixels*, so naming it lowers the denoising error there compared with the empty prompt. For each class c:

    r_c(p) = E_{t, eps} [ err_empty(p) - err_c(p) ] / E_{t, eps, p} [ err_empty(p) ]

with err_x(p) = mean over latent channels of (pred_theta(z_t, t, x) - target)^2 at latent pixel p (target: what the
family's denoiser is trained to predict: the noise eps, v, or the flow velocity eps - z_0), averaged over a few
timesteps and noise draws (the same draws for every prompt, so the noise cancels in the difference). Two ways to
turn the maps into presence (``scoring``):

- ``"quantile"``: one score per class and image, a quantile of r_c over pixels (objects are small: a mean over the
  whole image would drown them). It tends to keep one class per image: the object that helps most lifts its class,
  the others' pixels are too few to move a quantile.
- ``"regions"``: per object. The foreground is the segmenter's own segmentation of the image with the whole
  vocabulary (labels > 0); its connected regions of at least ``min_region`` of the image each vote for the class
  whose r_c is largest on average over the region. A class's score is its best margin over the runner-up in a region
  (positive exactly when it wins one), so ``threshold`` 0 keeps every region's winner. Each (timestep, draw) has its
  own seeded noise, so a subset of timesteps sees the noises the full set saw (the tuner relies on it).

A class is kept when its score reaches ``threshold``; if none does, the best-scoring class is kept (every image
shows something).

Cost: (K + 1) x len(timesteps) x noise_draws UNet samples per image, in batches; ``"regions"`` adds one
segmentation of the image with the whole vocabulary. No captioner, no CLIP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..images import load_image
from ..prompts import per_class_prompt
from ..settings import ModelSettings
from .base import FilterDecision, validate_vocabulary

__all__ = ["DiffusionFilter", "SCORINGS", "connected_regions", "region_margins"]

#: The presence scorings (see the module docstring).
SCORINGS = ("quantile", "regions")

_DEFAULTS: dict[str, Any] = {
    "timesteps": (200, 400, 600),
    "noise_draws": 2,
    "quantile": 0.95,
    "threshold": 0.05,
    "resolution": None,
    "scoring": "quantile",
    "min_region": 0.004,
}


class DiffusionFilter:
    """Presence of classes from the denoising-error reduction their prompts bring.

    Args:
        segmenter (`DiffSegmenter`): supplies the backbone (VAE, denoiser, text encoder), the prompt template and
            the seed.
        timesteps (`Sequence[int]`, *optional*): timesteps the error is measured at.
        noise_draws (`int`, *optional*): noise samples per timestep.
        quantile (`float`, *optional*): the pixel quantile of r_c used as the score, in (0, 1].
        threshold (`float`, *optional*): keep a class whose score is >= this.
        resolution (`int`, *optional*): input side length of the filter's UNet passes; None = the segmenter's
            :attr:`~DiffSegmenter.resolution`. Thresholds hold only at the resolution they were chosen at, so a
            model folder that recommends them names it too.
        scoring (`str`, *optional*): ``"quantile"`` (one score per image) or ``"regions"`` (one vote per
            foreground region); see the module docstring. ``quantile`` is not used by ``"regions"``.
        min_region (`float`, *optional*): ``"regions"`` only: the smallest region that votes, as a fraction of the
            image's area, in [0, 1).
        batch_size (`int`, *optional*): UNet samples per forward.

    Defaults come from the segmenter's :attr:`~DiffSegmenter.model_settings` (``diffusion_filter``, the model
    folder's ``"_diffusion_filter"``, chosen on validation scenes) when present, else from the module's
    ``_DEFAULTS``. The model runs through the segmenter's :attr:`~DiffSegmenter.backbone`.
    """

    def __init__(
        self,
        segmenter,
        timesteps: Sequence[int] | None = None,
        noise_draws: int | None = None,
        quantile: float | None = None,
        threshold: float | None = None,
        resolution: int | None = None,
        scoring: str | None = None,
        min_region: float | None = None,
        batch_size: int = 64,
    ) -> None:
        recommended = ModelSettings.coerce(getattr(segmenter, "model_settings", None)).diffusion_filter
        settings = {**_DEFAULTS, **(recommended or {})}
        self.seg = segmenter
        self.timesteps = tuple(int(t) for t in (timesteps if timesteps is not None else settings["timesteps"]))
        self.noise_draws = int(noise_draws if noise_draws is not None else settings["noise_draws"])
        self.quantile = float(quantile if quantile is not None else settings["quantile"])
        self.threshold = float(threshold if threshold is not None else settings["threshold"])
        res = resolution if resolution is not None else settings["resolution"]
        self.resolution = int(res) if res is not None else None
        self.scoring = str(scoring if scoring is not None else settings["scoring"])
        self.min_region = float(min_region if min_region is not None else settings["min_region"])
        self.batch_size = int(batch_size)
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if not 0 <= self.min_region < 1:
            raise ValueError(f"min_region is a fraction of the image's area in [0, 1), got {self.min_region}")
        if not self.timesteps or any(not 0 < t < 1000 for t in self.timesteps):
            raise ValueError(f"timesteps must be in 1..999, got {self.timesteps}")
        if self.noise_draws < 1 or not 0 < self.quantile <= 1:
            raise ValueError("noise_draws must be >= 1 and quantile in (0, 1]")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be >= 1 or None, got {self.resolution}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size is the UNet samples per forward, >= 1; got {self.batch_size}")

    @torch.inference_mode()
    def reduction_maps(self, image: np.ndarray, vocabulary: list[str]) -> torch.Tensor:
        """Per class, the relative error reduction map r_c.

        Args:
            image (`np.ndarray`): (H, W, 3) uint8 RGB (or what `diffsegmenter.images.load_image` reads: a path,
                a PIL image, a float array in [0, 1]).
            vocabulary (`list[str]`): class names.

        Returns:
            `torch.Tensor`: (K, h, w) float32 at the latent resolution; positive where naming the class helps.
        """
        image = load_image(image)
        if self.scoring == "regions":
            return reductions_from_errors(self.error_maps(image, vocabulary, self.timesteps, self.noise_draws))
        seg = self.seg
        cfg = seg.config
        backbone = seg.backbone
        z0 = seg.encode_latents([image], cfg.seed, self.resolution)  # (1, c, h, w)
        text = self._texts(vocabulary)
        gen = torch.Generator().manual_seed(cfg.seed)
        err_sum = torch.zeros(text.shape[0], *z0.shape[-2:])
        for t in self.timesteps:
            for _ in range(self.noise_draws):
                eps = torch.randn(z0.shape, generator=gen)
                zt = backbone.add_noise(z0, eps, t)
                err_sum += self._errors(zt, backbone.prediction_target(z0, eps, t), t, text)
        err = err_sum / (len(self.timesteps) * self.noise_draws)
        scale = err[0].mean().clamp_min(1e-8)
        return (err[0:1] - err[1:]) / scale

    @torch.inference_mode()
    def error_maps(
        self, image: np.ndarray, vocabulary: list[str], timesteps: Sequence[int], noise_draws: int
    ) -> torch.Tensor:
        """Denoising errors of the empty prompt and of each class prompt, per timestep and noise draw, each draw with
        its own noise (seeded by the segmenter's seed, the timestep and the draw index: the ``"regions"`` scoring's
        noise, the same for a timestep whatever the others are).

        Args:
            image (`np.ndarray`): (H, W, 3) uint8 RGB (or what `diffsegmenter.images.load_image` reads: a path,
                a PIL image, a float array in [0, 1]).
            vocabulary (`list[str]`): class names (K).
            timesteps (`Sequence[int]`): timesteps in 1..999.
            noise_draws (`int`): draws per timestep.

        Returns:
            `torch.Tensor`: (len(timesteps), noise_draws, K + 1, h, w) float32 squared errors at the latent resolution,
            mean over channels; index 0 of the third axis is the empty prompt.
        """
        image = load_image(image)
        seg = self.seg
        backbone = seg.backbone
        seed = int(seg.config.seed)
        z0 = seg.encode_latents([image], seed, self.resolution)  # (1, c, h, w)
        text = self._texts(vocabulary)
        out = torch.zeros(len(timesteps), noise_draws, text.shape[0], *z0.shape[-2:])
        for i, t in enumerate(timesteps):
            for d in range(noise_draws):
                gen = torch.Generator().manual_seed(_draw_seed(seed, int(t), d))
                eps = torch.randn(z0.shape, generator=gen)
                target = backbone.prediction_target(z0, eps, int(t))
                out[i, d] = self._errors(backbone.add_noise(z0, eps, int(t)), target, int(t), text)
        return out

    def _texts(self, vocabulary: list[str]) -> torch.Tensor:
        """(K + 1, T, D): the model's unconditional embedding (the empty prompt's; zeros for SDXL base), then each
        class prompt's (the segmenter's template)."""
        seg = self.seg
        cfg = seg.config
        backbone = seg.backbone
        texts = [backbone.unconditional_embedding()]
        for i, name in enumerate(vocabulary):
            texts.append(
                seg.encode_prompt(per_class_prompt(backbone.tokenizer, name, i, cfg.template, cfg.class_phrase))
            )
        return torch.stack(texts)

    def foreground(self, image: np.ndarray, vocabulary: list[str]) -> torch.Tensor:
        """The segmenter's foreground for the whole vocabulary: (H, W) bool at the image's size (labels > 0)."""
        res = self.seg.segment(np.ascontiguousarray(image), classes=list(vocabulary))
        return torch.from_numpy(np.asarray(res.labels) > 0)

    def _errors(self, zt: torch.Tensor, target: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """(K + 1, h, w) squared error of the denoiser's prediction against its training ``target`` (the backbone's
        :meth:`~diffsegmenter.backbones.DiffusionBackbone.prediction_target`: noise, v or velocity), mean over
        channels, one row per text; ``zt`` and ``target`` are (1, c, h, w) float32 on the CPU."""
        backbone = self.seg.backbone
        out = []
        for start in range(0, text.shape[0], self.batch_size):
            chunk = text[start : start + self.batch_size]
            n = chunk.shape[0]
            latents = zt.expand(n, -1, -1, -1).to(backbone.device, backbone.dtype)
            pred = backbone.denoise(latents, t, chunk)
            out.append(((pred.float().cpu() - target) ** 2).mean(dim=1))
        return torch.cat(out)

    def select(self, image: np.ndarray, vocabulary: list[str]) -> FilterDecision:
        """The kept classes and their scores from one run on the image (:meth:`scores` then :meth:`predict`)."""
        vocab = validate_vocabulary(vocabulary)
        scores = self.scores(image, vocab)
        kept, best_guess = self._keep(vocab, scores)
        return FilterDecision(kept, scores, best_guess=best_guess)

    def scores(self, image: np.ndarray, vocabulary: list[str]) -> dict[str, float]:
        """Presence score per class. ``"quantile"``: the ``quantile`` of its error-reduction map (unbounded; ~0 when
        absent). ``"regions"``: its best winning margin over a foreground region (:func:`region_margins`; > 0
        exactly when it wins a region)."""
        vocab = validate_vocabulary(vocabulary)
        image = load_image(image)  # the segmenter's reading, so both halves of a "regions" decision see one image
        maps = self.reduction_maps(image, vocab)
        if self.scoring == "regions":
            margins = region_margins(maps, self.foreground(image, vocab), self.min_region)
            return {name: float(v) for name, v in zip(vocab, margins)}
        q = torch.quantile(maps.flatten(1), self.quantile, dim=1)
        return {name: float(v) for name, v in zip(vocab, q)}

    def predict(self, image: np.ndarray, vocabulary: list[str], scores: dict[str, float] | None = None) -> list[str]:
        """Classes whose score reaches ``threshold`` (the best one if none does), in vocabulary order; a run on the
        image unless its ``scores`` are given."""
        vocab = validate_vocabulary(vocabulary)
        return self._keep(vocab, scores if scores is not None else self.scores(image, vocab))[0]

    def _keep(self, vocab: list[str], scores: dict[str, float]) -> tuple[list[str], bool]:
        """(the classes reaching ``threshold``, False), or ([the best class], True) when none does."""
        kept = [c for c in vocab if scores[c] >= self.threshold]
        return (kept, False) if kept else ([max(vocab, key=lambda c: scores[c])], True)


def _draw_seed(seed: int, timestep: int, draw: int) -> int:
    """The seed of one (timestep, draw) noise of the ``"regions"`` scoring."""
    return (int(seed) * 1_000_003 + int(timestep) * 101 + int(draw)) % (2**63 - 1)


def reductions_from_errors(errors: torch.Tensor) -> torch.Tensor:
    """r_c from :meth:`DiffusionFilter.error_maps`: the errors averaged over timesteps and draws, then
    ``(err_empty - err_c) / mean(err_empty)``.

    Args:
        errors (`torch.Tensor`): (n_t, n_draws, K + 1, h, w), index 0 of the third axis the empty prompt.

    Returns:
        `torch.Tensor`: (K, h, w) float32.
    """
    err = errors.float().mean(dim=(0, 1))
    return (err[0:1] - err[1:]) / err[0].mean().clamp_min(1e-8)


def connected_regions(mask: torch.Tensor, min_pixels: int = 1) -> list[torch.Tensor]:
    """The 4-connected regions of a mask, largest first.

    Labels spread by repeated maxima over each pixel's 4 neighbours inside the mask until nothing changes (at most
    one step per pixel of the longest path; the masks here are small grids).

    Args:
        mask (`torch.Tensor`): (H, W) bool.
        min_pixels (`int`, *optional*, defaults to 1): smaller regions are dropped.

    Returns:
        `list[torch.Tensor]`: (H, W) bool masks, one per region.
    """
    m = mask.bool()
    h, w = m.shape
    labels = torch.where(m, torch.arange(1, h * w + 1, dtype=torch.int64).view(h, w), 0)
    for _ in range(h * w):
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        spread = torch.stack([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]).amax(
            dim=0
        )
        spread = torch.where(m, spread, 0)
        if torch.equal(spread, labels):
            break
        labels = spread
    ids, counts = torch.unique(labels[m], return_counts=True)
    order = torch.argsort(counts, descending=True)
    return [labels == ids[i] for i in order if int(counts[i]) >= int(min_pixels)]


def region_margins(reductions: torch.Tensor, foreground: torch.Tensor, min_region: float) -> torch.Tensor:
    """Per class, its best winning margin over the foreground's regions (the ``"regions"`` scoring).

    The reduction maps are resized (bilinear) to twice the latent grid and the foreground (nearest) to the same grid;
    each 4-connected foreground region of at least ``min_region`` of the grid averages every class's map over its
    pixels, and class c's margin there is its mean minus the best other class's. A class's score is its largest
    margin over the regions: positive exactly when it wins a region. Without any region the whole image is one.

    Args:
        reductions (`torch.Tensor`): (K, h, w) error-reduction maps.
        foreground (`torch.Tensor`): (H, W) bool at the image's size.
        min_region (`float`): smallest region, as a fraction of the image's area.

    Returns:
        `torch.Tensor`: (K,) float32 margins (unbounded; relative error reductions).
    """
    k, h, w = reductions.shape
    size = (2 * h, 2 * w)
    maps = torch.nn.functional.interpolate(reductions[None].float(), size=size, mode="bilinear", align_corners=False)[
        0
    ]
    fg = torch.nn.functional.interpolate(foreground[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
    regions = connected_regions(fg, max(1, int(np.ceil(min_region * size[0] * size[1]))))
    if not regions:
        regions = [torch.ones(size, dtype=torch.bool)]
    best = torch.full((k,), -torch.inf)
    for region in regions:
        means = maps[:, region].mean(dim=1)
        if k == 1:
            margin = means
        else:
            top2 = torch.topk(means, 2).values
            runner_up = torch.where(means == top2[0], top2[1], top2[0])
            margin = means - runner_up
        best = torch.maximum(best, margin)
    return best
