"""Segment, then edit, on every backbone family: tiny random SDXL, SD3 (with and without T5), FLUX and PixArt-Σ
(``tests/family_builders.py``), at 32x32, 2-3 steps. The edit's shapes, determinism, exactness outside the dilated
mask and change inside it; the flow-matching sampler (exact sigmas, diffusers' Euler step); and the blended loop
with an all-free mask against the family's own diffusers pipeline on the same latents and embeddings (velocity or
noise prediction, classifier-free guidance and schedule as the library's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsegmenter.backbones.base import FlowSigma
from diffsegmenter.backbones.dit import FlowMatchSampler, flow_sigma
from diffsegmenter.backbones.sd import ddim_sampler
from diffsegmenter.editing import EditSettings, edit_images

from .family_builders import BUILDERS, FAMILY, family_image, free_mask_edit

FAST = {"steps": 3, "dilate": 1, "feather": 1, "guidance": 3.0, "resolution": 32}
FLOW = [n for n in BUILDERS if FAMILY[n] in ("sd3", "flux")]


def _edit(seg, img, **kw):
    return seg.edit(img, "cat", "a dog on grass", classes=["cat", "dog"], tau=0.3, progress=False, **{**FAST, **kw})


# ---------------------------------------------------------------------------------------------------------- the edit
@pytest.mark.parametrize("name", list(BUILDERS))
def test_edit_every_family_changes_only_inside_the_mask(segmenters, name):
    img = family_image()  # 40x48: not square, not the edit resolution
    res = _edit(segmenters[name], img, seed=1)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    assert res.mask.shape == img.shape[:2] and res.mask.dtype == np.float32
    assert res.region.shape == img.shape[:2] and res.region.dtype == bool
    assert res.edited and 0 < res.region.mean() < 1, "the tiny model labels part of the image 'cat' at tau 0.3"
    outside = ~res.region
    assert np.array_equal(res.image[outside], img[outside])  # exactly
    inside = res.mask > 0.99
    assert inside.any()
    assert np.abs(res.image[inside].astype(int) - img[inside]).mean() > 1.0  # regenerated there


@pytest.mark.parametrize("name", list(BUILDERS))
def test_edit_every_family_is_deterministic_by_seed(segmenters, name):
    seg, img = segmenters[name], family_image(1)
    a = _edit(seg, img, seed=3)
    b = _edit(seg, img, seed=3)
    c = _edit(seg, img, seed=4)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("name", FLOW)
def test_flow_edit_starts_from_pure_noise_and_partial_strength_runs(segmenters, name):
    bb = segmenters[name].backbone
    sampler = bb.sampler(4, latent_size=(16, 16))
    assert sampler.timesteps[0] == FlowSigma(1.0)  # beyond flow_sigma(999), the most an int t reaches
    assert flow_sigma(999) < 0.95
    z0 = bb.encode_latents([family_image()], 32)
    noise = bb.noise_like(z0, 0)
    assert torch.equal(bb.add_noise(z0, noise, FlowSigma(1.0)), noise)
    assert torch.equal(bb.add_noise(z0, noise, FlowSigma(0.0)), z0)
    assert torch.allclose(bb.add_noise(z0, noise, 100), bb.add_noise(z0, noise, FlowSigma(flow_sigma(100))))
    res = _edit(segmenters[name], family_image(), strength=0.5, steps=4)
    assert res.image.shape == family_image().shape


# ---------------------------------------------------------------------------------------------------------- samplers
def test_flow_sigma_must_be_in_unit_interval():
    for bad in (-0.1, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            FlowSigma(bad)
    assert FlowSigma(0.5) == FlowSigma(0.5)


def test_flow_sampler_schedule_starts_at_one_ends_at_zero_and_follows_the_shift(segmenters):
    cfg = dict(segmenters["sd3"].backbone.scheduler.config)
    assert cfg["shift"] == 3.0
    shifted = segmenters["sd3"].backbone.sampler(5)
    plain = FlowMatchSampler({**cfg, "shift": 1.0}, 5)
    for s in (shifted, plain):
        assert len(s.timesteps) == 5 and len(s.sigmas) == 6
        assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0
        assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))
        assert [t.sigma for t in s.timesteps] == s.sigmas[:-1]
    assert all(a > b for a, b in zip(shifted.sigmas[1:-1], plain.sigmas[1:-1]))  # shift 3 stays noisier


def test_flux_schedule_is_the_pipelines_with_mu_from_the_token_count(segmenters):
    bb = segmenters["flux"].backbone
    assert bb.scheduler.config.use_dynamic_shifting
    for side in (16, 64):
        sigmas = bb.sampler(4, latent_size=(side, side)).sigmas
        tokens = (side // 2) ** 2  # packed 2x2
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)  # FluxPipeline's calculate_shift, by hand
        expected = [math.exp(mu) / (math.exp(mu) + (1 / s - 1)) for s in np.linspace(1.0, 1 / 4, 4)] + [0.0]
        assert sigmas == pytest.approx(expected, abs=1e-6)
    assert bb.sampler(4, latent_size=(64, 64)).sigmas[1] > bb.sampler(4, latent_size=(16, 16)).sigmas[1]


@pytest.mark.parametrize("start", [0, 2])
def test_flow_step_with_the_exact_velocity_lands_on_x0(segmenters, start):
    sampler = segmenters["sd3"].backbone.sampler(5)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    velocity = eps - x0  # flow matching's target
    ts = sampler.timesteps[start:]  # start=2: strength < 1 begins part-way
    x = (1 - ts[0].sigma) * x0 + ts[0].sigma * eps
    for i, t in enumerate(ts):
        x = sampler.step(velocity, t, x)
        nxt = ts[i + 1].sigma if i + 1 < len(ts) else 0.0
        torch.testing.assert_close(x, (1 - nxt) * x0 + nxt * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)
    # out of order (a second run on the same sampler): restarted at that step, same answer
    t = sampler.timesteps[1]
    again = sampler.step(velocity, t, (1 - t.sigma) * x0 + t.sigma * eps)
    s2 = sampler.sigmas[2]
    torch.testing.assert_close(again, (1 - s2) * x0 + s2 * eps, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not one of"):
        sampler.step(velocity, FlowSigma(0.123), x)


def test_ddim_sampler_turns_clipping_off_unless_the_config_says(segmenters):
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler(beta_schedule="linear").config  # PixArt ships one; it has no clip_sample
    assert ddim_sampler(dpm, 4).scheduler.config.clip_sample is False
    assert ddim_sampler({**dpm, "clip_sample": True}, 4).scheduler.config.clip_sample is True
    pixart = segmenters["pixart"].backbone.sampler(4)
    assert all(isinstance(t, int) for t in pixart.timesteps) and len(pixart.timesteps) == 4


# ---------------------------------------------------------------------------------------------------------- parity
def _pipeline_latents(name, bb, start, cond, empty, steps, guidance):
    """The family's diffusers pipeline on the same start latents and text embeddings: its final latents."""
    import diffusers

    common = {"num_inference_steps": steps, "height": 32, "width": 32, "output_type": "latent"}
    family = FAMILY[name]
    if family == "sd3":
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=bb.transformer, scheduler=bb.sampler(steps).scheduler, vae=bb.vae,
            text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, text_encoder_2=bb.text_encoder_2,
            tokenizer_2=bb.tokenizer_2, text_encoder_3=bb.text_encoder_3, tokenizer_3=bb.tokenizer_3,
        )  # fmt: skip
        d = int(bb.transformer.config.pooled_projection_dim)
        kw = {"prompt_embeds": cond[:, :-1], "pooled_prompt_embeds": cond[:, -1, :d], "latents": start}
        kw |= {"negative_prompt_embeds": empty[:, :-1], "negative_pooled_prompt_embeds": empty[:, -1, :d]}
        kw["guidance_scale"] = guidance
    elif family == "flux":
        pipe = diffusers.FluxPipeline(
            scheduler=bb.sampler(steps).scheduler, vae=bb.vae, text_encoder=bb.clip, tokenizer=bb.clip_tokenizer,
            text_encoder_2=bb.t5, tokenizer_2=bb.tokenizer, transformer=bb.transformer,
        )  # fmt: skip
        d = int(bb.transformer.config.pooled_projection_dim)
        b, c, h, w = start.shape
        packed = start.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, 4 * c)
        kw = {"prompt_embeds": cond[:, :-1], "pooled_prompt_embeds": cond[:, -1, :d], "latents": packed}
        kw |= {"negative_prompt_embeds": empty[:, :-1], "negative_pooled_prompt_embeds": empty[:, -1, :d]}
        kw["true_cfg_scale"] = guidance
    elif family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=bb.vae, text_encoder=bb.text_encoder, text_encoder_2=bb.text_encoder_2, tokenizer=bb.tokenizer,
            tokenizer_2=bb.tokenizer_2, unet=bb.unet, scheduler=bb.sampler(steps).scheduler,
        )  # fmt: skip
        d = int(bb.text_encoder_2.config.projection_dim)
        kw = {"prompt_embeds": cond[:, :-1], "pooled_prompt_embeds": cond[:, -1, :d], "latents": start}
        kw["guidance_scale"] = guidance  # no negative prompt: the pipeline's own (force_zeros_for_empty_prompt: zeros)
    else:  # pixart: the padding rows are zero in our embeddings, so the mask is where they are not
        pixart = diffusers.PixArtAlphaPipeline if name == "pixart_alpha" else diffusers.PixArtSigmaPipeline
        pipe = pixart(
            tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, vae=bb.vae, transformer=bb.transformer,
            scheduler=bb.sampler(steps).scheduler,
        )  # fmt: skip
        kw = {"prompt_embeds": cond, "prompt_attention_mask": (cond != 0).any(-1).long(), "latents": start}
        kw |= {"negative_prompt_embeds": empty, "negative_prompt_attention_mask": (empty != 0).any(-1).long()}
        kw |= {"guidance_scale": guidance, "use_resolution_binning": False, "negative_prompt": None}
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**common, **kw).images
    if family == "flux":
        out = diffusers.FluxPipeline._unpack_latents(out, 32, 32, bb.vae_scale)
    return out


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "sd3_no_t5"])
def test_blended_loop_with_a_free_mask_is_the_diffusers_pipeline(segmenters, name):
    bb = segmenters[name].backbone
    steps, guidance, prompt = 2, 3.0, "a dog on grass"
    # the loop starts from the image noised to the first step: pure noise for the flow families (sigma 1), the
    # DDPM forward process at DDIM's first t for the others; the pipeline is given the same start
    final, start = free_mask_edit(bb, steps, guidance, prompt)
    with torch.inference_mode():
        cond, empty = bb.prompt_embedding(prompt)[None], bb.empty_embedding()[None]
        expected = _pipeline_latents(name, bb, start, cond, empty, steps, guidance)
    torch.testing.assert_close(final, expected.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(final, start, atol=1e-2)  # the loop did move


# ------------------------------------------------------------------------------------------------- odd requests
@pytest.mark.parametrize("name", ["flux", "pixart"])
def test_names_the_t5_tokenizer_cannot_read_are_refused_not_read_as_a_blank_token(segmenters, name):
    # T5 reads an unknown word as a bare "▁" and <unk>: "🐱" and "🐶" both read the blank token, got identical
    # maps, and the second could never win a pixel
    seg = segmenters[name]
    with pytest.raises(ValueError, match="cannot read class name '🐱'"):
        seg.segment(family_image(), ["🐱", "dog"])
    with pytest.raises(ValueError, match="classes '猫 cat' and '犬 cat' are the same tokens"):
        seg.segment(family_image(), ["猫 cat", "犬 cat"])
    (prompt,) = seg.build_prompts(family_image(), ["猫 cat"])
    tokens = seg.tokenizer.convert_ids_to_tokens([prompt.input_ids[i] for i in prompt.class_tokens[0]])
    assert tokens == ["▁cat"]  # the readable part only: no blank "▁", no <unk>


@pytest.mark.parametrize("name, special", [("flux", "<pad>"), ("pixart", "</s>"), ("sdxl", "<|startoftext|>")])
def test_special_tokens_written_as_names_are_refused(segmenters, name, special):
    # "<pad>" read the T5 pad token as the class token: a meaningless map, no error
    with pytest.raises(ValueError, match=f"cannot read class name '{special}'"):
        segmenters[name].segment(family_image(), [special, "dog"])


@pytest.mark.parametrize("name", ["pixart", "sd3"])
def test_an_edit_prompt_the_tokenizer_cannot_read_is_refused(segmenters, monkeypatch, name):
    # "猫" and "🐶🐶" gave byte-identical edits on PixArt: every piece <unk>, the region regenerated from nothing
    seg = segmenters[name]
    monkeypatch.setattr(seg, "segment", lambda *a, **k: pytest.fail("segmented before refusing"))
    for prompt in ("猫", "🐶🐶"):
        with pytest.raises(ValueError, match=f"cannot read any word of the edit prompt '{prompt}'"):
            seg.edit(family_image(), "cat", prompt, classes=["cat", "dog"], progress=False, **FAST)


def test_an_edit_that_overflows_is_refused_not_returned_black(segmenters, monkeypatch):
    with pytest.raises(ValueError, match="latents overflowed to inf/NaN .*guidance=1e\\+30") as raised:
        _edit(segmenters["sdxl"], family_image(), guidance=1e30)
    assert segmenters["sdxl"].dtype == torch.float32 and "in float32" not in str(raised.value)  # it is already
    backbone = segmenters["sdxl"].backbone  # finite latents, a half-precision decoder that overflows
    decode = backbone.decode_latents
    monkeypatch.setattr(backbone, "decode_latents", lambda x: decode(x) * float("nan"))
    with pytest.raises(ValueError, match="autoencoder's output overflowed"):
        _edit(segmenters["sdxl"], family_image())


def test_odd_edit_requests_are_refused_before_any_work(segmenters, monkeypatch):
    seg = segmenters["sd3"]
    monkeypatch.setattr(seg, "segment", lambda *a, **k: pytest.fail("segmented before refusing"))
    with pytest.raises(ValueError, match="new_class 'Cat' is the target itself"):
        _edit(seg, family_image(), new_class="Cat", candidates=2)  # kept the candidate that changed the least
    with pytest.raises(ValueError, match="classes 'dog' and 'dog ™' are the same tokens"):  # with the image's
        _edit(seg, family_image(), new_class="dog ™", candidates=2)  # classes, in the candidates' check
    with pytest.raises(ValueError, match="cannot read class name '™'"):
        _edit(seg, family_image(), new_class="™")  # refused after a segmentation and a whole edit
    with pytest.raises(ValueError, match="the edit's resolution"):
        _edit(seg, family_image(), resolution=42)  # refused after the segmentation
    with pytest.raises(TypeError, match="'readout', which is not an edit setting; the edit settings are dilate"):
        _edit(seg, family_image(), readout="paper")


def test_new_classes_are_checked_per_image_not_as_one_list(segmenters, monkeypatch):
    # one image's "Tiger" and another's "tiger" were refused as a duplicate, as if they were one class list
    class Reached(Exception):
        pass

    def segment(*args, **kwargs):
        raise Reached

    seg = segmenters["sd3"]
    monkeypatch.setattr(seg, "segment", segment)
    with pytest.raises(Reached):  # the checks passed
        edit_images(seg, [family_image(), family_image(1)], ["cat", "cat"], ["a tiger", "a tiger"],
                    classes=["cat", "dog"], new_classes=["Tiger", "tiger"], settings=EditSettings(**FAST),
                    progress=False)  # fmt: skip
