"""FLUX.1 (``FluxTransformer2DModel``) as a :class:`~diffsegmenter.backbones.base.DiffusionBackbone`.

Text: T5 tokens (256 for schnell, 512 for dev, as Black Forest Labs' reference sampler runs each; told apart by the
guidance embedding) are the joint sequence's text part, and class tokens are placed with the T5 tokenizer (no BOS);
CLIP-L gives only the pooled vector (``FluxPipeline.encode_prompt``).
Latents: 16-channel shifted VAE latents packed into 2x2 patches with (0, row, col) position ids
(``FluxPipeline._pack_latents`` / ``_prepare_latent_image_ids``). Attention: [text; image] per double-stream block
(``transformer_blocks``), already joined in single-stream blocks (``single_transformer_blocks``); rotary
embedding is applied before the scores (:class:`~diffsegmenter.joint_attention.FluxCaptureProcessor`). Blocks are
numbered double-stream first, then single-stream. Noise: flow matching at sigma (:mod:`.dit`). FLUX.1-dev's
guidance embedding gets 3.5 (its pipeline default); schnell has none. Generation: the velocity is predicted at
``timestep = sigma``; the schedule is ``FluxPipeline``'s (sigmas ``linspace(1, 1/n, n)`` shifted by ``mu`` from the
packed token count); editing's ``guidance`` is true classifier-free guidance (1 = off, as FLUX is usually run).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..joint_attention import FluxCaptureProcessor
from .base import FlowSigma
from .dit import TransformerBackbone, sigma_of, t5_tokenizer

__all__ = ["FluxBackbone", "FLUX_T5_LENGTH", "FLUX_DEV_T5_LENGTH"]

#: FLUX.1-schnell's ``max_sequence_length`` (its model card's and Black Forest Labs' sampler's).
FLUX_T5_LENGTH = 256
#: FLUX.1-dev's: ``FluxPipeline``'s default. The padding is not masked (every token is attended to), so the length
#: changes the prediction; a transformer with guidance embeddings (dev and its fine-tunes) gets this one.
FLUX_DEV_T5_LENGTH = 512


class FluxBackbone(TransformerBackbone):
    """FLUX.1 (schnell or dev): VAE, MM-DiT with double- and single-stream blocks, T5 + CLIP pooled, flow matching."""

    family = "flux"
    flow = True
    latent_packing = 4
    text_to_image_examples = "black-forest-labs/FLUX.1-dev, black-forest-labs/FLUX.1-schnell"

    def __init__(self, vae, transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler) -> None:
        dev = bool(getattr(transformer.config, "guidance_embeds", False))
        length = FLUX_DEV_T5_LENGTH if dev else FLUX_T5_LENGTH
        super().__init__(vae, transformer, t5_tokenizer(tokenizer_2, length), scheduler)
        self.clip = text_encoder.eval().requires_grad_(False)
        self.clip_tokenizer = tokenizer
        self.t5 = text_encoder_2.eval().requires_grad_(False)

    @property
    def patch_factor(self) -> int:
        """2: the pipeline packs 2x2 latent patches into one token (the transformer's own ``patch_size`` is 1)."""
        return 2

    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks) + len(self.transformer.single_transformer_blocks)

    def default_blocks(self) -> list[int]:
        """The double-stream blocks (ours: the single-stream ones are 2x as many and would double the capture cost;
        they can be named: indices from ``len(transformer_blocks)`` on)."""
        return list(range(len(self.transformer.transformer_blocks)))

    def default_self_blocks(self) -> list[int]:
        return [len(self.transformer.transformer_blocks) // 2]

    def plan(self, blocks, self_blocks):
        nd = len(self.transformer.transformer_blocks)
        out = {}
        for i in sorted(set(blocks) | set(self_blocks)):
            key = (
                f"transformer_blocks.{i}.attn.processor"
                if i < nd
                else f"single_transformer_blocks.{i - nd}.attn.processor"
            )
            out[key] = (FluxCaptureProcessor, i in blocks, i in self_blocks)
        return out

    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        ids = list(input_ids)
        if text is None:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        z = self.t5(torch.tensor([ids], device=self.t5.device))[0][0]
        tok = self.clip_tokenizer
        clip_ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
        pooled = self.clip(torch.tensor([clip_ids], device=self.clip.device)).pooler_output[0]
        pooled_row = F.pad(pooled.to(z.device, z.dtype), (0, z.shape[-1] - pooled.shape[-1]))[None]
        return torch.cat([z, pooled_row]).to(self.dtype)

    def denoise(self, latents: torch.Tensor, timestep: int | FlowSigma, text: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        packed = (
            latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
        )
        # FluxPipeline._prepare_latent_image_ids' (0, row, column) per token, made on the device: a copy from the
        # host would wait for the device on every call
        img_ids = torch.zeros(h // 2, w // 2, 3, device=self.device)
        img_ids[..., 1] += torch.arange(h // 2, device=self.device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=self.device)[None, :]
        img_ids = img_ids.reshape(-1, 3).to(self.dtype)
        tokens = text[:, :-1]
        txt_ids = torch.zeros(tokens.shape[1], 3, device=self.device, dtype=self.dtype)
        pooled = text[:, -1, : int(self.transformer.config.pooled_projection_dim)]
        guidance = None
        if getattr(self.transformer.config, "guidance_embeds", False):
            guidance = torch.full((b,), 3.5, device=self.device, dtype=torch.float32)
        # FluxPipeline's rounding: t = sigma * 1000 in float32, cast to the model's dtype, then / 1000 (the
        # transformer multiplies by 1000 again); in bfloat16 casting sigma itself lands one step (4 of 1000) off
        t = torch.full((b,), sigma_of(timestep) * 1000.0, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed,
            timestep=t.to(self.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=tokens,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def flow_schedule(self, steps: int, latent_size: tuple[int, int]) -> dict:
        """``FluxPipeline``'s: sigmas ``linspace(1, 1/steps, steps)`` (the scheduler's own when its config sets
        ``use_flow_sigmas``) and ``mu`` from the number of packed 2x2 tokens (used when the config shifts
        dynamically, as FLUX.1's does)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self.scheduler.config
        mu = calculate_shift(
            (latent_size[0] // 2) * (latent_size[1] // 2),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        sigmas = None if cfg.get("use_flow_sigmas", False) else np.linspace(1.0, 1.0 / steps, steps).tolist()
        return {"sigmas": sigmas, "mu": mu}
