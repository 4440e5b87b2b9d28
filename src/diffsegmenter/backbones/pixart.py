"""PixArt-Σ and -α (``PixArtTransformer2DModel``) as a :class:`~diffsegmenter.backbones.base.DiffusionBackbone`.

A DiT with ordinary cross-attention (``attn2``) to T5 tokens (the pipelines' ``max_sequence_length``: 300 for Σ,
120 for α; no BOS; prompts lowercased as the pipelines do, :func:`lowercasing`) with the padding masked, and image
self-attention (``attn1``). PixArt-α 1024 also takes the image's resolution and aspect ratio
(:meth:`PixArtBackbone.micro_conditions`). Class tokens are placed with the T5 tokenizer. The text embedding's
padding rows are zeroed and the mask is recovered from them at the denoiser call (a real token's embedding is never
all zeros), so the mask travels with the embedding. Noise: the variance-preserving input at t from the scheduler's
``alphas_cumprod`` (PixArt's linear betas; :func:`~.sd.vp_add_noise`: PixArt-Σ's DPM-Solver ``add_noise`` would read
t = 999 - t's noise level before ``set_timesteps``). The learned-variance half of the output is dropped.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from ..joint_attention import PixArtCrossCaptureProcessor, PixArtSelfCaptureProcessor
from .dit import TransformerBackbone, t5_tokenizer

__all__ = ["PixArtBackbone", "PIXART_T5_LENGTH", "PIXART_ALPHA_T5_LENGTH", "lowercasing"]

#: ``PixArtSigmaPipeline``'s default ``max_sequence_length``.
PIXART_T5_LENGTH = 300
#: ``PixArtAlphaPipeline``'s (PixArt-α was trained on 120 T5 tokens); the loader picks it for such folders.
PIXART_ALPHA_T5_LENGTH = 120


def lowercasing(tokenizer):
    """A copy of a (fast) T5 tokenizer that lowercases text before its own normalisation, as the PixArt pipelines'
    prompt preprocessing does (``text.lower().strip()``, or their caption cleaning, which lowercases too): PixArt's
    T5 features were made from lowercased captions and T5's tokenizer is case-sensitive. Class-token positions
    stay right because every segment goes through the same normaliser. The given tokenizer is left as it was.

    Raises:
        ValueError: a tokenizer without a ``tokenizers`` backend (no ``backend_tokenizer``).
    """
    from tokenizers import Tokenizer, normalizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"PixArt needs a fast (tokenizers-backed) T5 tokenizer to lowercase prompts as its pipelines do; got "
            f"{type(tokenizer).__name__}: load the folder's tokenizer with transformers' T5TokenizerFast"
        )
    tok = copy.copy(tokenizer)
    own = Tokenizer.from_str(backend.to_str())  # a copy: the shallow copy above shares the backend
    own.normalizer = normalizers.Sequence([normalizers.Lowercase(), *([own.normalizer] if own.normalizer else [])])
    tok._tokenizer = own
    return tok


class PixArtBackbone(TransformerBackbone):
    """PixArt-Σ or -α: VAE, DiT with cross-attention to T5, DDPM noise.

    Args:
        max_length (`int`, *optional*, defaults to 300): the T5 text length, the pipeline's ``max_sequence_length``
            (:data:`PIXART_T5_LENGTH` for Σ, :data:`PIXART_ALPHA_T5_LENGTH` for α).
    """

    family = "pixart"
    flow = False
    text_to_image_examples = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, PixArt-alpha/PixArt-XL-2-1024-MS"

    def __init__(self, vae, transformer, text_encoder, tokenizer, scheduler, max_length: int = PIXART_T5_LENGTH):
        super().__init__(vae, transformer, lowercasing(t5_tokenizer(tokenizer, max_length)), scheduler)
        self.text_encoder = text_encoder.eval().requires_grad_(False)

    def num_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    def plan(self, blocks, self_blocks):
        out = {f"transformer_blocks.{i}.attn2.processor": (PixArtCrossCaptureProcessor, True, False) for i in blocks}
        for i in self_blocks:
            out[f"transformer_blocks.{i}.attn1.processor"] = (PixArtSelfCaptureProcessor, False, True)
        return out

    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        ids = list(input_ids)
        eos = self.tokenizer.eos_token_id
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        mask = torch.zeros(1, len(ids), dtype=torch.long, device=self.text_encoder.device)
        mask[:, :n] = 1
        z = self.text_encoder(torch.tensor([ids], device=self.text_encoder.device), attention_mask=mask)[0][0]
        return (z * mask[0, :, None]).to(self.dtype)

    def micro_conditions(self, latents: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """``added_cond_kwargs`` for latents of this size, as ``PixArtAlphaPipeline`` passes them: with the
        transformer's ``use_additional_conditions`` (diffusers turns it on for sample size 128, PixArt-α 1024, whose
        config does not set it; PixArt-Σ's sets it off) the image's pixel ``resolution`` (B, 2) ``[height, width]``
        and ``aspect_ratio`` (B, 1) ``height / width`` in :attr:`dtype` on the latents' device; else None for both.
        """
        if not getattr(self.transformer, "use_additional_conditions", False):
            return {"resolution": None, "aspect_ratio": None}
        b = latents.shape[0]
        h, w = (int(s) * self.vae_scale for s in latents.shape[-2:])
        kw = {"device": latents.device, "dtype": self.dtype}  # filled on the device: no copy from the host
        resolution = torch.stack([torch.full((b,), float(h), **kw), torch.full((b,), float(w), **kw)], dim=1)
        return {"resolution": resolution, "aspect_ratio": torch.full((b, 1), h / w, **kw)}

    def denoise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
        b, c = latents.shape[:2]
        mask = (text != 0).any(dim=-1).to(self.dtype)
        out = self.transformer(
            latents,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            timestep=torch.full((b,), int(timestep), device=self.device, dtype=torch.long),
            added_cond_kwargs=self.micro_conditions(latents),
            return_dict=False,
        )[0]
        return out[:, :c] if out.shape[1] == 2 * c else out
