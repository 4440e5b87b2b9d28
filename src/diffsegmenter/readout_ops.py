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
    "head_agreement_weights",
    "head_weighted_probs",
    "self_attention_agreement",
    "layer_weights",
    "fuse_layers",
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


def rescale_tokens(maps: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """GoCA's per-pixel token rescaling: renormalise each pixel over the content tokens, then min-max each token.

    ``r_t(p) = a_t(p) / sum_{u in content} a_u(p)`` for content tokens t (0 elsewhere), then each token's map is
    min-max normalised over pixels (:func:`~diffsegmenter.aggregation.minmax`). The ``<sos>`` token, which takes
    most of the attention on background pixels, no longer sets the scale of the others.

    Choice (not in the paper): a sample with a single content token (a per-class prompt such as "a cat") is not
    renormalised, because its rescaled map would be 1 everywhere; its token is only min-max normalised.

    Args:
        maps (`torch.Tensor`): (B, T, h, w) non-negative per-token attention.
        content (`torch.Tensor`): (B, T) or (T,) bool, the content tokens (e.g. :func:`content_token_mask`).

    Returns:
        `torch.Tensor`: (B, T, h, w) float32 in [0, 1]; non-content tokens are 0.
    """
    b, t = maps.shape[:2]
    if content.shape[-1] < t:  # a joint sequence longer than the prompt's ids: the other columns are not content
        content = F.pad(content, (0, t - content.shape[-1]), value=False)
    mask = content.to(maps.device).reshape(-1, t).expand(b, t).float()[:, :, None, None]
    m = maps.float() * mask
    several = (mask.sum(dim=1, keepdim=True) >= 2).float()
    total = m.sum(dim=1, keepdim=True)
    m = several * (m / total.clamp_min(_EPS)) + (1 - several) * m
    return minmax(m) * mask


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
