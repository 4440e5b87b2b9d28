"""Diffusion backbones: the frozen text-to-image models a segmenter reads, behind one interface.

- :class:`DiffusionBackbone`: the operations every attention pass needs (preprocess, encode latents, noise to a
  timestep, encode text with emphasis, the denoiser call, attention capture, memory estimate).
- :class:`StableDiffusionBackbone`: SD1/SD2 (and the shipped shapes model).
"""

from __future__ import annotations

from .base import DiffusionBackbone
from .sd import StableDiffusionBackbone

__all__ = ["DiffusionBackbone", "StableDiffusionBackbone"]
