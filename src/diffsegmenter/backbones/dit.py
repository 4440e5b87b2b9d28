"""Shared parts of the transformer (DiT / MM-DiT) backbones: SD3, FLUX and PixArt-Σ.

A diffusion transformer has no resolution levels: every block sees the same token grid (the latent cut into 2x2
patches), so its attention lands at one "level", downsampling factor 2, and *blocks*, not levels, are what is chosen
(``SegmenterConfig.attention_blocks`` / ``self_attention_blocks``). ``level_weights`` is ``{2: 1.0}`` (``{p: 1.0}``
for a model with ``p``x``p`` patches).

Flow-matching families (SD3, FLUX) noise with ``x_sigma = (1 - sigma) x0 + sigma eps`` (what
``FlowMatchEulerDiscreteScheduler.scale_noise`` computes). ``SegmenterConfig.timestep`` keeps its meaning, "t of
1000 on SD's DDPM schedule", and is mapped to the sigma of the same signal-to-noise ratio (:func:`flow_sigma`):
t = 100 -> sigma = 0.256. For comparison Seg4Diff's "step 8 of 28" on SD3 (shift 3) is sigma = 0.88, i.e. t ~ 870
(``flow_sigma(870)`` = 0.877).
Generation (editing) steps on exact sigmas instead: :class:`FlowMatchSampler` wraps diffusers'
``FlowMatchEulerDiscreteScheduler`` made from the model's scheduler config, its timesteps are
:class:`~.base.FlowSigma` values (from 1 = pure noise), and each family gives its pipeline's schedule arguments
(:meth:`TransformerBackbone.flow_schedule`: the resolution-dependent ``mu``, FLUX's sigmas). The DDPM family
(PixArt) samples with DDIM from its config, like SD.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from ..joint_attention import capture_wrapped
from .base import DiffusionBackbone, FlowSigma, Sampler
from .sd import VPSchedule, ddim_sampler, vae_decode, vae_latents, vp_add_noise, vp_target

__all__ = ["TransformerBackbone", "FlowMatchSampler", "flow_sigma", "sigma_of"]


def flow_sigma(timestep: int) -> float:
    """The flow-matching sigma whose signal-to-noise ratio equals SD's DDPM schedule at ``timestep`` of 1000.

    SD's scaled-linear betas (0.00085 -> 0.012) give abar_t; flow matching has SNR = ((1 - sigma) / sigma)^2, so
    sigma = sqrt(1 - abar_t) / (sqrt(abar_t) + sqrt(1 - abar_t)). t = 100 -> 0.256, t = 400 -> 0.538.
    """
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    abar = float(np.cumprod(1.0 - betas)[int(timestep)])
    return math.sqrt(1 - abar) / (math.sqrt(abar) + math.sqrt(1 - abar))


def sigma_of(timestep: int | FlowSigma) -> float:
    """The flow sigma of a timestep: a :class:`~.base.FlowSigma`'s own, an int's by :func:`flow_sigma`."""
    if isinstance(timestep, FlowSigma):
        return float(timestep.sigma)
    return flow_sigma(int(timestep))


class FlowMatchSampler:
    """diffusers' ``FlowMatchEulerDiscreteScheduler``, made from a model's scheduler config, as a
    :class:`~.base.Sampler`: the sigma schedule (shift, or the resolution-dependent ``mu``) and the Euler step
    ``x + (sigma_next - sigma) * v`` are the library's.

    Args:
        config: the model's scheduler config (its shift, dynamic-shifting and sigma options are kept).
        steps (`int`): number of steps, >= 1.
        **schedule: ``set_timesteps`` arguments (``mu``, ``sigmas``) as the family's pipeline passes them.

    Attributes:
        timesteps (`list[FlowSigma]`): from the noisiest (1.0 unless the config says otherwise) to the last step
            before the clean latents.
        sigmas (`list[float]`): the scheduler's sigmas, one more than :attr:`timesteps` (the final 0).
    """

    def __init__(self, config, steps: int, **schedule) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self._steps, self._schedule = int(steps), dict(schedule)
        self.scheduler.set_timesteps(self._steps, **self._schedule)
        self.sigmas = [float(s) for s in self.scheduler.sigmas]
        self.timesteps = [FlowSigma(s) for s in self.sigmas[:-1]]

    def step(self, prediction: torch.Tensor, timestep: FlowSigma, latents: torch.Tensor) -> torch.Tensor:
        """One Euler step from ``timestep`` (one of :attr:`timesteps`, in any order) with the velocity
        ``prediction`` (``noise - x0``): (N, c, h, w) latents at the next sigma, in ``prediction``'s dtype."""
        try:
            i = self.timesteps.index(timestep)
        except ValueError:
            raise ValueError(f"{timestep!r} is not one of this sampler's timesteps") from None
        sched = self.scheduler
        if sched.step_index != i:  # a start part-way (strength < 1) or a jump: restart the scheduler there
            if sched.step_index is not None:
                sched.set_timesteps(self._steps, **self._schedule)
            sched.set_begin_index(i)
        return sched.step(prediction, sched.timesteps[i], latents, return_dict=False)[0]


def t5_tokenizer(tokenizer, max_length: int):
    """A shallow copy of a T5 tokenizer whose ``model_max_length`` is the family's text length (the pipelines'
    ``max_sequence_length``), so prompts are padded to it and longer ones refused with the class named."""
    tok = copy.copy(tokenizer)
    tok.model_max_length = int(max_length)
    return tok


class TransformerBackbone(DiffusionBackbone):
    """Common code of the transformer families; subclasses give the text encoding, the denoiser call and the plan.

    Attributes:
        vae: ``AutoencoderKL``. transformer: the denoiser. scheduler: its scheduler.
    """

    #: processor-key template of block i, and the wrapper classes (cross reader, self reader)
    flow = False
    denoiser_folder = "transformer"
    causal_text_encoder = False

    def __init__(self, vae, transformer, tokenizer, scheduler) -> None:
        super().__init__()
        self.check_text_to_image_inputs(transformer.config.in_channels, vae.config.latent_channels)
        self.vae = vae.eval().requires_grad_(False)
        self.transformer = transformer.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self._vp_schedule = VPSchedule()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device  # diffusers' .device walks every module

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        size = getattr(self.transformer.config, "sample_size", None) or 128  # FLUX: the pipeline's 128 latent
        return int(size) * self.vae_scale

    @property
    def patch_factor(self) -> int:
        """Side of a token's latent patch: the downsampling factor, relative to the latent, at which every block's
        attention lands (the transformer config's ``patch_size``; 2 for every public SD3 and PixArt-Σ model)."""
        return int(getattr(self.transformer.config, "patch_size", None) or 2)

    @property
    def default_level_weights(self) -> dict[int, float]:
        return {self.patch_factor: 1.0}

    # ------------------------------------------------------------------ blocks
    def num_blocks(self) -> int:
        raise NotImplementedError

    def default_blocks(self) -> list[int]:
        """Blocks read for the class maps by default: all of them (an unweighted average, ours)."""
        return list(range(self.num_blocks()))

    def default_self_blocks(self) -> list[int]:
        """Block whose self-attention completes the maps by default: the middle one (ours; one block keeps the
        stored queries/keys to one layer's worth)."""
        return [self.num_blocks() // 2]

    def family_defaults(self) -> dict:
        return {
            "level_weights": self.default_level_weights,
            "attention_blocks": self.default_blocks(),
            "self_attention_blocks": self.default_self_blocks(),
        }

    def plan(self, blocks: list[int], self_blocks: list[int]) -> dict[str, tuple[type, bool, bool]]:
        """``{processor key: (wrapper class, read_cross, read_self)}``."""
        raise NotImplementedError

    def check_reading(self, self_factor: int | None = None, *, blocks=None, self_blocks=None) -> None:
        if self_factor is not None:
            raise ValueError(
                "self_attention_factor applies to UNet backbones; a transformer has no levels: use "
                "self_attention_blocks"
            )
        n = self.num_blocks()
        bad = [b for b in [*(blocks or []), *(self_blocks or [])] if not 0 <= b < n]
        if bad:
            raise ValueError(
                f"block index {bad[0]} out of range: this {self.family} denoiser has {n} blocks (0..{n - 1})"
            )

    def capture(
        self, store, self_factor: int | None = None, *, blocks=None, self_blocks=None
    ) -> AbstractContextManager:
        blocks = self.default_blocks() if blocks is None else list(blocks)
        self_blocks = self.default_self_blocks() if self_blocks is None else list(self_blocks)
        self.check_reading(self_factor, blocks=blocks, self_blocks=self_blocks)
        return capture_wrapped(self.transformer, self.plan(blocks, self_blocks), store)

    def attention_layers(self) -> dict[str, tuple[str, int]]:
        plan = self.plan(list(range(self.num_blocks())), list(range(self.num_blocks())))
        return {name.removesuffix(".processor"): ("cross" if c else "self", 2) for name, (_, c, _) in plan.items()}

    # ------------------------------------------------------------------ latents
    def check_resolution(self, resolution: int, setting: str = "resolution") -> None:
        """A size must be a whole number of 2x2 patches of latents (16 px for the released models) and, for SD3,
        within its position table (``pos_embed_max_size`` patches).

        Raises:
            ValueError: naming ``setting``, the step and the nearest sizes that work.
        """
        step = 2 * self.vae_scale
        resolution = int(resolution)
        if resolution % step:
            lower, upper = resolution // step * step, (resolution // step + 1) * step
            near = f"{lower} or {upper}" if lower else str(upper)
            raise ValueError(
                f"{setting}={resolution}: {self.family} reads sizes that are multiples of {step} px "
                f"({self.vae_scale}-px latents in 2x2 patches); use {near}"
            )
        most = getattr(self.transformer.config, "pos_embed_max_size", None)  # SD3's position table, in patches
        if most is not None and resolution > int(most) * step:
            raise ValueError(
                f"{setting}={resolution}: this {self.family} model reads inputs up to {int(most) * step} px (its "
                f"pos_embed_max_size, {most} patches of {step} px); use a {setting} <= {int(most) * step}"
            )

    @torch.inference_mode()
    def encode_latents(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        *,
        sample: bool = False,
        seed: int = 0,
        antialias: bool = False,
        keep_on_device: bool = False,
    ) -> torch.Tensor:
        self.check_resolution(int(resolution))
        return vae_latents(
            self, self.vae, images, resolution, sample=sample, seed=seed, antialias=antialias, keep=keep_on_device
        )

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int | FlowSigma) -> torch.Tensor:
        if not self.flow:
            schedule = self._vp_schedule.on(self.scheduler, latents.device, latents.dtype)
            return vp_add_noise(schedule, latents, noise, int(timestep))
        sigma = sigma_of(timestep)
        return (1.0 - sigma) * latents + sigma * noise

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int | FlowSigma) -> torch.Tensor:
        if self.flow:
            return noise - latents  # the velocity d x_sigma / d sigma
        schedule = self._vp_schedule.on(self.scheduler, latents.device, latents.dtype)
        return vp_target(self.scheduler.config, schedule, latents, noise, int(timestep))

    # ------------------------------------------------------------------ generation (editing)
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, latents)

    def sampler(self, steps: int, latent_size: tuple[int, int] | None = None) -> Sampler:
        if not self.flow:
            return ddim_sampler(self.scheduler.config, steps)
        if latent_size is None:
            side = self.native_resolution // self.vae_scale
            latent_size = (side, side)
        size = (int(latent_size[0]), int(latent_size[1]))
        return FlowMatchSampler(self.scheduler.config, steps, **self.flow_schedule(int(steps), size))

    def flow_schedule(self, steps: int, latent_size: tuple[int, int]) -> dict:
        """Flow families: the ``set_timesteps`` arguments their diffusers pipeline passes for ``steps`` steps on
        latents of ``latent_size`` (h, w), e.g. ``{"mu": ...}`` when the scheduler shifts with the resolution."""
        raise NotImplementedError(f"{type(self).__name__} is a flow family without flow_schedule()")

    def sample_bytes(self, latent_size: tuple[int, int]) -> int:
        """Activations of one block (about 12 x tokens x width) plus the kept queries/keys, float32, x 2."""
        cfg = self.transformer.config
        width = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
        tokens = (int(latent_size[0]) // 2) * (int(latent_size[1]) // 2) + 512
        return 2 * 4 * tokens * width * (12 + 2 * len(self.default_self_blocks()))
