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
  then rescaled as above and summed over layers with those weights (no ``level_weights``). Every backbone (joint
  attention: a head's output is its image queries' output over all joint keys, see :class:`WeightedReadout`).

Both GoCA read-outs take a ``background`` (:data:`BACKGROUNDS`, :class:`RescaledReadout`): renormalising over the
class names alone leaves a background pixel nowhere to go, so it can be given absorber tokens or the paper's maps
can decide where.
* ``"single-block"`` (:class:`SingleBlockReadout`, after Seg4Diff): one block's head-averaged image->text
  probabilities of the class tokens, post-softmax, no min-max and no completion; the class decision is the argmax
  of those raw probabilities (:class:`~diffsegmenter.decision.RawScoresDecision`). SD3 and FLUX.
* ``"concept"`` (:class:`ConceptReadout`, after ConceptAttention): every class is an extra token stream through the
  text branch of FLUX's double-stream blocks; pixels are scored by the dot product of the image's and the concept's
  attention outputs. FLUX.

Nothing here imports diffusers; the capture side lives in :mod:`diffsegmenter.attention` and
:mod:`diffsegmenter.joint_attention`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .aggregation import complete_with_self_attention, fuse_levels, minmax, select_token_maps
from .config import READOUTS
from .readout_ops import (
    STOP_WORDS,
    background_absorbers,
    block_key,
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
    "BACKGROUNDS",
    "DEFAULT_BACKGROUND",
    "splits_where_and_which",
    "readout_for",
    "single_block_default",
]

#: Backbone families each read-out runs on (None = every family).
FAMILIES: dict[str, tuple[str, ...] | None] = {
    "paper": None,
    "rescaled": None,
    "weighted": ("sd", "sdxl", "sd3", "flux", "pixart"),
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
            usable = [name for name, families in FAMILIES.items() if families is None or family in families]
            raise ValueError(
                f"readout {self.name!r} runs on {', '.join(allowed)} backbones, not on {family}: use one of "
                + ", ".join(repr(name) for name in usable)
            )

    def check_backbone(self, backbone, spec) -> None:
        """Refuse, before any forward, what this read-out's capture would refuse on ``backbone`` with ``spec`` (a
        :class:`~diffsegmenter.passes.PassSpec`): another family's settings (``self_attention_factor`` on a
        transformer, ``attention_blocks`` on a UNet) and a block out of range. (Fusion weights are checked against
        the levels a pass captures, which depend on the input size, at the first pass.)

        Raises:
            ValueError: naming the setting and what the backbone reads.
        """
        self.check_family(backbone.family)
        backbone.check_reading(spec.self_attention_factor, **self.capture_blocks(backbone, spec))

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
        which = (
            fuse_levels(per_level, spec.which_weights, "class_level_weights")
            if spec.which_weights is not None
            else None
        )
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


#: How the GoCA read-outs (rescaled, weighted) leave room for background; see :class:`RescaledReadout`.
BACKGROUNDS = ("content", "absorb", "paper")
#: The background handling of ``readout="rescaled"`` / ``"weighted"``, each chosen on 150 shapes val scenes (mIoU,
#: README): rescaled ``"paper"`` 0.852 (absorb 0.840, content 0.355; the paper read-out 0.834); weighted ``"absorb"``
#: 0.799 (paper 0.796, content 0.343).
DEFAULT_BACKGROUND = {"rescaled": "paper", "weighted": "absorb"}


def _check_background(background: str) -> str:
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    return background


def _sos_first(backbone) -> bool:
    """Position 0 of the backbone's prompt ids is a start token (CLIP tokenizers; T5 has none)."""
    return getattr(getattr(backbone, "tokenizer", None), "bos_token_id", None) is not None


class _GocaReadout(Readout):
    """Shared by the GoCA read-outs: token rescaling with the chosen background handling, and the paper's where maps
    for ``background="paper"``."""

    needs_content = True
    background = "content"
    sos_first = True

    def _rescale(self, maps: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        absorbers = background_absorbers(content, self.sos_first) if self.background == "absorb" else None
        return rescale_tokens(maps, content, absorbers)

    def _paper_where(self, store, token_groups, spec) -> torch.Tensor:
        levels = {f: select_token_maps(m, token_groups) for f, m in store.cross_maps().items()}
        return Readout.where(self, store, levels, token_groups, None, spec)


class RescaledReadout(_GocaReadout):
    """GoCA's per-pixel token rescaling on the level maps, then the paper's fusion and completion.

    Choices (the paper's protocol leaves them open):

    * the rescaling is applied per level, to the layer- and head-averaged attention (one renormalisation per
      level); ``per_layer=True`` renormalises every layer before the level average (the alternative measured);
    * ``background`` (None = :data:`DEFAULT_BACKGROUND`, ``"paper"``): how a pixel that shows none of the named
      classes can still score low. GoCA renormalises over the caption's content tokens, which include words that
      name no class; a prompt that names only classes (this library's) leaves none, so every pixel's class maps sum
      to 1 and background scores like an object. ``"content"``: GoCA as described, content tokens only.
      ``"absorb"``: every other prompt token but ``<sos>`` (function words, end, padding) joins the denominator as
      a background absorber (:func:`background_absorbers`). ``"paper"``: the paper's maps decide *where*
      (foreground vs background) and the rescaled maps only *which* class: the where maps are the paper
      read-out's, the class-decision maps (``class_level_weights``, or ``level_weights`` when that is None, see
      :func:`~diffsegmenter.decision.class_decision`) are the rescaled ones, uncompleted, as the paper read-out's.
    """

    name = "rescaled"

    def __init__(self, per_layer: bool = False, background: str | None = None) -> None:
        self.per_layer = per_layer
        self.background = _check_background(background or DEFAULT_BACKGROUND[self.name])

    def prepare(self, store: AttentionStore) -> None:
        store.keep_layers = self.per_layer

    def capture(self, backbone, store, spec, text, token_groups):
        self.sos_first = _sos_first(backbone)
        return super().capture(backbone, store, spec, text, token_groups)

    def level_maps(self, store, token_groups, content):
        if not self.per_layer:
            return {
                f: select_token_maps(self._rescale(m, content), token_groups) for f, m in store.cross_maps().items()
            }
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for _, factor, m in _layer_token_maps(store):
            r = select_token_maps(self._rescale(m, content), token_groups)
            sums[factor] = r if factor not in sums else sums[factor] + r
            counts[factor] = counts.get(factor, 0) + 1
        return {f: s / counts[f] for f, s in sums.items()}

    def maps(self, store, token_groups, content, spec):
        if self.background != "paper":
            return super().maps(store, token_groups, content, spec)
        which = None
        if spec.which_weights is not None:
            which = fuse_levels(
                self.level_maps(store, token_groups, content), spec.which_weights, "class_level_weights"
            )
        where = self._paper_where(store, token_groups, spec) if spec.where else None
        return where, which


def _layer_token_maps(store: AttentionStore):
    """(name, factor, (B, T, h, w)) of each kept layer."""
    for name, mean in store.layer_maps:
        factor, (hl, wl) = store.level_of(mean.shape[1])
        yield name, factor, mean.transpose(1, 2).reshape(mean.shape[0], mean.shape[2], hl, wl)


class WeightedReadout(_GocaReadout):
    """GoCA's automatic head and layer weighting, with token rescaling.

    Per cross-attention layer l: heads weighted per pixel (:func:`head_weighted_probs`; joint attention:
    :func:`~diffsegmenter.readout_ops.joint_head_weighted_probs`, where a head's output is, by default, its image
    queries' output over *all* joint keys, ``head_output="joint"``; ``"text"``: over the text keys only), tokens
    rescaled (:func:`rescale_tokens`, with ``background`` as in :class:`RescaledReadout`); layers summed with
    weights from their block's self-attention agreement (:func:`self_attention_agreement`, :func:`layer_weights`),
    after bilinear upsampling to the finest layer; ``level_weights`` is not used (the weights replace it);
    completion as the paper. A class-decision pass (``class_level_weights``) sums the same layer maps with weights
    ``a_l * class_level_weights[level of l]`` (renormalised; no completion; ``which_fusion="agreement"``, ours) or
    fuses the per-level means of the layer maps with ``class_level_weights`` as the paper read-out fuses levels
    (``which_fusion="levels"``, the alternative measured).

    Where the self-attention of a layer comes from: UNets, the ``attn1`` of the cross-attention layer's transformer
    block; PixArt-Σ, the block's ``attn1``; SD3/FLUX, the image->image part of the block's joint attention,
    renormalised over the image keys, against the pseudo self-attention of the image hidden states the layer is
    given (choice: the text keys are not part of a self-attention).

    Args:
        head_mode (`str`): ``"cosine"`` (ours) or ``"softmax"`` (:func:`head_agreement_weights`).
        layer_mode (`str`): ``"agreement"`` (ours) or ``"uniform"`` (:func:`layer_weights`).
        background (`str`, *optional*): see :class:`RescaledReadout`; None = :data:`DEFAULT_BACKGROUND`
            (``"absorb"``).
        head_output (`str`): joint attention only, ``"joint"`` (ours) or ``"text"`` (see above).
        which_fusion (`str`): ``"agreement"`` (ours) or ``"levels"`` (see above).
    """

    name = "weighted"

    def __init__(
        self,
        head_mode: str = "cosine",
        layer_mode: str = "agreement",
        background: str | None = None,
        head_output: str = "joint",
        which_fusion: str = "agreement",
    ) -> None:
        if which_fusion not in ("agreement", "levels"):
            raise ValueError(f"which_fusion must be 'agreement' or 'levels', got {which_fusion!r}")
        self.which_fusion = which_fusion
        self.head_mode = head_mode
        self.layer_mode = layer_mode
        self.background = _check_background(background or DEFAULT_BACKGROUND[self.name])
        self.head_output = head_output

    def prepare(self, store: AttentionStore) -> None:
        store.keep_layers = False  # the head-weighted maps go to layer_maps; cross_sum keeps the paper's average
        store.head_weighting = self.head_mode
        store.measure_agreement = self.layer_mode != "uniform"

    def capture(self, backbone, store, spec, text, token_groups):
        self.sos_first = _sos_first(backbone)
        if self.background == "paper" and spec.which_weights is None:
            # a where-only pass (a second class-decision pass follows): the paper's maps, the paper's capture
            store.head_weighting, store.measure_agreement = None, False
            return super().capture(backbone, store, spec, text, token_groups)
        if backbone.family in ("sd", "sdxl"):
            return super().capture(backbone, store, spec, text, token_groups)
        from .joint_attention import capture_wrapped, weighted_plan

        blocks = spec.attention_blocks if spec.attention_blocks is not None else backbone.default_blocks()
        self_blocks = (
            spec.self_attention_blocks if spec.self_attention_blocks is not None else backbone.default_self_blocks()
        )
        n = backbone.num_blocks()
        bad = [b for b in [*blocks, *self_blocks] if not 0 <= b < n]
        if bad:
            raise ValueError(
                f"block index {bad[0]} out of range: this {backbone.family} denoiser has {n} blocks (0..{n - 1})"
            )
        plan = weighted_plan(backbone.transformer, backbone.plan(list(blocks), list(self_blocks)), self.head_output)
        return capture_wrapped(backbone.transformer, plan, store)

    def _layers(self, store, token_groups, content):
        layers = [(name, f, select_token_maps(self._rescale(m, content), token_groups))
                  for name, f, m in _layer_token_maps(store)]  # fmt: skip
        if not layers:
            raise ValueError("no attention layers were captured")
        device = layers[0][2].device  # the agreements stay where the maps are: no copy to the host (a sync)
        if self.layer_mode == "uniform":
            agreement = torch.ones(len(layers), layers[0][2].shape[0], device=device)
        else:
            agreement = torch.stack(
                [store.layer_agreement[block_key(name)].float().to(device) for name, _, _ in layers]
            )
        return layers, agreement  # (name, factor, (B, C, h, w)) per layer; (L, B)

    def _which(self, layers, agreement, which_weights) -> torch.Tensor:
        if self.which_fusion == "levels":
            sums: dict[int, torch.Tensor] = {}
            counts: dict[int, int] = {}
            for _, f, m in layers:
                sums[f] = m if f not in sums else sums[f] + m
                counts[f] = counts.get(f, 0) + 1
            return fuse_levels({f: t / counts[f] for f, t in sums.items()}, which_weights, "class_level_weights")
        missing = sorted({f for _, f, _ in layers} - set(which_weights))
        if missing:
            raise ValueError(
                f"no class-decision weight for downsampling factor(s) {missing}; give one in class_level_weights"
            )
        picked = [i for i, (_, f, _) in enumerate(layers) if which_weights[f] > 0]
        if not picked:
            raise ValueError("the class-decision weights are 0 at every captured level")
        # each layer's agreement times its level's weight (a Python scalar: no tensor copied to the device)
        scaled = torch.stack([agreement[i] * float(which_weights[layers[i][1]]) for i in picked])
        return fuse_layers([layers[i][2] for i in picked], layer_weights(scaled, "agreement"))

    def maps(self, store, token_groups, content, spec):
        if self.background == "paper" and spec.which_weights is None:
            return (self._paper_where(store, token_groups, spec) if spec.where else None), None
        layers, agreement = self._layers(store, token_groups, content)
        which = self._which(layers, agreement, spec.which_weights) if spec.which_weights is not None else None
        if not spec.where:
            return None, which
        if self.background == "paper":
            return self._paper_where(store, token_groups, spec), which
        weights = layer_weights(agreement, self.layer_mode)
        store.last_layer_weights = weights
        fused = fuse_layers([m for _, _, m in layers], weights)
        return _complete(store, fused, spec.self_attention_steps), which


def splits_where_and_which(readout: Readout) -> bool:
    """The read-out's where maps are the paper's and its class-decision maps its own (``background="paper"``), so
    its class decision needs class-decision maps even without ``class_level_weights``."""
    return getattr(readout, "background", None) == "paper"


#: The family's default of each block setting: the backbone method that gives it.
_BLOCK_DEFAULTS = {"attention_blocks": "default_blocks", "self_attention_blocks": "default_self_blocks"}


def _blocks_set_otherwise(backbone, spec, settings: tuple[str, ...]) -> tuple[str, list[int]] | None:
    """The first of the block `settings` (``attention_blocks``, ``self_attention_blocks``) that `spec` sets to other
    blocks than the family's default, with its blocks; None when all are unset or the family's (in any order). For
    the read-outs that do not read those settings (their blocks would be ignored without a word)."""
    for setting in settings:
        given, default = getattr(spec, setting), getattr(backbone, _BLOCK_DEFAULTS[setting], None)
        if given is not None and default is not None and set(given) != set(default()):
            return setting, list(given)
    return None


class SingleBlockReadout(Readout):
    """Seg4Diff: one block's image->text probabilities, head-averaged, post-softmax; no min-max, no completion.

    The block is ``config.readout_block`` or :func:`single_block_default`. The maps are the raw probabilities of the
    class tokens (averaged over the positions ``config.token_rule`` picks: the first sub-token by default); the class
    decision is their argmax per pixel, and ``tau`` is compared with the raw probability
    (:class:`~diffsegmenter.decision.RawScoresDecision`), so a useful tau is small.
    Choice (Seg4Diff does not use a background threshold on these maps): the raw probability against tau.
    """

    name = "single-block"
    raw_scores = True

    def __init__(self, block: int | None = None) -> None:
        self.block = block

    def check_backbone(self, backbone, spec) -> None:
        """As :meth:`Readout.check_backbone`; also refuses ``attention_blocks`` / ``self_attention_blocks`` other
        than the family's, which this read-out does not read (it reads ``readout_block``; a user's blocks were
        ignored without a word)."""
        super().check_backbone(backbone, spec)
        if (
            unread := _blocks_set_otherwise(backbone, spec, ("attention_blocks", "self_attention_blocks"))
        ) is not None:
            setting, given = unread
            block = self.block if self.block is not None else single_block_default(backbone)
            raise ValueError(
                f"the single-block read-out reads one block, readout_block ({block} here), not {setting} {given}: "
                f"set readout_block to the block to read, and {setting} to None (--set {setting}=null)"
            )

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

    Each class's stream starts from the mean of its tokens' rows (the positions ``config.token_rule`` picks) of the
    prompt's T5 embedding, projected by the
    transformer's ``context_embedder`` (choice: no extra text-encoder call; a separate encoding of the bare name is
    the alternative, not measured: there is no FLUX shapes model). In every double-stream block it is normalised
    and modulated by the block's ``norm1_context``, projected by the text branch (``add_q/k/v_proj``, the added
    q/k norms), attends to [concepts; image] (no rotary embedding: text positions are 0 in FLUX, where the rotation
    is the identity), goes through ``to_add_out``, the gated residual and ``ff_context``; nothing attends to it, so
    the image and the prompt are untouched. Score of pixel p for class c, per read block: the dot product of the
    image's and the concept's attention outputs (heads concatenated, before the output projections, which differ
    between the two branches), summed over the read blocks (``attention_blocks``, all double-stream blocks by
    default; naming a single-stream block is refused); then min-max per class (choice: tau keeps its meaning and one
    class works; ConceptAttention takes a softmax over the concepts). No completion.
    """

    name = "concept"

    def check_backbone(self, backbone, spec) -> None:
        """As :meth:`Readout.check_backbone`; also refuses ``self_attention_blocks`` other than the family's: this
        read-out has no completion, so they were ignored without a word."""
        super().check_backbone(backbone, spec)
        if (unread := _blocks_set_otherwise(backbone, spec, ("self_attention_blocks",))) is not None:
            raise ValueError(
                f"the concept read-out has no completion step: it reads no self_attention_blocks ({unread[1]} "
                "given); set self_attention_blocks to None (--set self_attention_blocks=null)"
            )

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
