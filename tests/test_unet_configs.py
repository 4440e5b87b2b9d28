"""The UNet backbones (SD1/SD2, SDXL) and their loading against diffusers, for the config flags the public
checkpoints set and the tiny builders leave at their defaults: SD2.1-768's ``upcast_attention``,
``use_linear_projection``, per-level head counts, v-prediction DDIM config and "!"-padding tokenizer; SD1.5's
PNDM scheduler folder with the fp16 weights variant only; SDXL's tokenizer_2 padding with "!" and its refiner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diffsegmenter.attention import AttentionStore
from diffsegmenter.loading import load_backbone

from .family_builders import _clip, _vae, free_mask_edit, sdxl_unet

FIXTURES = Path(__file__).parent / "fixtures"


def _sd_pipeline(scheduler, *, sd2: bool):
    """A tiny StableDiffusionPipeline; ``sd2``: SD2.1-768's flags (upcast_attention, linear projections, a head count
    per level, a tokenizer padding with "!" and a 3-layer text encoder whose config's eos id is the legacy 2)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer", **({"pad_token": "!"} if sd2 else {}))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=24, norm_num_groups=8,
        **({"attention_head_dim": [2, 4], "upcast_attention": True, "use_linear_projection": True} if sd2 else {}),
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), hidden_size=24, intermediate_size=48, num_hidden_layers=3 if sd2 else 2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=2 if sd2 else tok.eos_token_id, pad_token_id=1 if sd2 else tok.pad_token_id,
        )
    )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=te, tokenizer=tok, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _sd21_768_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def test_sd21_768_flags_text_and_capture_match_the_pipeline(tmp_path):
    # SD2.1 (768, v) pads prompts with "!" (id 0 in the real vocabulary), not the end token: the text embeddings
    # (prompt and the empty negative) must be StableDiffusionPipeline.encode_prompt's, the class token must sit where
    # the pipeline's tokenizer puts it, and capturing under upcast_attention / linear projections must leave the
    # UNet's output as its own processors compute it. Already right; this records it.
    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    pipe.save_pretrained(tmp_path / "sd21")
    bb, _ = load_backbone(tmp_path / "sd21")
    assert bb.tokenizer.pad_token_id != bb.tokenizer.eos_token_id
    assert bb.unet.config.upcast_attention and bb.unet.config.use_linear_projection
    assert bb.scheduler.config.prediction_type == "v_prediction"
    prompt = "a photograph of cat sitting on grass"
    with torch.inference_mode():
        cond, neg = pipe.encode_prompt(prompt, "cpu", 1, True, "")
        torch.testing.assert_close(bb.prompt_embedding(prompt), cond[0], rtol=0, atol=0)
        torch.testing.assert_close(bb.unconditional_embedding(), neg[0], rtol=0, atol=0)

    from diffsegmenter.prompts import single_prompts

    (cp,) = single_prompts(bb.tokenizer, ["cat"], "a photograph of {}", "{}", " ")
    ids = pipe.tokenizer(cp.text, padding="max_length", max_length=77)["input_ids"]
    assert cp.input_ids == ids  # padded with "!" as the pipeline pads
    assert ids[cp.class_tokens[0][0]] == pipe.tokenizer.convert_tokens_to_ids("cat</w>")

    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = bb.unet(z, torch.tensor(500), encoder_hidden_states=cond).sample
        store = AttentionStore(latent_size=(16, 16))
        with bb.capture(store):
            got = bb.denoise(z, 500, cond)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sorted(store.cross_sum) == [1, 2] and store.self_qk


def test_sd15_fp16_variant_only_folder_loads(tmp_path):
    # SD1.5's and SDXL's repositories ship every weight twice (fp32 and `variant="fp16"`), and downloading only the
    # fp16 files (hf download ... --include "*.fp16.safetensors" "*.json" "*.txt") halves the download. Such a folder
    # was refused with "no .safetensors weights were found ... convert a checkpoint" though it holds nothing else:
    # from_pretrained reads a variant only when told. The loader now reads the one variant a folder holds.
    from diffusers import PNDMScheduler

    sched = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        set_alpha_to_one=False,
    )  # fmt: skip
    pipe = _sd_pipeline(sched, sd2=False)
    folder = tmp_path / "sd15"
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    assert not list(folder.glob("unet/diffusion_pytorch_model.safetensors"))
    assert list(folder.glob("unet/*.fp16.safetensors"))
    bb, _ = load_backbone(folder, dtype=torch.float16)
    assert bb.dtype == torch.float16
    for name in ("unet", "text_encoder", "vae"):
        ours, theirs = getattr(bb, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    # the PNDM folder's schedule and DDIM editing sampler are the pipeline's
    torch.testing.assert_close(bb.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod, rtol=0, atol=0)
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(10)
    assert bb.sampler(10).timesteps == [int(t) for t in ddim.timesteps]


_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in a Hugging Face cache laid out as huggingface_hub writes it (refs/main
    naming a commit, snapshots/<commit>/...), for files saved straight into it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    return repo / "snapshots" / _COMMIT


def test_hub_cache_with_fp16_variant_only_loads_offline(tmp_path):
    # `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "*.fp16.safetensors" "*.json" "*.txt"`
    # (no --local-dir) leaves the fp16 files in the Hub cache; loading the id offline was refused with "no
    # .safetensors weights were found ... convert a checkpoint you trust", as the local-folder case was before. The
    # cache's snapshot is now read for its one variant as a local folder is. A conditioned model in the cache is
    # refused from its cached configs alone. huggingface_hub reads HF_HUB_CACHE at import: a fresh interpreter.
    import subprocess
    import sys

    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    snapshot = _hub_cache_snapshot(tmp_path / "hub", "org/tiny-sd")
    pipe.to(torch.float16).save_pretrained(snapshot, variant="fp16")
    assert not list(snapshot.glob("*/*[!6].safetensors"))  # fp16 files only
    inpaint = _hub_cache_snapshot(tmp_path / "hub", "org/tiny-inpaint")
    for name in ("model_index.json", "unet/config.json", "vae/config.json"):
        (inpaint / name).parent.mkdir(parents=True, exist_ok=True)
        (inpaint / name).write_text((snapshot / name).read_text())
    cfg = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps({**cfg, "in_channels": 9}))
    script = f"""
import torch
from diffsegmenter.loading import load_backbone
bb, _ = load_backbone("org/tiny-sd", dtype=torch.float16)
ref, _ = load_backbone({str(snapshot)!r}, dtype=torch.float16)
for name in ("unet", "text_encoder", "vae"):
    ours, theirs = getattr(bb, name).state_dict(), getattr(ref, name).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), name
try:
    load_backbone("org/tiny-inpaint")
except ValueError as exc:
    print("REFUSED", exc)
print("LOADED", bb.dtype)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=src)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED torch.float16" in done.stdout
    assert "REFUSED the UNet takes 9 input channels where the VAE gives 4: an inpainting model" in done.stdout


def test_folder_with_plain_and_fp16_weights_reads_the_plain_ones(tmp_path):
    # a full download has both; the plain (fp32) files are read, as from_pretrained does without a variant
    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    folder = tmp_path / "both"
    pipe.save_pretrained(folder)
    fp32 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.unet.to(torch.float16).save_pretrained(folder / "unet", variant="fp16")
    bb, _ = load_backbone(folder)
    assert all(torch.equal(bb.unet.state_dict()[k], v) for k, v in fp32.items())


def _sdxl_refiner(folder, *, with_first_encoder: bool):
    """A tiny StableDiffusionXLImg2ImgPipeline laid out as stabilityai/stable-diffusion-xl-refiner-1.0 (no first text
    encoder, aesthetic-score time ids: 5 of them), or the same with a first encoder added."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = sdxl_unet(time_ids=5, cross_attention_dim=64 if with_first_encoder else 32)
    te, tok = _clip(CLIPTextModel) if with_first_encoder else (None, None)
    te2, tok2 = _clip(CLIPTextModelWithProjection)
    StableDiffusionXLImg2ImgPipeline(
        vae=_vae(), text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    ).save_pretrained(folder)  # fmt: skip


@pytest.mark.parametrize("with_first_encoder", [False, True])
def test_sdxl_refiner_is_refused_with_the_base_model_to_use(tmp_path, with_first_encoder):
    # The refiner lists text_encoder as null (the loader said only "lists no 'text_encoder', which this model family
    # needs") and its UNet embeds 5 time ids with an aesthetic score (a folder with both encoders failed inside the
    # UNet's add_embedding with a shape error). Both now name the refiner and the base model to use.
    _sdxl_refiner(tmp_path / "refiner", with_first_encoder=with_first_encoder)
    index = json.loads((tmp_path / "refiner" / "model_index.json").read_text())
    assert index["requires_aesthetics_score"] and (index["text_encoder"] == [None, None]) != with_first_encoder
    with pytest.raises(ValueError, match="SDXL refiner.*stable-diffusion-xl-base-1.0"):
        load_backbone(tmp_path / "refiner")


def test_sdxl_tokenizer_2_padding_with_bang_and_non_square_time_ids_match_the_pipeline(family_folders, tmp_path):
    # SDXL base's tokenizer_2 (OpenCLIP-bigG) pads with "!" where tokenizer (CLIP-L) pads with its end token, and a
    # non-square input's time ids are (height, width, 0, 0, height, width) in the pipeline. Already right.
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionXLPipeline.from_pretrained(family_folders["sdxl"])
    pipe.tokenizer_2 = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer", pad_token="!")
    pipe.save_pretrained(tmp_path / "sdxl")
    bb, _ = load_backbone(tmp_path / "sdxl")
    assert bb.tokenizer_2.pad_token_id != bb.tokenizer.pad_token_id == bb.tokenizer.eos_token_id
    prompt = "a photograph of cat sitting on grass"
    with torch.inference_mode():
        cond, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        ours = bb.prompt_embedding(prompt)
    torch.testing.assert_close(ours[:-1], cond[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[-1, : pooled.shape[-1]], pooled[0], rtol=0, atol=0)

    seen: dict[str, list[torch.Tensor]] = {"pipe": [], "ours": []}

    def recorder(unet, key):
        forward = unet.forward

        def record(*args, **kwargs):
            seen[key].append(kwargs["added_cond_kwargs"]["time_ids"].clone())
            return forward(*args, **kwargs)

        return record

    pipe.unet.forward = recorder(pipe.unet, "pipe")
    bb.unet.forward = recorder(bb.unet, "ours")
    with torch.inference_mode():
        pipe(prompt, height=48, width=32, num_inference_steps=1, output_type="latent", guidance_scale=1.0)
        bb.denoise(torch.randn(1, 4, 24, 16), 100, ours[None])  # the tiny VAE downsamples by 2: 48 x 32 pixels
    torch.testing.assert_close(seen["ours"][0], seen["pipe"][0], rtol=0, atol=0)
    assert seen["ours"][0].tolist() == [[48, 32, 0, 0, 48, 32]]


@pytest.mark.parametrize(("channels", "kind"), [(9, "inpainting"), (5, "depth-conditioned")])
def test_inpainting_and_depth_unets_are_refused_at_load(tmp_path, channels, kind):
    # stable-diffusion-inpainting / SDXL inpainting UNets take 9 input channels (latents, mask, masked-image
    # latents), stable-diffusion-2-depth's 5 (latents, depth): their folders look like text-to-image ones to the
    # loader, and segmenting then failed inside conv_in with "expected input ... to have 9 channels, but got 4".
    from diffusers import UNet2DConditionModel

    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": channels})
    pipe.save_pretrained(tmp_path / "conditioned")
    with pytest.raises(ValueError, match=f"{channels} input channels where the VAE gives 4: an? {kind} model"):
        load_backbone(tmp_path / "conditioned")


def test_sd21_768_v_prediction_edit_loop_is_the_pipelines(tmp_path):
    # Editing samples SD2.1-768 with DDIM from its v-prediction config: with a mask covering everything the blended
    # loop must be StableDiffusionPipeline's DDIM loop (same start, guidance against the empty prompt). Already right.
    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    pipe.save_pretrained(tmp_path / "sd21")
    bb, _ = load_backbone(tmp_path / "sd21")
    steps, guidance, prompt = 3, 3.0, "a dog on grass"
    final, start = free_mask_edit(bb, steps, guidance, prompt)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        expected = pipe(
            prompt, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance, latents=start,
            output_type="latent",
        ).images  # fmt: skip
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(final, expected.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(final, start, atol=1e-2)


@pytest.mark.parametrize(
    ("channels", "kind"), [(9, "an inpainting"), (5, "a depth-conditioned"), (8, "an image-conditioned"),
                           (7, "an upscaling"), (6, "a conditioned")],
)  # fmt: skip
def test_sd_input_channel_kinds(channels, kind):
    # stable-diffusion-inpainting (9), -2-depth (5), InstructPix2Pix (8), -x4-upscaler (7: latents + low-res RGB)
    from diffsegmenter.backbones import StableDiffusionBackbone

    with pytest.raises(ValueError, match=f"the UNet takes {channels} input channels where the VAE gives 4: {kind} "):
        StableDiffusionBackbone.check_text_to_image_inputs(channels, 4)
    StableDiffusionBackbone.check_text_to_image_inputs(4, 4)


def test_conditioned_unet_is_refused_before_weights_load(tmp_path):
    # the refusal comes from the folder's configs, so a 5 GB inpainting UNet is not read first
    pipe = _sd_pipeline(_sd21_768_scheduler(), sd2=True)
    pipe.save_pretrained(tmp_path / "inpaint")
    cfg_path = tmp_path / "inpaint" / "unet" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "in_channels": 9}))
    for weights in (tmp_path / "inpaint" / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match="9 input channels where the VAE gives 4: an inpainting model"):
        load_backbone(tmp_path / "inpaint")


def test_a_malformed_denoiser_config_is_reported_by_the_loader_naming_the_folder(tmp_path):
    # the channel pre-check is skipped when a config cannot be read (as its docstring says): it raised json's bare
    # "Expecting value: line 1 column 1" before; the component loader's error names the model, subfolder and folder
    from diffsegmenter.hub import ModelNotFoundError

    _sd_pipeline(_sd21_768_scheduler(), sd2=True).save_pretrained(tmp_path / "sd")
    (tmp_path / "sd" / "unet" / "config.json").write_text("not json")
    with pytest.raises(ModelNotFoundError, match=r"subfolder 'unet'.*local folder"):
        load_backbone(tmp_path / "sd")
