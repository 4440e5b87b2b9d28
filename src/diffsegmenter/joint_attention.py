"""Attention capture for transformer denoisers (DiT / MM-DiT): SD3 and FLUX joint attention, PixArt cross-attention.

The UNet capture (SD1/SD2/SDXL) and the :class:`~diffsegmenter.attention.AttentionStore` both kinds fill live in
:mod:`diffsegmenter.attention`. Every capture here is undone in ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

from .attention import AttentionStore
from .readout_ops import block_key, head_weighted_probs, joint_head_weighted_probs, self_attention_agreement

__all__ = [
    "FluxCaptureProcessor",
    "FluxConceptProcessor",
    "FluxWeightedProcessor",
    "PixArtCrossCaptureProcessor",
    "PixArtSelfCaptureProcessor",
    "PixArtAgreementProcessor",
    "PixArtWeightedCrossProcessor",
    "SD3JointCaptureProcessor",
    "SD3WeightedProcessor",
    "capture_concepts",
    "capture_wrapped",
    "joint_text_probs",
    "weighted_plan",
]

# ---------------------------------------------------------------------------------------------------------------------
# Transformer (DiT / MM-DiT) capture: SD3 and FLUX joint attention, PixArt cross-attention.
#
# These processors *wrap* the layer's own processor: they recompute only the projections they read (image queries and
# keys, text keys) and then call the original processor for the layer's output, so the model output is bit-identical to
# the uncaptured forward by construction (the fused kernel still computes it), whatever the diffusers version's
# processor does. The cost is one extra q/k projection per captured layer (no extra value projection).

#: Score elements (queries x keys x heads x batch) evaluated at once when the image->text slice of a joint softmax is
#: computed: 2**25 float32 = 128 MiB, whatever the sequence length (the (N+T)^2 matrix is never formed).
JOINT_CHUNK_ELEMENTS = 1 << 25


def joint_text_probs(
    q_img: torch.Tensor, keys: torch.Tensor, text: slice, scale: float, chunk_elements: int = JOINT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """The image->text block of a joint softmax over [image; text] keys, averaged over heads on the fly.

    ``softmax(q k^T * scale)`` over *all* keys (image and text), read only at the text columns: each chunk of image
    queries forms its scores against every key, takes the row's log-sum-exp, and keeps ``exp(score - lse)`` at the
    text columns only. Peak memory is ``chunk_elements`` floats, never the (N+T)^2 matrix.

    Args:
        q_img (`torch.Tensor`): (B, heads, N, d) image queries (after the layer's norms and rotary embedding).
        keys (`torch.Tensor`): (B, heads, S, d) all keys of the joint sequence, in the layer's order.
        text (`slice`): where the text keys sit in ``keys``.
        scale (`float`): the softmax scale (1/sqrt(d) for SD3 and FLUX).

    Returns:
        `torch.Tensor`: (B, N, T) float32 probabilities, head-averaged (rows sum to the text's share of the row).
    """
    b, h, n, _ = q_img.shape
    kt = keys.float().transpose(-1, -2)
    rows = max(1, chunk_elements // max(1, b * h * keys.shape[2]))
    out = []
    for start in range(0, n, rows):
        scores = torch.matmul(q_img[:, :, start : start + rows].float(), kt) * scale
        lse = scores.logsumexp(dim=-1, keepdim=True)
        out.append((scores[..., text] - lse).exp_().mean(dim=1))
    return torch.cat(out, dim=1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, heads * d) -> (B, heads, S, d)."""
    b, s, _ = x.shape
    return x.view(b, s, heads, -1).transpose(1, 2)


class _WrappingProcessor:
    """Calls the wrapped processor for the output after recording what :meth:`record` reads."""

    def __init__(self, original, store: AttentionStore, read_cross: bool, read_self: bool, name: str = "") -> None:
        self.original = original
        self.store = store
        self.read_cross = read_cross
        self.read_self = read_self
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        with torch.no_grad():
            self.record(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        raise NotImplementedError

    def _keep_self(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        keep = self.store.keep_batch
        self.store.self_qk.append((q[keep], k[keep], float(scale)))


class _FluxWrappingProcessor(_WrappingProcessor):
    """A wrapper with ``FluxAttnProcessor``'s signature: ``FluxAttention.forward`` passes the rotary embedding as the
    fifth *positional* argument (diffusers 0.42), which the generic ``*args`` would hide from :meth:`record` (the
    maps would be computed without the rotary embedding while the model output kept it)."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs
    ):
        with torch.no_grad():
            self.record(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)


def _image_qk(attn, hidden_states):
    """The image tokens' per-head queries and keys of an SD3 joint layer, q/k-normalised as its processor does:
    two (B, heads, N, d) tensors."""
    q = _heads(attn.to_q(hidden_states), attn.heads)
    k = _heads(attn.to_k(hidden_states), attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k


class SD3JointCaptureProcessor(_WrappingProcessor):
    """SD3's ``JointAttnProcessor2_0`` layers: [image; text] tokens in one softmax (image first)."""

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        if encoder_hidden_states is None:  # SD3.5's extra image-only attention (attn2): not a joint layer
            return
        q, k = _image_qk(attn, hidden_states)
        scale = q.shape[-1] ** -0.5  # the processor calls SDPA with its default scale
        if self.read_cross:
            kt = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
            if attn.norm_added_k is not None:
                kt = attn.norm_added_k(kt)
            n = q.shape[2]
            probs = joint_text_probs(q, torch.cat([k, kt], dim=2), slice(n, None), scale)
            self.store.add_cross_mean(probs, self.name)
        if self.read_self:
            self._keep_self(q, k, scale)


def _flux_projections(attn, hidden_states, encoder_hidden_states, image_rotary_emb, latent_size, values=False):
    """FLUX's image queries and all keys (and values) of one layer, as its processor forms them.

    Returns:
        `tuple`: q_img (B, heads, N, d) after norm and rotary embedding, k_all and v_all (B, heads, T + N, d) in
        [text; image] order (v_all None unless ``values``), and T.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    def split(x):  # (B, S, heads * d) -> (B, S, heads, d), FLUX's layout
        return x.unflatten(-1, (-1, attn.head_dim))

    fused = getattr(attn, "fused_projections", False)
    if fused:
        q_img, k_img, v_img = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        q_img, k_img = attn.to_q(hidden_states), attn.to_k(hidden_states)
        v_img = attn.to_v(hidden_states) if values else None
    q_all, k_all = attn.norm_q(split(q_img)), attn.norm_k(split(k_img))
    v_all = split(v_img) if values else None
    if encoder_hidden_states is not None:  # double-stream: prepend the text keys (its queries are not read)
        if fused:
            _, k_txt, v_txt = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            k_txt = attn.add_k_proj(encoder_hidden_states)
            v_txt = attn.add_v_proj(encoder_hidden_states) if values else None
        k_txt = attn.norm_added_k(split(k_txt))
        t = k_txt.shape[1]
        k_all = torch.cat([k_txt, k_all], dim=1)
        if values:
            v_all = torch.cat([split(v_txt), v_all], dim=1)
        q_img = q_all
    else:  # single-stream: [text; image] already joined
        h, w = latent_size
        t = k_all.shape[1] - (h // 2) * (w // 2)
        q_img = q_all[:, t:]
    if image_rotary_emb is not None:
        cos, sin = image_rotary_emb
        q_img = apply_rotary_emb(q_img, (cos[t:], sin[t:]), sequence_dim=1)
        k_all = apply_rotary_emb(k_all, image_rotary_emb, sequence_dim=1)
    v_all = v_all.transpose(1, 2) if values else None
    return q_img.transpose(1, 2), k_all.transpose(1, 2), v_all, t


class FluxCaptureProcessor(_FluxWrappingProcessor):
    """FLUX's ``FluxAttnProcessor`` layers: [text; image] tokens, rotary embedding applied before the scores.

    Double-stream blocks get text and image separately; single-stream blocks get them joined, so the text length is
    the sequence length minus the image tokens (known from ``store.latent_size`` and the 2x2 packing).
    """

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("FLUX attention capture does not support attention masks (the pipelines pass none)")
        q, k, _, t = _flux_projections(
            attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.store.latent_size
        )
        scale = q.shape[-1] ** -0.5
        if self.read_cross:
            self.store.add_cross_mean(joint_text_probs(q, k, slice(0, t), scale), self.name)
        if self.read_self:
            self._keep_self(q, k[:, :, t:], scale)


class PixArtCrossCaptureProcessor(_WrappingProcessor):
    """PixArt's cross-attention (``attn2``, ordinary softmax over the T5 tokens, padding masked)."""

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(encoder_hidden_states), attn.heads)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:  # PixArt's additive bias, (B, 1, T)
            scores = scores + attention_mask.float().reshape(scores.shape[0], 1, 1, -1)
        self.store.add_cross(scores.softmax(dim=-1), self.name)


class PixArtSelfCaptureProcessor(_WrappingProcessor):
    """PixArt's image self-attention (``attn1``): keeps queries and keys for completion."""

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(hidden_states), attn.heads)
        self._keep_self(q, k, float(attn.scale))


# ---------------------------------------------------------------------------------------------------------------------
# The weighted read-out (GoCA) on transformers: per-head outputs and layer agreements, recorded beside the plain maps.


def _record_weighted(store: AttentionStore, name: str, weighted: torch.Tensor, uniform: torch.Tensor) -> None:
    """The head-weighted (B, N, T) map goes to ``layer_maps``; the plain head average to ``cross_sum`` (the paper's
    maps, for ``background="paper"``). Both are over the whole UNet batch; ``keep_batch`` is applied here."""
    store.layer_maps.append((name, weighted[store.keep_batch]))
    store.add_cross_mean(uniform, name)


def _record_agreement(store, name, q_img, k_img, scale, feats) -> None:
    """The layer agreement of a joint-attention block: its image->image attention (renormalised over the image
    keys) against the pseudo self-attention of the image hidden states it is given."""
    if store.measure_agreement:
        keep = store.keep_batch
        store.layer_agreement[block_key(name)] = self_attention_agreement(q_img[keep], k_img[keep], scale, feats[keep])


class SD3WeightedProcessor(_WrappingProcessor):
    """SD3 joint attention for ``readout="weighted"``: per read block, the head-weighted image->text probabilities
    (:func:`~diffsegmenter.readout_ops.joint_head_weighted_probs`, heads' outputs through ``to_out[0]``) and the
    block's layer agreement; completion queries/keys as :class:`SD3JointCaptureProcessor`.

    Args:
        part (`str`): the head output ``"joint"`` (over all keys) or ``"text"`` (over the text keys).
    """

    def __init__(self, original, store, read_cross, read_self, name="", part: str = "joint") -> None:
        super().__init__(original, store, read_cross, read_self, name)
        self.part = part

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        if encoder_hidden_states is None:  # SD3.5's extra image-only attention (attn2): not a joint layer
            return
        q, k = _image_qk(attn, hidden_states)
        scale = q.shape[-1] ** -0.5
        if self.read_cross:
            kt = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
            if attn.norm_added_k is not None:
                kt = attn.norm_added_k(kt)
            v = _heads(attn.to_v(hidden_states), attn.heads)
            vt = _heads(attn.add_v_proj(encoder_hidden_states), attn.heads)
            n = q.shape[2]
            weighted, uniform = joint_head_weighted_probs(
                q, torch.cat([k, kt], 2), torch.cat([v, vt], 2), slice(n, None), scale, attn.to_out[0].weight,
                self.store.head_weighting or "cosine", self.part,
            )  # fmt: skip
            _record_weighted(self.store, self.name, weighted, uniform)
            _record_agreement(self.store, self.name, q, k, scale, hidden_states)
        if self.read_self:
            self._keep_self(q, k, scale)


class FluxWeightedProcessor(_FluxWrappingProcessor):
    """FLUX attention for ``readout="weighted"``: as :class:`SD3WeightedProcessor`, [text; image] order.

    Args:
        part (`str`): the head output ``"joint"`` or ``"text"``.
        w_out (`torch.Tensor`, *optional*): the output projection of the image tokens' attention: a double-stream
            block's ``attn.to_out[0].weight`` (None: taken from the layer), a single-stream block's attention
            columns of ``proj_out.weight`` (its attention has no output projection of its own).
    """

    def __init__(self, original, store, read_cross, read_self, name="", part="joint", w_out=None) -> None:
        super().__init__(original, store, read_cross, read_self, name)
        self.part = part
        self.w_out = w_out

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("FLUX attention capture does not support attention masks (the pipelines pass none)")
        q, k, v, t = _flux_projections(
            attn, hidden_states, encoder_hidden_states, image_rotary_emb, self.store.latent_size, values=True
        )
        scale = q.shape[-1] ** -0.5
        if self.read_cross:
            w_out = self.w_out if self.w_out is not None else attn.to_out[0].weight
            weighted, uniform = joint_head_weighted_probs(
                q, k, v, slice(0, t), scale, w_out, self.store.head_weighting or "cosine", self.part
            )
            _record_weighted(self.store, self.name, weighted, uniform)
            feats = hidden_states if encoder_hidden_states is not None else hidden_states[:, t:]
            _record_agreement(self.store, self.name, q, k[:, :, t:], scale, feats)
        if self.read_self:
            self._keep_self(q, k[:, :, t:], scale)


class PixArtWeightedCrossProcessor(_WrappingProcessor):
    """PixArt cross-attention for ``readout="weighted"``: head weights from the heads' outputs through
    ``to_out[0]`` (:func:`~diffsegmenter.readout_ops.head_weighted_probs`)."""

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(encoder_hidden_states), attn.heads)
        v = _heads(attn.to_v(encoder_hidden_states), attn.heads)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:  # PixArt's additive bias, (B, 1, T)
            scores = scores + attention_mask.float().reshape(scores.shape[0], 1, 1, -1)
        probs = scores.softmax(dim=-1)
        keep = self.store.keep_batch
        out = torch.matmul(probs[keep], v[keep].float())
        mean = head_weighted_probs(probs[keep], out, attn.to_out[0].weight, self.store.head_weighting or "cosine")
        self.store.layer_maps.append((self.name, mean))
        self.store.add_cross(probs, self.name)


class PixArtAgreementProcessor(_WrappingProcessor):
    """PixArt self-attention (``attn1``) for ``readout="weighted"``: records the block's layer agreement; keeps
    queries and keys for completion where the block completes."""

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs) -> None:
        q = _heads(attn.to_q(hidden_states), attn.heads)
        k = _heads(attn.to_k(hidden_states), attn.heads)
        _record_agreement(self.store, self.name, q, k, float(attn.scale), hidden_states)
        if self.read_self:
            self._keep_self(q, k, float(attn.scale))


def weighted_plan(transformer, plan: dict[str, tuple], part: str = "joint") -> dict[str, tuple]:
    """A backbone's capture plan (``{processor key: (wrapper, read_cross, read_self)}``) with the weighted
    read-out's wrappers: SD3 and FLUX joint layers read head-weighted maps and agreements; PixArt's read blocks
    also get their ``attn1`` wrapped for the agreement.

    Args:
        transformer: the denoiser (FLUX single-stream blocks' ``proj_out`` is read from it).
        plan (`dict`): :meth:`~diffsegmenter.backbones.dit.TransformerBackbone.plan`'s output.
        part (`str`): the joint-attention head output, ``"joint"`` or ``"text"``.
    """
    if part not in ("joint", "text"):
        raise ValueError(f"the head output part must be 'joint' or 'text', got {part!r}")
    out: dict[str, tuple] = {}
    for key, (cls, read_cross, read_self) in plan.items():
        if cls is SD3JointCaptureProcessor:
            cls = partial(SD3WeightedProcessor, part=part)
        elif cls is FluxCaptureProcessor:
            w_out = None
            if key.startswith("single_transformer_blocks."):
                block = transformer.single_transformer_blocks[int(key.split(".")[1])]
                w_out = block.proj_out.weight[:, : block.attn.heads * block.attn.head_dim]
            cls = partial(FluxWeightedProcessor, part=part, w_out=w_out)
        elif cls is PixArtCrossCaptureProcessor:
            cls = PixArtWeightedCrossProcessor
            self_key = key.replace(".attn2.", ".attn1.")
            out[self_key] = (PixArtAgreementProcessor, False, plan.get(self_key, (None, False, False))[2])
        elif cls is PixArtSelfCaptureProcessor:
            cls = PixArtAgreementProcessor
            if key in out:  # already planned by its block's cross-attention
                continue
        out[key] = (cls, read_cross, read_self)
    return out


@contextmanager
def capture_wrapped(
    model, plan: dict[str, tuple[type, bool, bool]], store: AttentionStore
) -> Iterator[AttentionStore]:
    """Wrap the processors named in ``plan`` (``{processor key: (wrapper class, read_cross, read_self)}``) for the
    duration of the context; restore the model's own processors on exit, also after an exception."""
    originals = dict(model.attn_processors)
    unknown = sorted(set(plan) - set(originals))
    if unknown:
        raise ValueError(f"the model has no attention layers {unknown[:3]}")
    procs = {
        name: (plan[name][0](proc, store, plan[name][1], plan[name][2], name) if name in plan else proc)
        for name, proc in originals.items()
    }
    try:  # set inside: an interrupt while the processors are being set still restores them all
        model.set_attn_processor(procs)
        yield store
    finally:
        model.set_attn_processor(dict(originals))


class FluxConceptProcessor(_FluxWrappingProcessor):
    """A FLUX double-stream layer that also carries the concept streams (the concept read-out, ConceptAttention).

    Before the layer's own processor runs (its output is untouched), it recomputes the image and text queries, keys
    and values, the image tokens' attention output, and moves the concept streams ``store``-side through the
    block's text branch (see :class:`~diffsegmenter.readouts.ConceptReadout` for the choices); when the block is
    read, adds ``o_img . o_concept`` (heads concatenated, before the output projections) to
    ``store.concept_scores``.

    Args:
        state (`dict`): shared with the block hooks: ``"stream"`` (B, K, D) the concept streams, ``"temb"`` the
            block's conditioning, set by a forward pre-hook.
        block: the ``FluxTransformerBlock`` this layer belongs to (its ``norm1_context``, ``norm2_context``,
            ``ff_context``).
    """

    def __init__(self, original, store, read, state, block, name: str = "") -> None:
        super().__init__(original, store, read, False, name)
        self.state = state
        self.block = block

    def record(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None, **kwargs):
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise ValueError("FLUX attention capture does not support attention masks (the pipelines pass none)")
        if getattr(attn, "fused_projections", False):
            raise ValueError("the concept read-out needs unfused FLUX projections")

        def split(x):  # (B, S, heads * d) -> (B, S, heads, d)
            return x.unflatten(-1, (-1, attn.head_dim))

        q = attn.norm_q(split(attn.to_q(hidden_states)))
        k = attn.norm_k(split(attn.to_k(hidden_states)))
        v = split(attn.to_v(hidden_states))
        qt = attn.norm_added_q(split(attn.add_q_proj(encoder_hidden_states)))
        kt = attn.norm_added_k(split(attn.add_k_proj(encoder_hidden_states)))
        vt = split(attn.add_v_proj(encoder_hidden_states))
        t = qt.shape[1]
        q_all, k_all, v_all = torch.cat([qt, q], 1), torch.cat([kt, k], 1), torch.cat([vt, v], 1)
        if image_rotary_emb is not None:
            q_all = apply_rotary_emb(q_all, image_rotary_emb, sequence_dim=1)
            k_all = apply_rotary_emb(k_all, image_rotary_emb, sequence_dim=1)
        q_all, k_all, v_all = (x.transpose(1, 2) for x in (q_all, k_all, v_all))  # (B, heads, S, d)
        keep = self.store.keep_batch
        # the concept streams: normalised and modulated by the block's text-branch norm, projected by its text branch
        block, stream, temb = self.block, self.state["stream"], self.state["temb"]
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(stream, emb=temb[keep])
        qc = attn.norm_added_q(split(attn.add_q_proj(nc))).transpose(1, 2)
        kc = attn.norm_added_k(split(attn.add_k_proj(nc))).transpose(1, 2)
        vc = split(attn.add_v_proj(nc)).transpose(1, 2)
        k_img, v_img = k_all[keep, :, t:], v_all[keep, :, t:]
        oc = F.scaled_dot_product_attention(qc, torch.cat([kc, k_img], 2), torch.cat([vc, v_img], 2))
        if self.read_cross:
            o_img = F.scaled_dot_product_attention(q_all[keep, :, t:], k_all[keep], v_all[keep])
            b, h, n, d = o_img.shape
            score = torch.matmul(o_img.transpose(1, 2).reshape(b, n, h * d).float(),
                                 oc.transpose(1, 2).reshape(b, -1, h * d).float().transpose(1, 2))  # fmt: skip
            prev = self.store.concept_scores
            self.store.concept_scores = score if prev is None else prev + score
        attn_c = attn.to_add_out(oc.transpose(1, 2).flatten(2).to(stream.dtype))
        stream = stream + c_gate_msa.unsqueeze(1) * attn_c
        norm = block.norm2_context(stream) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        self.state["stream"] = stream + c_gate_mlp.unsqueeze(1) * block.ff_context(norm)


@contextmanager
def capture_concepts(transformer, store: AttentionStore, concepts: torch.Tensor, read_blocks) -> Iterator:
    """Carry concept streams through every double-stream block of a ``FluxTransformer2DModel`` for the duration of
    the context (:class:`FluxConceptProcessor`); restore the processors and remove the hooks on exit.

    Args:
        transformer: the FLUX transformer.
        store (`AttentionStore`): receives ``concept_scores`` (B, N, K) summed over the read blocks.
        concepts (`torch.Tensor`): (B_kept, K, D_text) initial concept embeddings in the text encoder's space
            (projected here by ``context_embedder``).
        read_blocks (`Iterable[int]`): double-stream block indices whose scores are summed.
    """
    blocks = list(transformer.transformer_blocks)
    read = set(int(i) for i in read_blocks)
    if not read or not read <= set(range(len(blocks))):
        raise ValueError(
            f"the concept read-out reads FLUX's double-stream blocks 0..{len(blocks) - 1}, got {sorted(read)}"
        )
    state = {"stream": transformer.context_embedder(concepts.to(transformer.dtype)), "temb": None}

    def grab_temb(module, args, kwargs):
        state["temb"] = kwargs["temb"] if "temb" in kwargs else args[2]

    originals = dict(transformer.attn_processors)
    procs = dict(originals)
    for i, blk in enumerate(blocks):
        key = f"transformer_blocks.{i}.attn.processor"
        procs[key] = FluxConceptProcessor(originals[key], store, i in read, state, blk, key)
    hooks = []
    try:  # set inside: an interrupt while hooks and processors are being set still removes them all
        for blk in blocks:
            hooks.append(blk.register_forward_pre_hook(grab_temb, with_kwargs=True))
        transformer.set_attn_processor(procs)
        yield store
    finally:
        for hook in hooks:
            hook.remove()
        transformer.set_attn_processor(dict(originals))
