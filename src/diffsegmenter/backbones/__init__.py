"""Diffusion backbones: the frozen text-to-image models a segmenter reads, behind one interface.

- :class:`DiffusionBackbone`: the operations every attention pass needs (preprocess, encode latents, noise to a
  timestep, encode text with emphasis, the denoiser call, attention capture, memory estimate).
- :class:`StableDiffusionBackbone`: SD1/SD2 (and the shipped shapes model); :class:`StableDiffusionXLBackbone`: SDXL.
- :class:`StableDiffusion3Backbone` (SD3/SD3.5), :class:`FluxBackbone` (FLUX.1), :class:`PixArtBackbone`
  (PixArt-Σ, -α): diffusion transformers (:mod:`.dit`).

Importing this package loads no diffusers or transformers.
"""

from __future__ import annotations

from .base import DiffusionBackbone
from .flux import FluxBackbone
from .pixart import PixArtBackbone
from .sd import StableDiffusionBackbone
from .sd3 import StableDiffusion3Backbone
from .sdxl import StableDiffusionXLBackbone

__all__ = [
    "DiffusionBackbone",
    "FluxBackbone",
    "PixArtBackbone",
    "StableDiffusion3Backbone",
    "StableDiffusionBackbone",
    "StableDiffusionXLBackbone",
]
