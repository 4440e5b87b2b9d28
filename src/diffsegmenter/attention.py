"""Attention capture through diffusers attention processors.

DiffSegmenter reads two things from one UNet forward:

* the **cross-attention probabilities** of every cross-attention layer (``attn2``), averaged over heads on the fly
  and summed per resolution level, and
* the **self-attention** of the layers at the finest resolution (``attn1`` in the first down block and the last up
  block). The method only ever multiplies the layer- and head-averaged self-attention matrix with a map, so instead
  of the N x N probabilities (N = 4096 for SD1.5, 5 layers x 8 heads x 64 MiB) we keep each layer's queries and keys
  and later evaluate ``softmax(Q K^T * scale) @ map`` as attention with the map as values
  (:func:`diffsegmenter.aggregation.complete_with_self_attention`).

Every other attention layer keeps the processor it had (the fused SDPA one by default). :func:`capture_attention`
captures one forward and always restores the originals, also after an exception; within a
:func:`~diffsegmenter.capture_session.capture_session` (one per run) the processors are installed once and switched
on per pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .readout_ops import head_weighted_probs, self_attention_agreement

if TYPE_CHECKING:  # a type hint only: importing diffusers here would cost every `import` of this module seconds
    from diffusers.models.attention_processor import Attention

__all__ = [
    "AttentionStore",
    "CrossAttentionCaptureProcessor",
    "SelfAttentionCaptureProcessor",
    "capture_attention",
    "layer_downsampling_factor",
    "AgreementCaptureProcessor",
]


@dataclass
class AttentionStore:
    """What one UNet forward left behind, grouped by resolution level.

    A level is named by its downsampling factor relative to the latent (1 = finest, e.g. 64x64 for SD1.5 at 512²).

    Attributes:
        latent_size (`tuple[int, int]`): (h, w) of the latent the UNet was called on; set before the forward.
        keep_batch (`slice`): which samples of the UNet batch to keep (all by default; the conditional half when
            the UNet runs on a classifier-free-guidance batch ``[uncond, cond]``).
        cross_sum (`dict[int, torch.Tensor]`): per level, the sum over layers of head-averaged cross-attention
            probabilities, (B, h_l * w_l, T) float32, each row summing to the number of layers.
        cross_count (`dict[int, int]`): per level, the number of cross-attention layers summed.
        self_qk (`list[tuple[torch.Tensor, torch.Tensor, float]]`): per finest-level self-attention layer, its
            queries and keys, each (B, heads, N, head_dim) in the UNet's dtype, and the softmax scale.

    What a read-out other than the paper's asks for (:meth:`~diffsegmenter.readouts.Readout.prepare`):

    Attributes:
        keep_layers (`bool`): also keep each cross-attention layer's head-averaged (B, N, T) map in ``layer_maps``.
        layer_maps (`list[tuple[str, torch.Tensor]]`): (processor key, (B, N, T) float32) per layer, in call order.
        head_weighting (`str`, *optional*): also average the heads of every cross-attention layer with
            :func:`~diffsegmenter.readouts.head_weighted_probs` in this mode and append that (B, N, T) map to
            ``layer_maps`` (``cross_sum`` keeps the plain head average, the paper's; set ``keep_layers`` False).
        measure_agreement (`bool`): record every UNet self-attention layer's
            :func:`~diffsegmenter.readouts.self_attention_agreement` in ``layer_agreement`` (block key -> (B,)).
        concept_scores (`torch.Tensor`, *optional*): (B, N, K) the concept read-out's summed scores (FLUX).
        last_layer_weights (`torch.Tensor`, *optional*): (L, B) the layer weights the weighted read-out used.
    """

    latent_size: tuple[int, int] = (0, 0)
    keep_batch: slice = field(default_factory=lambda: slice(None))
    cross_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    cross_count: dict[int, int] = field(default_factory=dict)
    self_qk: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)
    keep_layers: bool = False
    layer_maps: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    head_weighting: str | None = None
    measure_agreement: bool = False
    layer_agreement: dict[str, torch.Tensor] = field(default_factory=dict)
    concept_scores: torch.Tensor | None = None
    last_layer_weights: torch.Tensor | None = None

    def reset(self) -> None:
        """Drop everything captured so far (keeps ``latent_size``, ``keep_batch`` and what is asked for)."""
        self.cross_sum.clear()
        self.cross_count.clear()
        self.self_qk.clear()
        self.layer_maps.clear()
        self.layer_agreement.clear()
        self.concept_scores = None

    def level_of(self, num_tokens: int) -> tuple[int, tuple[int, int]]:
        """Map a layer's number of spatial tokens to its level.

        Args:
            num_tokens (`int`): sequence length of the layer's hidden states.

        Returns:
            `tuple[int, tuple[int, int]]`: the downsampling factor f and the level's (h / f, w / f).

        Raises:
            ValueError: if ``num_tokens`` is not the latent size divided by a power-of-two factor squared.
        """
        h, w = self.latent_size
        if h <= 0 or w <= 0:
            raise ValueError("AttentionStore.latent_size must be set before the UNet forward")
        # a stride-2 downsampling rounds odd sizes up, so the level of factor f is ceil(h / f) x ceil(w / f) (h / f
        # when f divides h). Only powers of two are levels: rounding sqrt(h * w / n) named factor 3 for the 4 x 4
        # level of a 13 x 13 latent, and 2 for the 2 x 2 level of a 5 x 5 one (where it collided with the real 2).
        for f in (1, 2, 4, 8, 16, 32, 64):
            if math.ceil(h / f) * math.ceil(w / f) == num_tokens:
                return f, (math.ceil(h / f), math.ceil(w / f))
        raise ValueError(f"cannot place an attention layer of {num_tokens} tokens on a {h}x{w} latent")

    def add_cross(self, probs: torch.Tensor, name: str = "") -> None:
        """Accumulate one layer's cross-attention probabilities.

        Args:
            probs (`torch.Tensor`): (B, heads, N, T) softmax probabilities of one cross-attention layer.
            name (`str`, *optional*): the layer's processor key (kept with its map when ``keep_layers``).
        """
        probs = probs[self.keep_batch].mean(dim=1, dtype=torch.float32)
        if self.keep_layers:
            self.layer_maps.append((name, probs.clone()))
        factor, _ = self.level_of(probs.shape[1])
        if factor in self.cross_sum:
            self.cross_sum[factor] += probs
            self.cross_count[factor] += 1
        else:
            self.cross_sum[factor] = probs
            self.cross_count[factor] = 1

    def add_cross_mean(self, mean: torch.Tensor, name: str = "") -> None:
        """Accumulate one layer's head-averaged image->text attention, (B, N, T) float32 (joint-attention layers;
        head-weighted UNet layers)."""
        mean = mean[self.keep_batch]
        if self.keep_layers:
            self.layer_maps.append((name, mean.clone()))
        factor, _ = self.level_of(mean.shape[1])
        if factor in self.cross_sum:
            self.cross_sum[factor] += mean
            self.cross_count[factor] += 1
        else:
            self.cross_sum[factor] = mean
            self.cross_count[factor] = 1

    def cross_maps(self) -> dict[int, torch.Tensor]:
        """Per level, the cross-attention averaged over layers and heads.

        Returns:
            `dict[int, torch.Tensor]`: factor -> (B, T, h_l, w_l) float32 probabilities in [0, 1].
        """
        out = {}
        for factor, total in self.cross_sum.items():
            _, (hl, wl) = self.level_of(total.shape[1])
            mean = total / self.cross_count[factor]
            out[factor] = mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], hl, wl)
        return out


def _project(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, temb):
    """The input half of diffusers' ``AttnProcessor2_0``: norms, reshapes, q/k/v projections and head split.

    Returns:
        `tuple`: query, key, value as (B, heads, N_q | N_kv, head_dim), the residual, the input ndim and the
        4-D shape (or None).
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    shape4d = None
    if input_ndim == 4:
        shape4d = hidden_states.shape
        b, c, h, w = shape4d
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch_size = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, residual, input_ndim, shape4d


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor, input_ndim: int, shape4d) -> torch.Tensor:
    """The output half of ``AttnProcessor2_0``: merge heads, out-projection, residual, rescale."""
    b, heads, n, d = out.shape
    out = out.transpose(1, 2).reshape(b, n, heads * d)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(shape4d)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _check_mask(attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None:
        raise ValueError("attention capture does not support attention masks (Stable Diffusion uses none)")


class _CaptureProcessor:
    """Shared body of the capturing processors: ``AttnProcessor2_0``'s projections and output, with the attention
    step itself (:meth:`attend`) left to the subclass.

    Args:
        store (`AttentionStore`, *optional*): where the captured tensors go (None: not bound to a pass yet, in a
            :class:`~diffsegmenter.capture_session.SwitchableCaptureProcessor`).
        name (`str`): the layer's processor key, for error messages.
    """

    def __init__(self, store: AttentionStore | None, name: str = "") -> None:
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_mask(attention_mask)
        query, key, value, residual, ndim, shape4d = _project(attn, hidden_states, encoder_hidden_states, temb)
        out = self.attend(attn, query, key, value)
        return _finish(attn, out.to(query.dtype), residual, ndim, shape4d)

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(B, heads, N_q, d) queries, (B, heads, N_kv, d) keys and values -> (B, heads, N_q, d) output."""
        raise NotImplementedError


class CrossAttentionCaptureProcessor(_CaptureProcessor):
    r"""Eager cross-attention that records the head-averaged probabilities in an :class:`AttentionStore`.

    Computes exactly what ``AttnProcessor`` computes (``softmax(Q K^T * scale) V`` with the layer's softmax upcast
    settings); the probabilities are (B, heads, N, T) with T = 77 text tokens, small enough to form explicitly.
    """

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        b, h, n, d = query.shape
        probs = attn.get_attention_scores(query.reshape(b * h, n, d), key.reshape(b * h, -1, d), None)
        probs = probs.view(b, h, n, -1)
        out = torch.matmul(probs, value)
        if self.store.head_weighting:
            keep = self.store.keep_batch
            mean = head_weighted_probs(probs[keep], out[keep], attn.to_out[0].weight, self.store.head_weighting)
            self.store.layer_maps.append((self.name, mean))
        self.store.add_cross(probs, self.name)
        return out


class SelfAttentionCaptureProcessor(_CaptureProcessor):
    r"""Fused (SDPA) self-attention that also keeps the layer's queries and keys.

    The output is what ``AttnProcessor2_0`` gives; the queries and keys of the kept samples are stored so that the
    head- and layer-averaged attention can later be applied to maps without ever forming the N x N matrix.
    """

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        keep = self.store.keep_batch
        self.store.self_qk.append((query[keep], key[keep], float(attn.scale)))
        return F.scaled_dot_product_attention(query, key, value, scale=attn.scale)


class AgreementCaptureProcessor(_CaptureProcessor):
    """Fused self-attention that records its :func:`~diffsegmenter.readouts.self_attention_agreement` (the weighted
    read-out's layer weight) under its block's key, and keeps queries and keys when ``keep_qk`` (completion level).
    """

    def __init__(self, store: AttentionStore | None, name: str = "", keep_qk: bool = False) -> None:
        super().__init__(store, name)
        self.keep_qk = keep_qk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        _check_mask(attention_mask)
        query, key, value, residual, ndim, shape4d = _project(attn, hidden_states, encoder_hidden_states, temb)
        keep = self.store.keep_batch
        feats = hidden_states if ndim == 3 else hidden_states.flatten(2).transpose(1, 2)
        block = self.name.split(".attn1.")[0]
        self.store.layer_agreement[block] = self_attention_agreement(
            query[keep], key[keep], float(attn.scale), feats[keep]
        )
        if self.keep_qk:
            self.store.self_qk.append((query[keep], key[keep], float(attn.scale)))
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        return _finish(attn, out.to(query.dtype), residual, ndim, shape4d)


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def layer_downsampling_factor(name: str, num_down_blocks: int, num_up_blocks: int) -> int:
    """Downsampling factor of an attention layer of a ``UNet2DConditionModel``, from its processor key.

    Each down block but the last halves the resolution after its layers; each up block but the last doubles it
    after its layers. So ``down_blocks.i`` sits at 2**i, ``mid_block`` at 2**(num_down-1) and ``up_blocks.j`` at
    2**(num_up-1-j).

    Args:
        name (`str`): a key of ``unet.attn_processors``, e.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"``.
        num_down_blocks (`int`): ``len(unet.down_blocks)``.
        num_up_blocks (`int`): ``len(unet.up_blocks)``.

    Returns:
        `int`: the factor (1 = full latent resolution).
    """
    m = _BLOCK.match(name)
    if m is None:
        raise ValueError(f"attention layer {name!r} is not in a down, mid or up block of a UNet2DConditionModel")
    if m.group(1) is None:
        return 2 ** (num_down_blocks - 1)
    idx = int(m.group(2))
    if m.group(1) == "down_blocks":
        return 2**idx
    return 2 ** (num_up_blocks - 1 - idx)


@contextmanager
def capture_attention(unet, store: AttentionStore, self_factor: int | None = None) -> Iterator[AttentionStore]:
    """Capture one UNet forward into ``store``: capturing processors on the layers DiffSegmenter reads, the UNet's
    own processors back on exit (also after an exception).

    All cross-attention layers run :class:`CrossAttentionCaptureProcessor`, the self-attention layers of one level
    (the finest by default) :class:`SelfAttentionCaptureProcessor` (:class:`AgreementCaptureProcessor` on every
    self-attention layer when ``store.measure_agreement``), and every other layer keeps its processor. Inside a
    :func:`~diffsegmenter.capture_session.capture_session` on this UNet the processors installed by the session are
    switched on for the pass (nothing is installed); otherwise a session is opened for this pass alone.

    Args:
        unet (`UNet2DConditionModel`): the model to instrument (diffusers' block structure, attention modules with
            ``set_processor``).
        store (`AttentionStore`): receives the captured tensors.
        self_factor (`int`, *optional*): downsampling factor of the self-attention layers to read; None = the
            finest level that has self-attention (the paper's choice).

    Yields:
        `AttentionStore`: the same store.
    """
    from .capture_session import capture_session

    with capture_session(unet) as session, session.bind(store, self_factor):
        yield store
