"""The pure tensor functions behind the successors' read-outs (:mod:`diffsegmenter.readouts`): content tokens and
per-pixel token rescaling (GoCA), head weights from output agreement and layer weights from self-attention agreement
(GoCA). No model, no capture: shapes, dtypes and ranges are in each docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .aggregation import minmax

__all__ = [
    "STOP_WORDS",
    "content_token_mask",
    "rescale_tokens",
    "background_absorbers",
    "head_agreement_weights",
    "joint_head_weighted_probs",
    "head_weighted_probs",
    "self_attention_agreement",
    "layer_weights",
    "fuse_layers",
    "block_key",
]

#: Function words dropped from the content tokens (a short English list of ours: articles, prepositions,
#: conjunctions, pronouns, auxiliaries; the prompts this library builds use "a", "of", "and", "the", "with").
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "or",
        "with",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "there",
        "here",
        "some",
        "any",
        "photo",
        "photograph",
        "picture",
        "image",
    ]
) - {"photo", "photograph", "picture", "image"}

_EPS = 1e-8


# ---------------------------------------------------------------------------------------------------- pure functions
def content_token_mask(tokenizer, input_ids, keep=(), length: int | None = None) -> torch.Tensor:
    """Which token positions of a prompt are *content* tokens (GoCA's rescaling keeps only these).

    Dropped: the tokenizer's special tokens (``<sos>``/BOS, end/EOS, padding; anything in ``all_special_ids``) and
    stop words (:data:`STOP_WORDS`, compared lower-case with CLIP's ``</w>`` and sentencepiece's ``▁`` stripped).
    Positions in ``keep`` (the class tokens) are always content, whatever their word.

    Args:
        tokenizer: a ``transformers`` tokenizer (``convert_ids_to_tokens``, ``all_special_ids``).
        input_ids (`Sequence[int]`): the prompt's padded token ids.
        keep (`Iterable[int]`, *optional*): positions that are always content.
        length (`int`, *optional*): pad the mask with ``False`` to this length (a joint sequence longer than the
            ids, e.g. SD3's CLIP + T5 columns: only the columns of these ids can be content).

    Returns:
        `torch.Tensor`: (length or len(input_ids),) bool.
    """
    ids = list(input_ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            special.add(int(value))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    mask = torch.zeros(length or len(ids), dtype=torch.bool)
    for i, (tid, piece) in enumerate(zip(ids, pieces)):
        word = str(piece).replace("</w>", "").replace("\u2581", "").strip().lower()
        mask[i] = tid not in special and bool(word) and word not in STOP_WORDS
    for i in keep:
        mask[int(i)] = True
    return mask


def rescale_tokens(maps: torch.Tensor, content: torch.Tensor, absorbers: torch.Tensor | None = None) -> torch.Tensor:
    """GoCA's per-pixel token rescaling: renormalise each pixel over the content tokens, then min-max each token.

    ``r_t(p) = a_t(p) / sum_{u in content} a_u(p)`` for content tokens t (0 elsewhere), then each token's map is
    min-max normalised over pixels (:func:`~diffsegmenter.aggregation.minmax`). The ``<sos>`` token, which takes
    most of the attention on background pixels, no longer sets the scale of the others.

    With ``absorbers`` (the ``background="absorb"`` read-outs, ours) the denominator also sums those tokens:
    ``r_t(p) = a_t(p) / sum_{u in content or absorbers} a_u(p)``, and only content tokens are returned. GoCA's
    captions have content words that name no class ("a photo of a cat *on grass*"), which take a background pixel's
    share; a prompt that names only classes has none, so every pixel's class maps sum to 1 and background scores as
    high as an object. Absorbers (e.g. every token but ``<sos>``: function words, end, padding,
    :func:`background_absorbers`) give that share somewhere to go.

    Choice (not in the paper): a sample with a single content token and no absorbers (a per-class prompt such as
    "a cat") is not renormalised, because its rescaled map would be 1 everywhere; its token is only min-max
    normalised.

    Args:
        maps (`torch.Tensor`): (B, T, h, w) non-negative per-token attention.
        content (`torch.Tensor`): (B, T) or (T,) bool, the content tokens (e.g. :func:`content_token_mask`).
        absorbers (`torch.Tensor`, *optional*): (B, T) or (T,) bool, tokens that join the denominator only.

    Returns:
        `torch.Tensor`: (B, T, h, w) float32 in [0, 1]; non-content tokens are 0.
    """
    b, t = maps.shape[:2]

    def per_sample(x: torch.Tensor) -> torch.Tensor:  # (B, T, 1, 1) float, padded with False to T columns
        if x.shape[-1] < t:  # a joint sequence longer than the prompt's ids: the other columns are not content
            x = F.pad(x, (0, t - x.shape[-1]), value=False)
        return x.to(maps.device).reshape(-1, t).expand(b, t).float()[:, :, None, None]

    mask = per_sample(content)
    pool = mask if absorbers is None else torch.maximum(mask, per_sample(absorbers))
    m = maps.float()
    several = (pool.sum(dim=1, keepdim=True) >= 2).float()
    total = (m * pool).sum(dim=1, keepdim=True)
    m = (several * (m / total.clamp_min(_EPS)) + (1 - several) * m) * mask
    return minmax(m) * mask


def background_absorbers(content: torch.Tensor, sos_first: bool) -> torch.Tensor:
    """The tokens that absorb background in ``background="absorb"``: every prompt token that is not content, except
    the ``<sos>`` at position 0 of CLIP-style prompts (``sos_first``; T5 prompts have none).

    Args:
        content (`torch.Tensor`): (B, T) or (T,) bool content tokens.
        sos_first (`bool`): position 0 is a start token (SD1/SD2/SDXL/SD3's CLIP ids).

    Returns:
        `torch.Tensor`: same shape, bool.
    """
    out = ~content.bool()
    if sos_first:
        out[..., 0] = False
    return out


def head_agreement_weights(head_out: torch.Tensor, total: torch.Tensor, mode: str = "cosine") -> torch.Tensor:
    """Per-pixel head weights: how much each head's output agrees with the layer's output.

    ``c_h(p) = cos(o_h(p), O(p))`` with ``o_h = A_h V_h W_O,h`` (head h's share of the output projection, no bias)
    and ``O = sum_h o_h``. ``mode="cosine"`` (ours): ``w_h = max(c_h, 0) / sum_h max(c_h, 0)`` (uniform where no head
    agrees); ``mode="softmax"``: ``w_h = softmax_h(c_h / 0.1)`` (the alternative measured in the README).

    Args:
        head_out (`torch.Tensor`): (B, H, N, C) per-head projected outputs (tests; the capture computes the cosines
            one head at a time through :func:`head_weighted_probs`) or (B, H, N) cosines when ``total`` is None.
        total (`torch.Tensor`, *optional*): (B, N, C) the layer's output.

    Returns:
        `torch.Tensor`: (B, H, N) float32, summing to 1 over heads.
    """
    cos = head_out.float() if total is None else F.cosine_similarity(head_out.float(), total.float()[:, None], dim=-1)
    if mode == "softmax":
        return torch.softmax(cos / 0.1, dim=1)
    if mode != "cosine":
        raise ValueError(f"head weighting mode must be 'cosine' or 'softmax', got {mode!r}")
    pos = cos.clamp_min(0)
    s = pos.sum(dim=1, keepdim=True)
    uniform = torch.full_like(pos, 1.0 / pos.shape[1])
    return torch.where(s > _EPS, pos / s.clamp_min(_EPS), uniform)


def head_weighted_probs(
    probs: torch.Tensor, out: torch.Tensor, w_out: torch.Tensor, mode: str = "cosine"
) -> torch.Tensor:
    """One cross-attention layer's probabilities averaged over heads with :func:`head_agreement_weights`.

    Per-head outputs are formed one head at a time (``out_h @ W_O,h^T``, (B, N, C)), so at most the layer's output
    and one head's share are held: one layer's worth, never all heads' (B, H, N, C).

    Args:
        probs (`torch.Tensor`): (B, H, N, T) softmax probabilities.
        out (`torch.Tensor`): (B, H, N, d) the attention outputs ``probs @ V``.
        w_out (`torch.Tensor`): (C, H * d) the output projection's weight.

    Returns:
        `torch.Tensor`: (B, N, T) float32, rows summing to 1 over T (a convex combination of the heads' rows).
    """
    b, h, n, d = out.shape
    w = w_out.float().reshape(w_out.shape[0], h, d)  # (C, H, d)
    outf = out.float()
    total = torch.einsum("bhnd,chd->bnc", outf, w)
    cos = torch.stack(
        [F.cosine_similarity(torch.matmul(outf[:, i], w[:, i].T), total, dim=-1) for i in range(h)], dim=1
    )
    weights = head_agreement_weights(cos, None, mode)
    return torch.einsum("bhn,bhnt->bnt", weights, probs.float())


def joint_head_weighted_probs(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    text: slice,
    scale: float,
    w_out: torch.Tensor,
    mode: str = "cosine",
    part: str = "joint",
    chunk_elements: int = 1 << 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-weighted image->text probabilities of a joint-attention layer (SD3, FLUX), chunked over image queries.

    One softmax over all S keys ([image; text] for SD3, [text; image] for FLUX); for image query p and head h:

    * the probabilities ``A_h(p, t)`` of the text keys t (what the read-outs read), and
    * the head's output ``o_h(p) = (sum_j A_h(p, j) V_h(j)) W_O,h``: ``part="joint"`` (ours, the default) sums over
      *all* joint keys j, image and text, i.e. the head's share of what the layer writes to the image token's
      residual stream; ``part="text"`` sums over the text keys only (the head's text-derived contribution, the
      alternative). ``W_O,h`` is head h's column block of the image branch's output projection (no bias: it is the
      same for every head).

    Heads are weighted per pixel by :func:`head_agreement_weights` of ``o_h(p)`` against ``O(p) = sum_h o_h(p)``
    (computed the same way, so with ``part="text"`` against the layer's text-derived output). Per chunk of image
    queries only the chunk's scores (``chunk_elements`` floats), the layer's output for those rows and one head's
    projected output at a time are held: never all heads' (B, H, N, C), never the (N + T)^2 matrix.

    Args:
        q (`torch.Tensor`): (B, H, N, d) image queries (after the layer's norms and rotary embedding).
        keys, values (`torch.Tensor`): (B, H, S, d) all keys and values of the joint sequence, in the layer's order.
        text (`slice`): where the text keys sit in ``keys``.
        scale (`float`): the softmax scale.
        w_out (`torch.Tensor`): (C, H * d) the image branch's output projection weight (FLUX single-stream blocks:
            the attention columns of the block's ``proj_out``).
        mode (`str`): :func:`head_agreement_weights` mode.
        part (`str`): ``"joint"`` or ``"text"``, see above.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: (B, N, T) float32 head-weighted and (B, N, T) head-averaged text
        probabilities (rows sum to the text's share of each row's joint softmax).
    """
    if part not in ("joint", "text"):
        raise ValueError(f"the head output part must be 'joint' or 'text', got {part!r}")
    b, h, n, d = q.shape
    w = w_out.float().reshape(w_out.shape[0], h, d)  # (C, H, d)
    kt = keys.float().transpose(-1, -2)
    v = values.float() if part == "joint" else values[:, :, text].float()
    rows = max(1, chunk_elements // max(1, b * h * keys.shape[2]))
    weighted, uniform = [], []
    for start in range(0, n, rows):
        probs = torch.softmax(torch.matmul(q[:, :, start : start + rows].float(), kt) * scale, dim=-1)
        p_text = probs[..., text]  # (B, H, r, T)
        out = torch.matmul(probs if part == "joint" else p_text, v)  # (B, H, r, d)
        del probs
        total = torch.einsum("bhrd,chd->brc", out, w)
        cos = torch.stack(
            [F.cosine_similarity(torch.matmul(out[:, i], w[:, i].T), total, dim=-1) for i in range(h)], dim=1
        )
        weights = head_agreement_weights(cos, None, mode)
        weighted.append(torch.einsum("bhr,bhrt->brt", weights, p_text))
        uniform.append(p_text.mean(dim=1))
    return torch.cat(weighted, dim=1), torch.cat(uniform, dim=1)


def self_attention_agreement(
    q: torch.Tensor, k: torch.Tensor, scale: float, feats: torch.Tensor, chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """How well a self-attention layer agrees with a pseudo self-attention of the features it reads (layer weight).

    ``S = mean_h softmax(Q_h K_h^T * scale)`` is the layer's head-averaged self-attention; the pseudo self-attention
    is ``P = softmax(X X^T / sqrt(C))`` with X the (B, N, C) hidden states the layer is given (after its norm): the
    same attention with identity projections, i.e. what the denoiser's own features say is similar. Agreement is
    the mean over query pixels of the Bhattacharyya coefficient ``sum_j sqrt(S_ij P_ij)`` (1 = identical rows,
    0 = disjoint). Choice (the paper leaves the measure open): Bhattacharyya, bounded and symmetric. Rows are
    evaluated in chunks of ``chunk_elements`` scores; the N x N matrices are never held whole.

    Args:
        q, k (`torch.Tensor`): (B, H, N, d) the layer's queries and keys.
        scale (`float`): its softmax scale.
        feats (`torch.Tensor`): (B, N, C) its input hidden states.

    Returns:
        `torch.Tensor`: (B,) float32 in [0, 1].
    """
    b, h, n, _ = q.shape
    x = feats.float()
    xt = x.transpose(1, 2)
    kt = k.float().transpose(-1, -2)
    rows = max(1, chunk_elements // max(1, b * (h + 1) * n))
    total = torch.zeros(b, dtype=torch.float32, device=q.device)
    for s in range(0, n, rows):
        sl = slice(s, s + rows)
        att = torch.softmax(torch.matmul(q[:, :, sl].float(), kt) * scale, dim=-1).mean(dim=1)
        pseudo = torch.softmax(torch.matmul(x[:, sl], xt) / x.shape[-1] ** 0.5, dim=-1)
        total += (att * pseudo).sqrt().sum(dim=-1).sum(dim=-1)
    return total / n


def layer_weights(agreement: torch.Tensor, mode: str = "agreement") -> torch.Tensor:
    """Layer weights from per-layer agreements: ``w_l = a_l / sum_l a_l`` (``mode="agreement"``, ours) or uniform
    (``mode="uniform"``: head weighting alone, the alternative measured).

    Args:
        agreement (`torch.Tensor`): (L, B) non-negative agreements.

    Returns:
        `torch.Tensor`: (L, B) float32, summing to 1 over layers.
    """
    a = agreement.float().clamp_min(0)
    if mode == "uniform":
        return torch.full_like(a, 1.0 / a.shape[0])
    if mode != "agreement":
        raise ValueError(f"layer weighting mode must be 'agreement' or 'uniform', got {mode!r}")
    s = a.sum(dim=0, keepdim=True)
    return torch.where(s > _EPS, a / s.clamp_min(_EPS), torch.full_like(a, 1.0 / a.shape[0]))


def fuse_layers(layer_maps: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Sum per-layer class maps with per-sample layer weights, each upsampled (bilinear) to the finest layer's size.

    Args:
        layer_maps (`list[torch.Tensor]`): L maps (B, C, h_l, w_l) in [0, 1].
        weights (`torch.Tensor`): (L, B) weights summing to 1 over layers.

    Returns:
        `torch.Tensor`: (B, C, h, w) float32 in [0, 1].
    """
    if not layer_maps:
        raise ValueError("no attention layers were captured")
    size = max((m.shape[-2:] for m in layer_maps), key=lambda s: s[0] * s[1])
    out = None
    for m, w in zip(layer_maps, weights):
        m = m.float()
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
        term = w.to(m.device)[:, None, None, None] * m
        out = term if out is None else out + term
    return out


def block_key(name: str) -> str:
    """The transformer block of an attention layer's processor key, under which its layer agreement is recorded:
    ``...transformer_blocks.0.attn2.processor`` (UNet, PixArt) and ``transformer_blocks.3.attn.processor`` (SD3,
    FLUX) -> ``...transformer_blocks.0`` / ``transformer_blocks.3``."""
    for part in (".attn1.", ".attn2.", ".attn."):
        if part in name:
            return name.split(part)[0]
    return name
