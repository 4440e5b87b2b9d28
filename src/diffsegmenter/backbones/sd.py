"""Stable Diffusion 1.x / 2.x as a :class:`~diffsegmenter.backbones.base.DiffusionBackbone`.

``AutoencoderKL`` + ``UNet2DConditionModel`` + one CLIP text encoder and its tokenizer + a DDPM-family scheduler
(DDIM, DDPM and PNDM share SD's noise schedule). The shipped shapes model has the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from ..attention import capture_attention, layer_downsampling_factor
from ..capture_session import capture_session
from ..config import PAPER_LEVEL_WEIGHTS
from .base import DiffusionBackbone, Sampler

__all__ = ["StableDiffusionBackbone"]


class StableDiffusionBackbone(DiffusionBackbone):
    r"""The SD1/SD2 family: VAE latents, a UNet with cross-attention to one CLIP text encoder, ``add_noise`` at t.

    The modules are put in eval mode with gradients off.

    Args:
        vae (`AutoencoderKL`): the image autoencoder (its decoder is used by editing only).
        unet (`UNet2DConditionModel`): the denoiser whose attention is read.
        text_encoder (`CLIPTextModel`): the prompt encoder.
        tokenizer (`CLIPTokenizer`): its tokenizer.
        scheduler: a diffusers scheduler with ``add_noise``; editing samples with a DDIM scheduler made from its
            config (same noise schedule).

    Example:
        ```python
        >>> bb = StableDiffusionBackbone(vae, unet, text_encoder, tokenizer, scheduler)
        >>> z0 = bb.encode_latents([image], bb.native_resolution)              # (1, 4, 64, 64) for SD1.5
        >>> zt = bb.add_noise(z0, bb.noise_like(z0, seed=0), timestep=100)
        >>> eps = bb.denoise(zt.to(bb.device, bb.dtype), 100, bb.empty_embedding()[None])
        ```
    """

    def __init__(self, vae, unet, text_encoder, tokenizer, scheduler) -> None:
        super().__init__()
        self.check_text_to_image_inputs(unet.config.in_channels, vae.config.latent_channels)
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self._vp_schedule = VPSchedule()

    @property
    def device(self) -> torch.device:
        # the first parameter's (diffusers' ModelMixin.device walks every module for offloading hooks: ~ms per call)
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def native_resolution(self) -> int:
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * scale

    @property
    def default_level_weights(self) -> dict[int, float]:
        return dict(PAPER_LEVEL_WEIGHTS)

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
        return vae_latents(
            self, self.vae, images, resolution, sample=sample, seed=seed, antialias=antialias, keep=keep_on_device
        )

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        schedule = self._vp_schedule.on(self.scheduler, latents.device, latents.dtype)
        return vp_add_noise(schedule, latents, noise, timestep)

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        schedule = self._vp_schedule.on(self.scheduler, latents.device, latents.dtype)
        return vp_target(self.scheduler.config, schedule, latents, noise, timestep)

    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        x = torch.tensor([list(input_ids)], device=self.text_encoder.device)
        return self.text_encoder(x)[0][0].to(self.dtype)

    def denoise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
        t = _timestep(timestep, latents.device)
        return self.unet(latents, t, encoder_hidden_states=text, return_dict=False)[0]

    def capture_session(self) -> AbstractContextManager:
        return capture_session(self.unet)

    def check_reading(self, self_factor: int | None = None, *, blocks=None, self_blocks=None) -> None:
        if blocks is not None or self_blocks is not None:
            raise ValueError(
                "attention_blocks / self_attention_blocks apply to transformer backbones (SD3, FLUX, PixArt); a UNet "
                "is read by levels: use level_weights and self_attention_factor"
            )

    def capture(
        self, store, self_factor: int | None = None, *, blocks=None, self_blocks=None
    ) -> AbstractContextManager:
        self.check_reading(self_factor, blocks=blocks, self_blocks=self_blocks)
        return capture_attention(self.unet, store, self_factor)

    def attention_layers(self) -> dict[str, tuple[str, int]]:
        nd, nu = len(self.unet.down_blocks), len(self.unet.up_blocks)
        return {
            name.removesuffix(".processor"): (
                "cross" if ".attn2." in name else "self",
                layer_downsampling_factor(name, nd, nu),
            )
            for name in self.unet.attn_processors
        }

    def sample_bytes(self, latent_size: tuple[int, int]) -> int:
        """8 x latent pixels x the sum of the UNet's block widths x 4 bytes (about 460 MB for SD1.5 at 512², meant
        as an over-estimate)."""
        widths = sum(int(c) for c in self.unet.config.block_out_channels)
        itemsize = torch.finfo(self.dtype).bits // 8
        return 8 * int(latent_size[0]) * int(latent_size[1]) * widths * max(4, itemsize)

    # ------------------------------------------------------------------ generation (editing)
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, latents)

    def sampler(self, steps: int, latent_size: tuple[int, int] | None = None) -> Sampler:
        return ddim_sampler(self.scheduler.config, steps)


def _timestep(timestep, device: torch.device) -> torch.Tensor:
    """The denoiser's 0-d timestep tensor, filled on ``device`` (a copy from the host would wait for the device)."""
    if isinstance(timestep, torch.Tensor):
        return timestep.to(device)
    return torch.full((), timestep, device=device)


def vp_add_noise(
    alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timestep: int
) -> torch.Tensor:
    r"""The denoiser's input at DDPM timestep ``t``: :math:`\sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`.

    The variance-preserving input every epsilon/v-prediction UNet and PixArt were trained on, whatever scheduler
    class the model folder lists: ``DDPMScheduler.add_noise``'s formula in its order of operations (so bit-equal to
    it for DDPM/DDIM folders, the released code's case), and also right for ``EulerDiscreteScheduler`` (SDXL's),
    whose ``add_noise`` gives the *unscaled* :math:`z_0 + \sigma_t\epsilon` that its pipeline divides by
    :math:`\sqrt{\sigma_t^2+1}` before the UNet. Indexing the schedule with a Python int on the latents' device
    needs no host sync (diffusers' Euler and DPM-Solver ``add_noise`` search their schedule with ``nonzero``: one
    sync per sample).

    Args:
        alphas_cumprod (`torch.Tensor`): the scheduler's :math:`\bar\alpha`, ``(num_train_timesteps,)``, values in
            (0, 1], on the latents' device in their dtype (:class:`VPSchedule` keeps such copies).
        latents (`torch.Tensor`): :math:`z_0`, ``(B, C, h, w)``, any float dtype.
        noise (`torch.Tensor`): :math:`\epsilon`, same shape, dtype and device.
        timestep (`int`): ``t`` in ``[0, num_train_timesteps)``.

    Returns:
        `torch.Tensor`: same shape, dtype and device as ``latents``.
    """
    t = int(timestep)
    n = alphas_cumprod.shape[0]
    if not 0 <= t < n:
        raise ValueError(f"timestep {t} is outside the model's schedule [0, {n}); pick a timestep in that range")
    return alphas_cumprod[t] ** 0.5 * latents + (1 - alphas_cumprod[t]) ** 0.5 * noise


def vp_target(
    config, alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timestep: int
) -> torch.Tensor:
    r"""The training target of a DDPM-family denoiser for :func:`vp_add_noise` ``(latents, noise, timestep)``, by the
    scheduler config's ``prediction_type``: ``"epsilon"`` (SD1, SDXL, PixArt) the noise; ``"v_prediction"`` (SD2 at
    768²) :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,z_0`; ``"sample"`` :math:`z_0`.

    Args:
        config: the scheduler's config (``prediction_type``; a missing one means ``"epsilon"``, diffusers' default).
        alphas_cumprod, latents, noise, timestep: as :func:`vp_add_noise`.

    Returns:
        `torch.Tensor`: the shape, dtype and device of ``latents``.

    Raises:
        ValueError: a prediction type other than these three.
    """
    kind = config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if kind == "v_prediction":
        t = int(timestep)
        return alphas_cumprod[t] ** 0.5 * noise - (1 - alphas_cumprod[t]) ** 0.5 * latents
    raise ValueError(
        f"unknown prediction_type {kind!r} in the model's scheduler config: expected 'epsilon', 'v_prediction' or "
        "'sample'"
    )


class VPSchedule:
    """A scheduler's ``alphas_cumprod`` on each device and dtype asked for, copied once (cast as diffusers casts it:
    to the device, then to the dtype), so that noising never copies from the host again; a scheduler swapped in
    later (a new ``alphas_cumprod``) is copied afresh."""

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._copies: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def on(self, scheduler, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``scheduler.alphas_cumprod`` (float32, ``(num_train_timesteps,)``) on ``device`` in ``dtype``."""
        source = scheduler.alphas_cumprod
        if source is not self._source:
            self._source, self._copies = source, {}
        key = (str(device), dtype)
        if key not in self._copies:
            self._copies[key] = source.to(device=device).to(dtype=dtype)
        return self._copies[key]


class _DiffusersSampler:
    """A diffusers scheduler with ``set_timesteps`` and ``step`` seen as a :class:`~.base.Sampler`."""

    def __init__(self, scheduler, steps: int) -> None:
        self.scheduler = scheduler
        scheduler.set_timesteps(int(steps))
        self.timesteps = [int(t) for t in scheduler.timesteps]

    def step(self, prediction: torch.Tensor, timestep, latents: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(prediction, timestep, latents, return_dict=False)[0]


def ddim_sampler(config, steps: int) -> Sampler:
    """The DDPM families' sampler: a ``DDIMScheduler`` made from the model's scheduler config (same noise schedule
    and prediction type), ``steps`` int timesteps. ``clip_sample`` is the config's, else off (latents are not
    images in [-1, 1]; PixArt ships a DPM-Solver config without that key, where DDIM's default would clip)."""
    from diffusers import DDIMScheduler

    extra = {} if "clip_sample" in config else {"clip_sample": False}
    return _DiffusersSampler(DDIMScheduler.from_config(config, **extra), steps)


@torch.inference_mode()
def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode latents (as :func:`vae_latents` gives them: ``(z - shift_factor) * scaling_factor``) with an
    ``AutoencoderKL``: (N, c, h, w) -> (N, 3, H, W) float32 in [-1, 1] on the CPU."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    x = vae.decode(z.to(vae.device, vae.dtype), return_dict=False)[0]
    return x.float().cpu().clamp(-1.0, 1.0)


def vae_latents(
    backbone, vae, images, resolution, *, sample=False, seed=0, antialias=False, keep=False
) -> torch.Tensor:
    """Encode images with an ``AutoencoderKL``: (N, c, h, w) float32 clean latents on the CPU, shifted and scaled as
    the denoiser expects (``(z - shift_factor) * scaling_factor``; SD3 and FLUX have a shift). ``keep``: resize on
    the VAE's device and return the latents there (the posterior draw is still seeded on the CPU)."""
    from ..transfer import to_device

    param = next(vae.parameters())  # diffusers' vae.device / vae.dtype walk every module
    with torch.inference_mode():
        where = param.device if keep else None
        pixels = torch.stack([backbone.preprocess(im, resolution, antialias=antialias, device=where) for im in images])
        dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        z0 = dist.mean.float()
        z0 = z0 if keep else z0.cpu()
        if sample:
            eps = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed + 1))  # the same per image
            eps = eps.expand(len(images), *eps.shape).clone()
            std = dist.std.float()
            z0 = z0 + (std if keep else std.cpu()) * to_device(eps, z0.device)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (z0 - shift) * vae.config.scaling_factor
