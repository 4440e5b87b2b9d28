"""Tiny random SDXL, SD3 (with and without T5), FLUX (schnell-like and, with guidance embeddings, dev-like) and
PixArt-Σ / PixArt-α-1024 pipelines built from configs (sizes in the spirit of diffusers' own pipeline tests), saved
with the family's diffusers pipeline ``save_pretrained`` (safetensors).
Shared by the family tests and the read-out tests; the session fixtures ``family_folders`` and ``segmenters`` live
in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = [
    "a",
    "photograph",
    "of",
    "the",
    "cat",
    "dog",
    "on",
    "grass",
    "sitting",
    "in",
    "room",
    "with",
    "and",
    "very",
    "long",
    "prompt",
    "that",
    "goes",
]


def t5_tokenizer():
    """A tiny sentencepiece-style (Unigram) T5 tokenizer built offline: known words are one piece, other words split
    into letters (multi-sub-token class names)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _clip(cls, hidden=32, projection=32):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=projection,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=77,
    )
    return cls(cfg).eval(), tok


def _t5(d_model=32):
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval(), tok


def _vae(latent=4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=latent, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, **kw,
    )  # fmt: skip


def sdxl_unet(time_ids: int = 6, cross_attention_dim: int = 64):
    """A tiny SDXL-layout UNet (seeded): ``time_ids`` 6 for the base model's size/crop ids, 5 for the refiner's
    aesthetic-score ids; ``cross_attention_dim`` the concatenated text width (32 per tiny CLIP)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=32 + time_ids * 8, cross_attention_dim=cross_attention_dim,
    )  # fmt: skip


def build_sdxl(folder):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = sdxl_unet()
    te, tok = _clip(CLIPTextModel)
    te2, tok2 = _clip(CLIPTextModelWithProjection)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched
    ).save_pretrained(folder)


def sd3_components(with_t5=True, patch_size=2):
    """A tiny SD3's components (seeded), keyed as ``StableDiffusion3Pipeline`` takes them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=patch_size, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32,
        out_channels=4,
    )  # fmt: skip
    te, tok = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te2, tok2 = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te3, tok3 = _t5() if with_t5 else (None, None)
    return dict(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.1, scaling_factor=1.5), text_encoder=te, tokenizer=tok, text_encoder_2=te2,
        tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3,
    )  # fmt: skip


def build_sd3(folder, with_t5=True):
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**sd3_components(with_t5)).save_pretrained(folder)


def build_flux(folder, guidance_embeds=False):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )  # fmt: skip
    te, tok = _clip(CLIPTextModel)
    te2, tok2 = _t5()
    # FLUX.1-dev's scheduler settings (shift 3, resolution-dependent shift): editing's schedule needs mu
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=_vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer,
    ).save_pretrained(folder)  # fmt: skip


def build_pixart(folder, alpha=False):
    """PixArt-Σ (sample size 16, DDIM); ``alpha``: PixArt-α 1024's layout instead, a ``PixArtAlphaPipeline`` folder
    whose transformer has sample size 128 and no ``use_additional_conditions`` (diffusers then turns the resolution
    and aspect-ratio micro-conditions on) and a DPM-Solver scheduler, as ``PixArt-alpha/PixArt-XL-2-1024-MS``."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=128 if alpha else 16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )  # fmt: skip
    te, tok = _t5()
    pipe, sched = (
        (PixArtAlphaPipeline, DPMSolverMultistepScheduler()) if alpha else (PixArtSigmaPipeline, DDIMScheduler())
    )
    pipe(tokenizer=tok, text_encoder=te, vae=_vae(), transformer=transformer, scheduler=sched).save_pretrained(folder)


BUILDERS = {
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "sd3_no_t5": lambda f: build_sd3(f, with_t5=False),
    "flux": build_flux,
    "flux_dev": lambda f: build_flux(f, guidance_embeds=True),
    "pixart": build_pixart,
    "pixart_alpha": lambda f: build_pixart(f, alpha=True),
}
FAMILY = {
    "sdxl": "sdxl",
    "sd3": "sd3",
    "sd3_no_t5": "sd3",
    "flux": "flux",
    "flux_dev": "flux",
    "pixart": "pixart",
    "pixart_alpha": "pixart",
}


def family_image(seed: int = 0) -> np.ndarray:
    """A 40x48 RGB test image: red left half, green right half, seeded noise (uint8)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 48, 3), np.uint8)
    img[:, :24] = (200, 30, 30)
    img[:, 24:] = (20, 160, 40)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def free_mask_edit(bb, steps: int, guidance: float, prompt: str = "a dog on grass", seed: int = 5):
    """Run the blended editing loop on ``family_image()[:32, :32]`` with a mask covering everything (so it is plain
    guided sampling) and return ``(final_latents, start)``: the latents the loop hands to the decoder, and the start
    latents a diffusers pipeline must be given to run the same loop (the image noised to the first step with the
    loop's noise). Runs on a shallow copy of ``bb``, so a shared fixture is left untouched."""
    import copy

    from diffsegmenter.editing import EditSettings, blended_latent_edit

    img = family_image()[:32, :32]
    kept = []
    probe = copy.copy(bb)
    probe.decode_latents = lambda z: kept.append(z) or bb.decode_latents(z)
    settings = EditSettings(steps=steps, guidance=guidance, resolution=32)
    blended_latent_edit(
        probe, [img], [np.ones((32, 32), bool)], [prompt], settings=settings, seed=seed, progress=False
    )
    z0 = bb.encode_latents([img], 32, antialias=True)
    size = (z0.shape[-2], z0.shape[-1])
    start = bb.add_noise(z0, bb.noise_like(z0, seed), bb.sampler(steps, latent_size=size).timesteps[0])
    return kept[0], start
