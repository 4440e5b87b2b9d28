"""Whole backbones of every family with random weights, for throughput: the denoiser and the VAE at full size, the
text encoders small (for ``--smoke``: everything tiny).

The engine caches text embeddings per prompt, so in a throughput run the text encoders run once per class and cost
nothing per image; they are built with the real output widths (what the denoiser reads) but one layer each, so that
a full-size run does not spend minutes and gigabytes on encoders it does not time. The denoisers' configs are the
published ``config.json`` values in :mod:`benchmarks.families` (FLUX.1-schnell's below); the VAEs are the published
architectures (SD1.5/SDXL/PixArt-Σ: 4 latent channels; SD3 and FLUX: 16, shifted). Precision follows
:func:`diffsegmenter.loading.load_backbone`: a non-SD family asked for float16 keeps its VAE in float32 (SDXL's VAE
overflows in float16: its ``force_upcast``).

Construction happens on the target device (parameters initialised there, in the target dtype): FLUX's 12B
transformer would take minutes to initialise on a CPU.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.families import PIXART_SIGMA, SD3_MEDIUM, SDXL_UNET  # noqa: E402

__all__ = ["FAMILIES", "FLUX_SCHNELL_TRANSFORMER", "NATIVE_SIZE", "build_backbone", "denoiser_of"]

FAMILIES = ("sdxl", "sd3", "flux", "pixart")
#: Input side each family runs at natively.
NATIVE_SIZE = {"sdxl": 1024, "sd3": 1024, "flux": 1024, "pixart": 1024}

# FLUX.1-schnell transformer/config.json (black-forest-labs/FLUX.1-schnell)
FLUX_SCHNELL_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, in_channels=3, out_channels=3, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
# SDXL / PixArt-Σ (the SDXL VAE), SD3-medium and FLUX.1 vae/config.json: channels, shift, scale, quant convs
_VAE_FAMILY = {
    "sdxl": dict(latent_channels=4, scaling_factor=0.13025),
    "pixart": dict(latent_channels=4, scaling_factor=0.13025),
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                use_post_quant_conv=False),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                 use_post_quant_conv=False),
}  # fmt: skip

# tiny versions (as tests/family_builders.py), for --smoke
_TINY_VAE = dict(
    block_out_channels=(32, 64), layers_per_block=1, in_channels=3, out_channels=3, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)  # fmt: skip
_TINY = {
    "sdxl": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4, 8),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
    ),
    "sd3": dict(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32, out_channels=16,
    ),
    "flux": dict(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
    ),
    "pixart": dict(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ),
}  # fmt: skip


@contextlib.contextmanager
def _made_on(device: torch.device, dtype: torch.dtype):
    """New parameters created on ``device`` in ``dtype`` (restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def _clip(cls, hidden: int, projection: int, tiny: bool):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(REPO / "tests" / "fixtures" / "clip_tokenizer")
    heads = 4 if tiny else hidden // 64
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37 if tiny else 4 * hidden,
        num_attention_heads=heads, num_hidden_layers=1 if not tiny else 2, projection_dim=projection,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        max_position_embeddings=77,
    )  # fmt: skip
    return cls(cfg).eval(), tok


def _t5(d_model: int, tiny: bool):
    from tests.family_builders import t5_tokenizer
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_ff=37 if tiny else 256, d_kv=8 if tiny else 64, num_layers=1,
        num_heads=4 if tiny else 8, relative_attention_num_buckets=8 if tiny else 32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval(), tok


def build_backbone(family: str, device: torch.device | str, dtype: torch.dtype, *, tiny: bool = False, seed: int = 0):
    """A family's backbone with random weights.

    Args:
        family (`str`): one of :data:`FAMILIES`.
        device, dtype: where and in what precision (a float16 non-SD family keeps its VAE in float32).
        tiny (`bool`, *optional*): the test-size models (``--smoke``).
        seed (`int`, *optional*): initialisation seed.

    Returns:
        `tuple`: (backbone, facts: ``{"denoiser_params": ..., "vae_dtype": ...}``).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        PixArtTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from diffsegmenter import backbones

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    device = torch.device(device)
    torch.manual_seed(seed)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    vae_cfg = dict(_TINY_VAE if tiny else _VAE, **_VAE_FAMILY[family])
    with _made_on(device, vae_dtype):
        vae = AutoencoderKL(**vae_cfg)
    cfg = (
        _TINY[family]
        if tiny
        else {"sdxl": SDXL_UNET, "sd3": SD3_MEDIUM, "pixart": PIXART_SIGMA}.get(family, FLUX_SCHNELL_TRANSFORMER)
    )
    # schedulers hold float64/float32 tables on the CPU: made outside the device/dtype context
    sched = {
        "sdxl": lambda: EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        "sd3": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        "flux": FlowMatchEulerDiscreteScheduler,
        "pixart": DDIMScheduler,
    }[family]()
    with _made_on(device, dtype):
        if family == "sdxl":
            denoiser = UNet2DConditionModel(**cfg)
            te, tok = _clip(CLIPTextModel, 32 if tiny else 768, 32, tiny)
            te2, tok2 = _clip(CLIPTextModelWithProjection, 32 if tiny else 1280, 32 if tiny else 1280, tiny)
            bb = backbones.StableDiffusionXLBackbone(vae, denoiser, te, tok, sched, te2, tok2)
        elif family == "sd3":
            denoiser = SD3Transformer2DModel(**cfg)
            te, tok = _clip(CLIPTextModelWithProjection, 16 if tiny else 768, 16 if tiny else 768, tiny)
            te2, tok2 = _clip(CLIPTextModelWithProjection, 16 if tiny else 1280, 16 if tiny else 1280, tiny)
            bb = backbones.StableDiffusion3Backbone(
                vae, denoiser, te, tok, te2, tok2, sched
            )  # no T5: zeros, same cost
        elif family == "flux":
            denoiser = FluxTransformer2DModel(**cfg)
            te, tok = _clip(CLIPTextModel, 32 if tiny else 768, 32, tiny)
            t5, tok5 = _t5(32 if tiny else 4096, tiny)
            bb = backbones.FluxBackbone(vae, denoiser, te, tok, t5, tok5, sched)
        else:
            denoiser = PixArtTransformer2DModel(**cfg)
            t5, tok5 = _t5(32 if tiny else 4096, tiny)
            bb = backbones.PixArtBackbone(vae, denoiser, t5, tok5, sched)
    facts = {
        "denoiser_params": sum(p.numel() for p in denoiser.parameters()),
        "vae_dtype": str(vae_dtype).replace("torch.", ""),
        "dtype": str(dtype).replace("torch.", ""),
    }
    return bb, facts


def denoiser_of(backbone: Any) -> torch.nn.Module:
    """The backbone's UNet or transformer."""
    return getattr(backbone, "unet", None) or backbone.transformer
