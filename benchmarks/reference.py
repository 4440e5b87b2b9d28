"""The released DiffSegmenter code's cost structure, re-implemented for benchmarking (method.md §3, §3.2).

What the released scripts do per image, and what :class:`ReferencePipeline` therefore does:

* one VAE encode and one noise draw per image;
* **per class**: one captioner call (when a captioner is on: BLIP with the class prefix, vision encoder included),
  one text encoding of the prompt and one of the empty prompt, and one UNet forward on a batch of two
  ``[empty prompt, class prompt]`` with diffusers' eager ``AttnProcessor`` maths in **every** attention layer;
* the attention probabilities of the conditional half of **every** layer are kept, per layer and head, as the
  released ``AttentionStore`` keeps them: a view into the ``[uncond, cond]`` probability tensor, so the whole
  tensor stays alive (self-attention at every resolution too, although only the finest is used);
* per resolution, the kept maps are concatenated over layers and heads and averaged (``aggregate_all_attention``);
  the class token's map is upsampled to the finest level, min-max normalised and weighted 0.3/0.5/0.1/0.1 by
  downsampling factor; the averaged finest-level self-attention is materialised as an explicit N x N matrix, moved
  to the CPU, and multiplied by the fused map; the result is upsampled bilinearly and min-max normalised.

Preprocessing, seeded noise, prompts, token positions and class emphasis are those of the engine
(:meth:`DiffSegmenter.encode_images`, :meth:`DiffSegmenter.build_prompts`, :func:`diffsegmenter.prompts.apply_emphasis`)
so both pipelines produce the same score maps; only the UNet / attention / completion path and the call structure
differ. Nothing of the engine's capture path (``diffsegmenter.attention``, ``diffsegmenter.aggregation``) is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from diffsegmenter.prompts import ClassPrompt, apply_emphasis, emphasis_positions, select_positions

__all__ = ["EagerStoringProcessor", "ReleasedAttentionStore", "ReferencePipeline"]

_EPS = 1e-8


@dataclass
class ReleasedAttentionStore:
    """Every layer's conditional-half attention probabilities, as the released ``AttentionStore`` keeps them.

    Attributes:
        cross (`list[torch.Tensor]`): per cross-attention layer, (heads, N, T) probabilities (views).
        self_ (`list[torch.Tensor]`): per self-attention layer, (heads, N, N) probabilities (views).
        unet_batches (`list[int]`): batch size of every UNet forward seen (for cost-structure checks).
    """

    cross: list[torch.Tensor] = field(default_factory=list)
    self_: list[torch.Tensor] = field(default_factory=list)
    unet_batches: list[int] = field(default_factory=list)

    def reset(self) -> None:
        """Forget the maps (the released code resets its controller for every class)."""
        self.cross.clear()
        self.self_.clear()


class EagerStoringProcessor:
    """Diffusers' eager ``AttnProcessor`` maths, keeping the conditional half of the attention probabilities.

    The UNet batch is ``[uncond, cond]``; in the ``(batch * heads, N, T)`` layout of ``head_to_batch_dim`` the
    conditional half is ``probs[h // 2:]``, which is stored as a view (the released code's
    ``attn[h // 2:] = self.forward(attn[h // 2:], ...)`` followed by ``step_store[key].append(attn)``).

    Args:
        store (`ReleasedAttentionStore`): where the probabilities go.
    """

    def __init__(self, store: ReleasedAttentionStore) -> None:
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        h = attention_probs.shape[0]
        (self.store.cross if is_cross else self.store.self_).append(attention_probs[h // 2 :])
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max over the last two dims; a constant map becomes zeros (the engine's convention)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    return torch.where(rng > _EPS, (x - lo) / rng.clamp_min(_EPS), torch.zeros_like(x))


def _aggregate(maps: list[torch.Tensor], latent: tuple[int, int]) -> dict[int, torch.Tensor]:
    """``aggregate_all_attention``: per resolution, concatenate layers x heads and take the plain mean.

    Args:
        maps (`list[torch.Tensor]`): per layer, (heads, N, T) probabilities.
        latent (`tuple[int, int]`): the latent's (h, w).

    Returns:
        `dict[int, torch.Tensor]`: downsampling factor -> (h_f, w_f, T) mean map.
    """
    h, w = latent
    by_size: dict[int, list[torch.Tensor]] = {}
    for m in maps:
        by_size.setdefault(m.shape[1], []).append(m)
    out = {}
    for n, items in by_size.items():
        factor = round(math.sqrt(h * w / n))
        hf, wf = (
            (h // factor, w // factor) if (h // factor) * (w // factor) == n else (-(-h // factor), -(-w // factor))
        )
        stacked = torch.cat([m.reshape(-1, hf, wf, m.shape[-1]) for m in items], dim=0)
        out[factor] = stacked.sum(0) / stacked.shape[0]
    return out


class ReferencePipeline:
    """The released code's per-class loop, driven by an engine instance for preprocessing and prompts.

    Args:
        segmenter (`diffsegmenter.DiffSegmenter`): supplies the backbone (an SD one), the config, ``encode_images``
            and ``build_prompts``; its UNet's processors are replaced during each forward and restored afterwards.
    """

    def __init__(self, segmenter) -> None:
        if segmenter.config.prompt_mode != "per_class":
            raise ValueError("the released code prompts per class: give a segmenter with prompt_mode='per_class'")
        self.seg = segmenter
        self.store = ReleasedAttentionStore()

    @torch.inference_mode()
    def _text(self, prompt: ClassPrompt) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncond, cond) embeddings, encoded afresh (uncached) for every class as the released code does."""
        backbone = self.seg.backbone
        empty = backbone.encode_ids(backbone.empty_ids())
        z = backbone.encode_ids(prompt.input_ids)
        positions = emphasis_positions(prompt, self.seg.config.emphasis_scope)
        cond = apply_emphasis(z, empty, positions, self.seg.config.emphasis) if self.seg.config.emphasis != 1 else z
        return empty, cond

    @torch.inference_mode()
    def _unet(self, latent: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor) -> None:
        backbone = self.seg.backbone
        unet = backbone.unet  # the released code's eager processors are installed on the SD UNet itself
        originals = dict(unet.attn_processors)
        unet.set_attn_processor(EagerStoringProcessor(self.store))
        try:
            x = torch.cat([latent, latent])
            context = torch.stack([uncond, cond])
            self.store.unet_batches.append(x.shape[0])
            backbone.denoise(x, self.seg.config.timestep, context)
        finally:
            unet.set_attn_processor(originals)

    @torch.inference_mode()
    def _class_map(self, positions: list[int], latent_hw: tuple[int, int]) -> torch.Tensor:
        """Fused, completed map of one class at the finest level, from the stored maps: (h, w) float32."""
        cfg = self.seg.config
        cross = _aggregate(self.store.cross, latent_hw)
        selfs = _aggregate(self.store.self_, latent_hw)  # every resolution, as the released code computes
        finest = min(cross)
        size = cross[finest].shape[:2]
        total = sum(cfg.level_weights[f] for f in cross)
        fused = torch.zeros(size, dtype=torch.float32, device=cross[finest].device)
        for factor in sorted(cross):
            m = cross[factor][:, :, positions].float().mean(-1)
            if m.shape != size:
                m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            fused = fused + (cfg.level_weights[factor] / total) * _minmax(m)
        if cfg.self_attention_steps == 0:
            return fused
        # the released code reads the finest level; the engine may be configured to read a coarser one
        level = getattr(cfg, "self_attention_factor", None) or min(selfs)
        s = selfs[level].float()
        if tuple(s.shape[:2]) != tuple(size):
            fused = F.interpolate(fused[None, None], size=tuple(s.shape[:2]), mode="area")[0, 0]
            size = tuple(s.shape[:2])
        n = s.shape[0] * s.shape[1]
        matrix = s.reshape(n, n).cpu()  # the released code: .cpu() then a 4096 x 4096 @ 4096 product
        vec = fused.reshape(n).cpu()
        for _ in range(cfg.self_attention_steps):
            vec = matrix @ vec
        return vec.reshape(size)

    def segment(self, image: np.ndarray, classes: Sequence[str], seed: int | None = None) -> dict:
        """Segment one RGB uint8 image the released way.

        Args:
            image (`np.ndarray`): (H, W, 3) uint8.
            classes (`Sequence[str]`): class names.
            seed (`int`, *optional*): noise seed; defaults to the engine config's.

        Returns:
            `dict`: ``scores`` (K, H, W) float32 in [0, 1] and ``prompts`` (list of str).
        """
        seg = self.seg
        seed = seg.config.seed if seed is None else int(seed)
        h, w = image.shape[:2]
        latent = seg.encode_images([image], seed)
        scores, prompts = [], []
        for name in classes:
            # one captioner call per class (build_prompts with a single class; no batching across classes)
            prompt = seg.build_prompts(image, [name])[0]
            uncond, cond = self._text(prompt)
            self.store.reset()
            self._unet(latent, uncond, cond)
            positions = select_positions(prompt.class_tokens[0], prompt.extra_tokens[0], seg.config.token_rule)
            m = self._class_map(positions, tuple(latent.shape[-2:]))
            self.store.reset()
            up = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            scores.append(_minmax(up))
            prompts.append(prompt.text)
        out = torch.stack(scores) if scores else torch.zeros(0, h, w)
        return {"scores": out.cpu().numpy().astype(np.float32), "prompts": prompts}
