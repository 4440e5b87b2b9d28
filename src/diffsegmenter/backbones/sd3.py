"""Stable Diffusion 3 (``SD3Transformer2DModel``, MM-DiT) as a :class:`~diffsegmenter.backbones.base.DiffusionBackbone`.

Text: CLIP-L and CLIP-G penultimate hidden states concatenated (77 tokens), zero-padded to the joint width, then the
T5 tokens (256; zeros when ``text_encoder_3`` is absent, as ``StableDiffusion3Pipeline`` does), and the two CLIPs'
pooled projections (``StableDiffusion3Pipeline.encode_prompt``). Class tokens are placed with the CLIP-L tokenizer,
so the maps read the CLIP columns (0..76) of the joint attention; the T5 copy of the prompt conditions the image but
its columns are not read (yet).
Attention: one joint softmax over [image; text] per block; the image->text slice is read per block
(:class:`~diffsegmenter.joint_attention.SD3JointCaptureProcessor`). Noise: flow matching at sigma (:mod:`.dit`).
Generation: the velocity is predicted at ``timestep = sigma * 1000`` and the schedule is the scheduler's own (shift
3 for SD3-medium), with ``mu`` when the config shifts with the resolution (``StableDiffusion3Pipeline``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..joint_attention import SD3JointCaptureProcessor
from .base import FlowSigma
from .dit import TransformerBackbone, sigma_of

__all__ = ["StableDiffusion3Backbone", "SD3_T5_LENGTH"]

#: ``StableDiffusion3Pipeline``'s default ``max_sequence_length``.
SD3_T5_LENGTH = 256


class StableDiffusion3Backbone(TransformerBackbone):
    """SD3 / SD3.5: VAE (16 channels, shifted), MM-DiT, CLIP-L + CLIP-G (+ T5), flow matching."""

    family = "sd3"
    text_to_image_examples = "stabilityai/stable-diffusion-3.5-medium, stabilityai/stable-diffusion-3.5-large"
    flow = True

    def __init__(
        self,
        vae,
        transformer,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        scheduler,
        text_encoder_3=None,
        tokenizer_3=None,
    ) -> None:
        super().__init__(vae, transformer, tokenizer, scheduler)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_3 = text_encoder_3.eval().requires_grad_(False) if text_encoder_3 is not None else None
        self.tokenizer_3 = tokenizer_3

    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    def plan(self, blocks, self_blocks):
        return {
            f"transformer_blocks.{i}.attn.processor": (SD3JointCaptureProcessor, i in blocks, i in self_blocks)
            for i in sorted(set(blocks) | set(self_blocks))
        }

    def _clip(self, encoder, ids):
        out = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
        return out.hidden_states[-2][0], out[0][0]

    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        ids = list(input_ids)
        eos = self.tokenizer.eos_token_id
        end = ids.index(eos) + 1 if eos in ids else len(ids)
        pad2 = self.tokenizer_2.pad_token_id if self.tokenizer_2.pad_token_id is not None else eos
        h1, p1 = self._clip(self.text_encoder, ids)
        h2, p2 = self._clip(self.text_encoder_2, ids[:end] + [pad2] * (len(ids) - end))
        width = int(self.transformer.config.joint_attention_dim)
        clip = F.pad(torch.cat([h1, h2.to(h1.device)], dim=-1), (0, width - h1.shape[-1] - h2.shape[-1]))
        if self.text_encoder_3 is not None:
            if text is None:
                text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
            t5_ids = self.tokenizer_3(
                text, padding="max_length", max_length=SD3_T5_LENGTH, truncation=True, add_special_tokens=True
            )["input_ids"]
            t5 = self.text_encoder_3(torch.tensor([t5_ids], device=self.text_encoder_3.device))[0][0]
        else:
            t5 = torch.zeros(SD3_T5_LENGTH, width)
        pooled = torch.cat([p1, p2.to(p1.device)], dim=-1)
        pooled_row = F.pad(pooled, (0, width - pooled.shape[-1]))[None]
        dev = clip.device
        return torch.cat([clip, t5.to(dev, clip.dtype), pooled_row.to(clip.dtype)]).to(self.dtype)

    def denoise(self, latents: torch.Tensor, timestep: int | FlowSigma, text: torch.Tensor) -> torch.Tensor:
        b = latents.shape[0]
        pooled = text[:, -1, : int(self.transformer.config.pooled_projection_dim)]
        # float32 whatever the model's dtype, as StableDiffusion3Pipeline passes the scheduler's timesteps (the
        # transformer embeds them in float32; bfloat16 would move t = 750 to 752)
        t = torch.full((b,), sigma_of(timestep) * 1000.0, device=self.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=text[:, :-1],
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    def flow_schedule(self, steps: int, latent_size: tuple[int, int]) -> dict:
        """``StableDiffusion3Pipeline``'s: the scheduler's own sigmas, plus ``mu`` from the patch count when its
        config shifts with the resolution (SD3.5 configs may)."""
        cfg = self.scheduler.config
        if not cfg.get("use_dynamic_shifting", None):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        p = int(self.transformer.config.patch_size)
        tokens = (latent_size[0] // p) * (latent_size[1] // p)
        mu = calculate_shift(
            tokens,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.16),
        )
        return {"mu": mu}
