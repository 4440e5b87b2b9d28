"""Noising to one timestep (``backbone.add_noise``): the variance-preserving input the denoiser was trained on,
whatever scheduler class the model folder lists, made without host syncs."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from diffsegmenter.backbones.sd import VPSchedule, vp_add_noise

_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _pair(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    eps = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    return z, eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bit_equal_to_ddpm_add_noise(cls, dtype):
    """The released code's case (a DDPM/DDIM folder): bit for bit what diffusers' ``add_noise`` gives."""
    sched = cls(**_SCHEDULE)
    z, eps = _pair(dtype)
    for t in (0, 50, 100, 999):
        ours = vp_add_noise(VPSchedule().on(sched, z.device, dtype), z, eps, t)
        ref = cls(**_SCHEDULE).add_noise(z, eps, torch.full((2,), t, dtype=torch.long))
        assert torch.equal(ours, ref), t


def test_euler_folder_gets_the_scaled_input_its_pipeline_feeds():
    """SDXL folders list ``EulerDiscreteScheduler``, whose ``add_noise`` is z0 + sigma*eps; its pipeline divides by
    sqrt(sigma^2 + 1) before the UNet. The denoiser must see that scaled input, not the raw one."""
    sched = EulerDiscreteScheduler(**_SCHEDULE)
    z, eps = _pair()
    t = 100
    raw = sched.add_noise(z, eps, torch.tensor([t, t]))
    sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]) ** 0.5
    pipeline_input = raw / (sigma**2 + 1) ** 0.5
    ours = vp_add_noise(VPSchedule().on(sched, z.device, z.dtype), z, eps, t)
    torch.testing.assert_close(ours, pipeline_input, rtol=1e-5, atol=1e-5)
    assert (ours - raw).abs().max() > 1e-2  # the raw Euler input is measurably different


def test_dpm_solver_folder_gets_timestep_t_not_its_mirror():
    """PixArt-Σ folders list DPM-Solver. Before ``set_timesteps`` its ``add_noise`` looks ``t`` up in the descending
    training timesteps but reads the ascending sigmas, so t=100 comes out at t=899's noise level (signal 0.017 on
    PixArt's linear schedule instead of 0.946). The denoiser must see t=100."""
    sched = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    z, eps = _pair()
    ac = sched.alphas_cumprod
    ours = vp_add_noise(VPSchedule().on(sched, z.device, z.dtype), z, eps, 100)
    torch.testing.assert_close(ours, ac[100] ** 0.5 * z + (1 - ac[100]) ** 0.5 * eps, rtol=1e-6, atol=1e-6)
    mirrored = sched.add_noise(z, eps, torch.tensor([100, 100]))
    torch.testing.assert_close(mirrored, ac[899] ** 0.5 * z + (1 - ac[899]) ** 0.5 * eps, rtol=1e-5, atol=1e-5)


def test_timestep_outside_the_schedule_is_refused():
    sched = DDPMScheduler(**_SCHEDULE)
    z, eps = _pair()
    with pytest.raises(ValueError, match=r"outside the model's schedule \[0, 1000\)"):
        vp_add_noise(VPSchedule().on(sched, z.device, z.dtype), z, eps, 1000)


def test_schedule_copies_are_kept_and_follow_a_swapped_scheduler():
    cache = VPSchedule()
    a, b = DDPMScheduler(**_SCHEDULE), DDPMScheduler(beta_schedule="linear")
    first = cache.on(a, torch.device("cpu"), torch.float16)
    assert cache.on(a, torch.device("cpu"), torch.float16) is first  # one copy per device and dtype
    assert first.dtype == torch.float16
    swapped = cache.on(b, torch.device("cpu"), torch.float16)
    assert not torch.equal(swapped, first)
    torch.testing.assert_close(swapped, b.alphas_cumprod.half())


def test_sdxl_backbone_noises_like_its_pipeline(segmenters):
    """Through a tiny SDXL folder (Euler scheduler): the backbone's denoiser input is the scaled one."""
    bb = segmenters["sdxl"].backbone
    assert isinstance(bb.scheduler, EulerDiscreteScheduler)
    z, eps = _pair()
    ac = bb.scheduler.alphas_cumprod[100]
    torch.testing.assert_close(bb.add_noise(z, eps, 100), ac**0.5 * z + (1 - ac) ** 0.5 * eps, rtol=1e-6, atol=1e-6)


def test_pixart_backbone_with_dpm_solver_noises_at_t(segmenters):
    """A PixArt backbone whose folder lists DPM-Solver (as PixArt-Σ's does) noises at t, not at 999 - t."""
    bb = copy.copy(segmenters["pixart"].backbone)
    bb.scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    z, eps = _pair()
    ac = bb.scheduler.alphas_cumprod[100]
    torch.testing.assert_close(bb.add_noise(z, eps, 100), ac**0.5 * z + (1 - ac) ** 0.5 * eps, rtol=1e-6, atol=1e-6)


def test_sdxl_unconditional_embedding_follows_the_pipeline_flag(family_folders, tmp_path):
    """SDXL base's model_index.json says force_zeros_for_empty_prompt (its pipeline's unconditional input is zeros,
    prompt and pooled); a folder that says false (the refiner) keeps the encoded empty prompt. Editing's guidance
    and the diffusion filter's baseline use it."""
    import json
    import shutil

    from diffsegmenter.loading import load_backbone

    base, _ = load_backbone(family_folders["sdxl"])
    assert json.loads((family_folders["sdxl"] / "model_index.json").read_text())["force_zeros_for_empty_prompt"]
    assert base.force_zeros_for_empty_prompt
    uncond = base.unconditional_embedding()
    assert uncond.shape == base.empty_embedding().shape and not uncond.any()
    assert base.empty_embedding().any()

    refiner = tmp_path / "sdxl_no_zeros"
    shutil.copytree(family_folders["sdxl"], refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    kept, _ = load_backbone(refiner)
    assert torch.equal(kept.unconditional_embedding(), kept.empty_embedding())
