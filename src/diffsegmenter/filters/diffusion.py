"""A category filter that needs nothing but the diffusion model that segments.

Diffusion-classifier idea, made spatial: a class that is in the image helps the UNet predict the noise *on that
class's pixels*, so naming it lowers the denoising error there compared with the empty prompt. For each class c:

    r_c(p) = E_{t, eps} [ err_empty(p) - err_c(p) ] / E_{t, eps, p} [ err_empty(p) ]

with err_x(p) = mean over latent channels of (eps_theta(z_t, t, x) - eps)^2 at latent pixel p, averaged over a few
timesteps and noise draws (the same draws for every prompt, so the noise cancels in the difference). The presence
score is a high quantile of r_c over pixels (objects are small: a mean over the whole image would drown them). A
class is kept when its score reaches ``threshold``; if none does, the best-scoring class is kept (every image
shows something).

Cost: (K + 1) x len(timesteps) x noise_draws UNet samples per image, in batches; no captioner, no CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..prompts import per_class_prompt
from ..settings import ModelSettings
from .base import FilterDecision, validate_vocabulary

__all__ = ["DiffusionFilter"]

_DEFAULTS: dict[str, Any] = {
    "timesteps": (200, 400, 600),
    "noise_draws": 2,
    "quantile": 0.95,
    "threshold": 0.05,
    "resolution": None,
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
        self.batch_size = int(batch_size)
        if not self.timesteps or any(not 0 < t < 1000 for t in self.timesteps):
            raise ValueError(f"timesteps must be in 1..999, got {self.timesteps}")
        if self.noise_draws < 1 or not 0 < self.quantile <= 1:
            raise ValueError("noise_draws must be >= 1 and quantile in (0, 1]")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be >= 1 or None, got {self.resolution}")

    @torch.inference_mode()
    def reduction_maps(self, image: np.ndarray, vocabulary: list[str]) -> torch.Tensor:
        """Per class, the relative error reduction map r_c.

        Args:
            image (`np.ndarray`): (H, W, 3) uint8 RGB.
            vocabulary (`list[str]`): class names.

        Returns:
            `torch.Tensor`: (K, h, w) float32 at the latent resolution; positive where naming the class helps.
        """
        seg = self.seg
        cfg = seg.config
        backbone = seg.backbone
        z0 = seg.encode_latents([image], cfg.seed, self.resolution)  # (1, c, h, w)
        texts = [backbone.empty_embedding()]
        for i, name in enumerate(vocabulary):
            texts.append(
                seg.encode_prompt(per_class_prompt(backbone.tokenizer, name, i, cfg.template, cfg.class_phrase))
            )
        text = torch.stack(texts)  # (K+1, T, D)
        gen = torch.Generator().manual_seed(cfg.seed)
        err_sum = torch.zeros(len(texts), *z0.shape[-2:])
        for t in self.timesteps:
            for _ in range(self.noise_draws):
                eps = torch.randn(z0.shape, generator=gen)
                zt = backbone.add_noise(z0, eps, t)
                err_sum += self._errors(zt, eps, t, text)
        err = err_sum / (len(self.timesteps) * self.noise_draws)
        scale = err[0].mean().clamp_min(1e-8)
        return (err[0:1] - err[1:]) / scale

    def _errors(self, zt: torch.Tensor, eps: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        backbone = self.seg.backbone
        out = []
        for start in range(0, text.shape[0], self.batch_size):
            chunk = text[start : start + self.batch_size]
            n = chunk.shape[0]
            latents = zt.expand(n, -1, -1, -1).to(backbone.device, backbone.dtype)
            pred = backbone.denoise(latents, t, chunk)
            out.append(((pred.float().cpu() - eps) ** 2).mean(dim=1))
        return torch.cat(out)

    def select(self, image: np.ndarray, vocabulary: list[str]) -> FilterDecision:
        """The kept classes and their scores from one run on the image (:meth:`scores` then :meth:`predict`)."""
        vocab = validate_vocabulary(vocabulary)
        scores = self.scores(image, vocab)
        return FilterDecision(self.predict(image, vocab, scores=scores), scores)

    def scores(self, image: np.ndarray, vocabulary: list[str]) -> dict[str, float]:
        """Presence score per class: the ``quantile`` of its error-reduction map (unbounded; ~0 when absent)."""
        vocab = validate_vocabulary(vocabulary)
        maps = self.reduction_maps(np.ascontiguousarray(image), vocab)
        q = torch.quantile(maps.flatten(1), self.quantile, dim=1)
        return {name: float(v) for name, v in zip(vocab, q)}

    def predict(self, image: np.ndarray, vocabulary: list[str], scores: dict[str, float] | None = None) -> list[str]:
        """Classes whose score reaches ``threshold`` (the best one if none does), in vocabulary order; a run on the
        image unless its ``scores`` are given."""
        vocab = validate_vocabulary(vocabulary)
        scores = scores if scores is not None else self.scores(image, vocab)
        kept = [c for c in vocab if scores[c] >= self.threshold]
        if not kept:
            kept = [max(vocab, key=lambda c: scores[c])]
        return kept
