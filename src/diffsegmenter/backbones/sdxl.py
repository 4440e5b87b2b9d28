"""SDXL as a :class:`~diffsegmenter.backbones.base.DiffusionBackbone`.

The UNet is read exactly like SD1/SD2's (cross-attention per level, self-attention at the finest level that has
it); what differs is the conditioning: two CLIP encoders whose penultimate hidden states are concatenated
(``CLIPTextModel`` + ``CLIPTextModelWithProjection``), the second's pooled projection and the size/crop time ids as
``added_cond_kwargs`` (as ``StableDiffusionXLPipeline.encode_prompt`` / ``_get_add_time_ids`` do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .sd import StableDiffusionBackbone, _timestep

__all__ = ["SDXL_LEVEL_WEIGHTS", "StableDiffusionXLBackbone"]

#: SDXL's UNet has cross-attention at two levels only (downsampling 2 and 4: 64² and 32² at 1024²; its first block
#: has none), where SD1.5 has four (8, 4, 2, 1). The paper's 0.3/0.5/0.1/0.1 are keyed to SD1.5's levels and are not
#: reused: equal weights over SDXL's two levels, an uninformed prior of ours (not measured on real weights; a model
#: folder's segmenter_config.json or level_weights= overrides it).
SDXL_LEVEL_WEIGHTS: dict[int, float] = {4: 0.5, 2: 0.5}


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """SDXL: the SD UNet reading plus two text encoders, pooled text embeddings and time ids.

    Args:
        vae, unet, text_encoder, tokenizer, scheduler: as :class:`StableDiffusionBackbone` (``tokenizer`` places the
            class tokens; its ids feed both encoders, padding swapped to ``tokenizer_2``'s pad token).
        text_encoder_2 (`CLIPTextModelWithProjection`): the second encoder (its pooled projection conditions too).
        tokenizer_2 (`CLIPTokenizer`): its tokenizer (same vocabulary; only its pad token is read).
        force_zeros_for_empty_prompt (`bool`, *optional*, defaults to `True`): the pipeline's flag (its
            ``model_index.json``; True for SDXL base, False for the refiner): the unconditional text embedding is
            zeros (prompt and pooled), as ``StableDiffusionXLPipeline`` uses without a negative prompt.
    """

    family = "sdxl"
    text_to_image_examples = "stabilityai/stable-diffusion-xl-base-1.0"

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        text_encoder_2,
        tokenizer_2,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__(vae, unet, text_encoder, tokenizer, scheduler)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.tokenizer_2 = tokenizer_2
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    def unconditional_embedding(self) -> torch.Tensor:
        empty = self.empty_embedding()
        return torch.zeros_like(empty) if self.force_zeros_for_empty_prompt else empty

    @property
    def default_level_weights(self) -> dict[int, float]:
        return dict(SDXL_LEVEL_WEIGHTS)

    def family_defaults(self) -> dict:
        return {"level_weights": dict(SDXL_LEVEL_WEIGHTS)}

    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        ids = list(input_ids)
        eos = self.tokenizer.eos_token_id
        end = ids.index(eos) + 1 if eos in ids else len(ids)
        pad2 = self.tokenizer_2.pad_token_id if self.tokenizer_2.pad_token_id is not None else eos
        ids2 = ids[:end] + [pad2] * (len(ids) - end)
        x1 = torch.tensor([ids], device=self.text_encoder.device)
        x2 = torch.tensor([ids2], device=self.text_encoder_2.device)
        h1 = self.text_encoder(x1, output_hidden_states=True).hidden_states[-2][0]
        out2 = self.text_encoder_2(x2, output_hidden_states=True)
        h2, pooled = out2.hidden_states[-2][0], out2[0][0]
        z = torch.cat([h1.to(h2.device), h2], dim=-1)
        pooled_row = F.pad(pooled, (0, z.shape[-1] - pooled.shape[-1]))[None]
        return torch.cat([z, pooled_row]).to(self.dtype)

    def denoise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
        b = latents.shape[0]
        pooled = text[:, -1, : int(self.text_encoder_2.config.projection_dim)]
        side = [s * 2 ** (len(self.vae.config.block_out_channels) - 1) for s in latents.shape[-2:]]
        # made on the host and copied without waiting for the device (a plain copy would wait)
        time_ids = torch.tensor([[side[0], side[1], 0, 0, side[0], side[1]]], dtype=self.dtype)
        time_ids = time_ids.to(latents.device, non_blocking=True)
        t = _timestep(timestep, latents.device)
        cond = {"text_embeds": pooled, "time_ids": time_ids.expand(b, -1)}
        return self.unet(latents, t, encoder_hidden_states=text[:, :-1], added_cond_kwargs=cond, return_dict=False)[0]

    def sample_bytes(self, latent_size: tuple[int, int]) -> int:
        # SDXL's deep 10-layer transformer blocks at 1/4: twice the SD estimate
        return 2 * super().sample_bytes(latent_size)
