"""Read-outs: how one attention pass's captured attention becomes per-class maps (``SegmenterConfig.readout``).

One seam, five strategies (:func:`readout_for`), each made of the small pure functions of
:mod:`diffsegmenter.readout_ops`:

* ``"paper"`` (:class:`PaperReadout`): DiffSegmenter's own: per level the layer- and head-averaged cross-attention
  of the class's tokens, min-max, fused with ``level_weights``, completed with the mean self-attention. The SD1/SD2
  default, bit-for-bit the code that was here before the seam.
* ``"rescaled"`` (:class:`RescaledReadout`, after GoCA's per-pixel token rescaling): per level, each pixel's
  attention is renormalised over the prompt's *content* tokens (:func:`content_token_mask`: no ``<sos>``, end,
  padding or stop-word tokens), then each token is min-max normalised over pixels (:func:`rescale_tokens`); then as
  the paper. Any backbone.
* ``"weighted"`` (:class:`WeightedReadout`, after GoCA's automatic head and layer weighting): inside every
  cross-attention layer each head is weighted per pixel by how much its output agrees with the layer's output
  (:func:`head_agreement_weights`); each layer is weighted by how well its block's self-attention agrees with a
  pseudo self-attention of the block's own features (:func:`self_attention_agreement`, :func:`layer_weights`);
  then rescaled as above and summed over layers with those weights (no ``level_weights``). UNet backbones.
* ``"single-block"`` (:class:`SingleBlockReadout`, after Seg4Diff): one block's head-averaged image->text
  probabilities of the class tokens, post-softmax, no min-max and no completion; the class decision is the argmax
  of those raw probabilities (:class:`~diffsegmenter.decision.RawScoresDecision`). SD3 and FLUX.
* ``"concept"`` (:class:`ConceptReadout`, after ConceptAttention): every class is an extra token stream through the
  text branch of FLUX's double-stream blocks; pixels are scored by the dot product of the image's and the concept's
  attention outputs. FLUX.

Nothing here imports diffusers; the capture side lives in :mod:`diffsegmenter.attention`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .aggregation import complete_with_self_attention, fuse_levels, minmax, select_token_maps
from .config import READOUTS
from .readout_ops import (
    STOP_WORDS,
    content_token_mask,
    fuse_layers,
    head_agreement_weights,
    head_weighted_probs,
    layer_weights,
    rescale_tokens,
    self_attention_agreement,
)

if TYPE_CHECKING:
    from .attention import AttentionStore

__all__ = [
    "READOUTS",
    "STOP_WORDS",
    "content_token_mask",
    "rescale_tokens",
    "head_agreement_weights",
    "head_weighted_probs",
    "self_attention_agreement",
    "layer_weights",
    "fuse_layers",
    "Readout",
    "PaperReadout",
    "RescaledReadout",
    "WeightedReadout",
    "SingleBlockReadout",
    "ConceptReadout",
    "readout_for",
    "single_block_default",
]

#: Backbone families each read-out runs on (None = every family).
FAMILIES: dict[str, tuple[str, ...] | None] = {
    "paper": None,
    "rescaled": None,
    "weighted": ("sd", "sdxl"),
    "single-block": ("sd3", "flux"),
    "concept": ("flux",),
}


def single_block_default(backbone) -> int:
    """Seg4Diff's block for a family, scaled to the model's depth: SD3 block 9 of 24 (0.375 of the way), FLUX
    double-stream block 12 of 19."""
    if backbone.family == "flux":
        nd = len(backbone.transformer.transformer_blocks)
        return min(nd - 1, round(nd * 12 / 19))
    n = backbone.num_blocks()
    return min(n - 1, round(n * 9 / 24))


# ---------------------------------------------------------------------------------------------------- strategies
class Readout:
    """How a pass's capture is set up (:meth:`prepare`) and how the store becomes (where, which) maps (:meth:`maps`).

    Attributes:
        name (`str`): the ``SegmenterConfig.readout`` value.
        needs_content (`bool`): :meth:`maps` reads each sample's content-token mask.
        raw_scores (`bool`): the maps are probabilities to be labelled without a final min-max.
    """

    name = "paper"
    needs_content = False
    raw_scores = False

    def check_family(self, family: str) -> None:
        allowed = FAMILIES[self.name]
        if allowed is not None and family not in allowed:
            raise ValueError(
                f"readout {self.name!r} runs on {', '.join(allowed)} backbones, not on {family}: use readout='paper' "
                "or 'rescaled'"
            )

    def prepare(self, store: AttentionStore) -> None:
        """Ask the store for what :meth:`maps` reads (before the forward)."""

    def capture_blocks(self, backbone, spec) -> dict:
        """The ``blocks``/``self_blocks`` arguments of :meth:`DiffusionBackbone.capture` for this pass."""
        if spec.attention_blocks is None and spec.self_attention_blocks is None:
            return {}
        return {"blocks": spec.attention_blocks, "self_blocks": spec.self_attention_blocks}

    def capture(self, backbone, store: AttentionStore, spec, text: torch.Tensor, token_groups):
        """The context in which the denoiser forward records what this read-out reads (not yet entered)."""
        return backbone.capture(store, spec.self_attention_factor, **self.capture_blocks(backbone, spec))

    def level_maps(self, store: AttentionStore, token_groups, content) -> dict[int, torch.Tensor]:
        """Per level, (B, C, h, w) class maps before fusion."""
        return {f: select_token_maps(m, token_groups) for f, m in store.cross_maps().items()}

    def where(self, store: AttentionStore, level_maps, token_groups, content, spec) -> torch.Tensor:
        fused = fuse_levels(level_maps, spec.level_weights)
        return _complete(store, fused, spec.self_attention_steps)

    def maps(self, store: AttentionStore, token_groups, content, spec):
        """(where, which) maps of a pass: (B, C, h, w) each, or None where ``spec`` asks for none."""
        per_level = self.level_maps(store, token_groups, content)
        which = fuse_levels(per_level, spec.which_weights) if spec.which_weights is not None else None
        where = self.where(store, per_level, token_groups, content, spec) if spec.where else None
        return where, which


def _complete(store: AttentionStore, fused: torch.Tensor, steps: int) -> torch.Tensor:
    if store.self_qk and steps > 0:
        _, size = store.level_of(store.self_qk[0][0].shape[2])
        if tuple(fused.shape[-2:]) != size:  # completing at a coarser level than the fused maps
            fused = F.interpolate(fused, size=size, mode="area")
    return complete_with_self_attention(fused, store.self_qk, steps)


class PaperReadout(Readout):
    """The paper's read-out (the code path of the released method, unchanged)."""

    name = "paper"


class RescaledReadout(Readout):
    """GoCA's per-pixel token rescaling on the level maps, then the paper's fusion and completion.

    Choice: the rescaling is applied per level, to the layer- and head-averaged attention (one renormalisation per
    level); ``per_layer=True`` renormalises every layer before the level average (the alternative measured).
    """

    name = "rescaled"
    needs_content = True

    def __init__(self, per_layer: bool = False) -> None:
        self.per_layer = per_layer

    def prepare(self, store: AttentionStore) -> None:
        store.keep_layers = self.per_layer

    def level_maps(self, store, token_groups, content):
        if not self.per_layer:
            return {
                f: select_token_maps(rescale_tokens(m, content), token_groups) for f, m in store.cross_maps().items()
            }
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for _, factor, m in _layer_token_maps(store):
            r = select_token_maps(rescale_tokens(m, content), token_groups)
            sums[factor] = r if factor not in sums else sums[factor] + r
            counts[factor] = counts.get(factor, 0) + 1
        return {f: s / counts[f] for f, s in sums.items()}


def _layer_token_maps(store: AttentionStore):
    """(name, factor, (B, T, h, w)) of each kept layer."""
    for name, mean in store.layer_maps:
        factor, (hl, wl) = store.level_of(mean.shape[1])
        yield name, factor, mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], hl, wl)


class WeightedReadout(Readout):
    """GoCA's automatic head and layer weighting, with token rescaling.

    Per cross-attention layer l: heads weighted per pixel (:func:`head_weighted_probs`), tokens rescaled
    (:func:`rescale_tokens`); layers summed with weights from their block's self-attention agreement
    (:func:`self_attention_agreement`, :func:`layer_weights`), after bilinear upsampling to the finest layer;
    ``level_weights`` is not used (the weights replace it); completion as the paper. A class-decision pass
    (``class_level_weights``) fuses the per-level means of the same layer maps with its weights.

    Args:
        head_mode (`str`): ``"cosine"`` (ours) or ``"softmax"`` (:func:`head_agreement_weights`).
        layer_mode (`str`): ``"agreement"`` (ours) or ``"uniform"`` (:func:`layer_weights`).
    """

    name = "weighted"
    needs_content = True

    def __init__(self, head_mode: str = "cosine", layer_mode: str = "agreement") -> None:
        self.head_mode = head_mode
        self.layer_mode = layer_mode

    def prepare(self, store: AttentionStore) -> None:
        store.keep_layers = True
        store.head_weighting = self.head_mode
        store.measure_agreement = self.layer_mode != "uniform"

    def _layers(self, store, token_groups, content):
        layers = [(name, f, select_token_maps(rescale_tokens(m, content), token_groups))
                  for name, f, m in _layer_token_maps(store)]  # fmt: skip
        return layers

    def maps(self, store, token_groups, content, spec):
        layers = self._layers(store, token_groups, content)
        if not layers:
            raise ValueError("no attention layers were captured")
        which = None
        if spec.which_weights is not None:
            sums: dict[int, torch.Tensor] = {}
            counts: dict[int, int] = {}
            for _, f, m in layers:
                sums[f] = m if f not in sums else sums[f] + m
                counts[f] = counts.get(f, 0) + 1
            which = fuse_levels({f: s / counts[f] for f, s in sums.items()}, spec.which_weights)
        if not spec.where:
            return None, which
        b = layers[0][2].shape[0]
        if self.layer_mode == "uniform":
            agreement = torch.ones(len(layers), b)
        else:
            agreement = torch.stack([store.layer_agreement[_block_of(name)].cpu() for name, _, _ in layers])
        weights = layer_weights(agreement, self.layer_mode)
        store.last_layer_weights = weights
        fused = fuse_layers([m for _, _, m in layers], weights)
        return _complete(store, fused, spec.self_attention_steps), which


def _block_of(name: str) -> str:
    """The transformer block of an attention layer's processor key (``...transformer_blocks.0.attn2.processor`` ->
    ``...transformer_blocks.0``)."""
    for part in (".attn1.", ".attn2."):
        if part in name:
            return name.split(part)[0]
    return name


class SingleBlockReadout(Readout):
    """Seg4Diff: one block's image->text probabilities, head-averaged, post-softmax; no min-max, no completion.

    The block is ``config.readout_block`` or :func:`single_block_default`. The maps are the raw probabilities of the
    class tokens (mean over a name's sub-tokens); the class decision is their argmax per pixel, and ``tau`` is
    compared with the raw probability (:class:`~diffsegmenter.decision.RawScoresDecision`), so a useful tau is small.
    Choice (Seg4Diff does not use a background threshold on these maps): the raw probability against tau.
    """

    name = "single-block"
    raw_scores = True

    def __init__(self, block: int | None = None) -> None:
        self.block = block

    def capture_blocks(self, backbone, spec) -> dict:
        block = self.block if self.block is not None else single_block_default(backbone)
        return {"blocks": [block], "self_blocks": [block]}

    def maps(self, store, token_groups, content, spec):
        (factor, m), *rest = store.cross_maps().items()
        if rest:
            raise ValueError("the single-block read-out reads one block")
        raw = select_token_maps(m, token_groups).clamp(0, 1)
        return (raw if spec.where else None), None


class ConceptReadout(Readout):
    """ConceptAttention on FLUX: classes as extra token streams through the double-stream blocks' text branch.

    Each class's stream starts from the mean of its tokens' rows of the prompt's T5 embedding, projected by the
    transformer's ``context_embedder`` (choice: no extra text-encoder call; a separate encoding of the bare name is
    the alternative, not measured: there is no FLUX shapes model). In every double-stream block it is normalised
    and modulated by the block's ``norm1_context``, projected by the text branch (``add_q/k/v_proj``, the added
    q/k norms), attends to [concepts; image] (no rotary embedding: text positions are 0 in FLUX, where the rotation
    is the identity), goes through ``to_add_out``, the gated residual and ``ff_context``; nothing attends to it, so
    the image and the prompt are untouched. Score of pixel p for class c, per read block: the dot product of the
    image's and the concept's attention outputs (heads concatenated, before the output projections, which differ
    between the two branches), summed over the read blocks (``attention_blocks`` restricted to double-stream ones);
    then min-max per class (choice: tau keeps its meaning and one class works; ConceptAttention takes a softmax over
    the concepts). No completion.
    """

    name = "concept"

    def capture(self, backbone, store, spec, text, token_groups):
        from .joint_attention import capture_concepts

        nd = len(backbone.transformer.transformer_blocks)
        blocks = spec.attention_blocks if spec.attention_blocks is not None else list(range(nd))
        concepts = torch.stack(
            [
                torch.stack([text[b, idx].float().mean(dim=0) for idx in groups])
                for b, groups in enumerate(token_groups)
            ]
        )
        return capture_concepts(backbone.transformer, store, concepts, blocks)

    def maps(self, store, token_groups, content, spec):
        scores = store.concept_scores  # (B, N, K)
        _, (hl, wl) = store.level_of(scores.shape[1])
        b, n, k = scores.shape
        m = minmax(scores.transpose(1, 2).reshape(b, k, hl, wl).float())
        return (m if spec.where else None), None


#: name -> factory(block) of each read-out; research scripts may swap in a variant (e.g. ``WeightedReadout("softmax")``)
#: to measure an alternative choice under the same name.
FACTORIES = {
    "paper": lambda block: PaperReadout(),
    "rescaled": lambda block: RescaledReadout(),
    "weighted": lambda block: WeightedReadout(),
    "single-block": lambda block: SingleBlockReadout(block),
    "concept": lambda block: ConceptReadout(),
}


def readout_for(name: str, block: int | None = None) -> Readout:
    """The strategy of a ``SegmenterConfig.readout`` value (``block``: ``SegmenterConfig.readout_block``)."""
    if name not in FACTORIES:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {name!r}")
    return FACTORIES[name](block)
