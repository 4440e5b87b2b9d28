"""Pure tensor maths of DiffSegmenter: from captured attention to class scores and labels.

Every function here is stateless and works on batched tensors, so each step is unit-testable on hand-made inputs.
Notation: B samples (image-prompt pairs), C maps per sample, N = h * w tokens of the finest level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .transfer import to_device

__all__ = [
    "minmax",
    "select_token_maps",
    "fuse_levels",
    "complete_with_self_attention",
    "mean_self_attention_matrix",
    "upsample_scores",
    "split_where_and_which",
    "label_with_background",
]

_EPS = 1e-8
_REL_EPS = 1e-5


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each 2-D map of ``x`` to [0, 1] over its last two dimensions.

    A constant map (spread at most 1e-5 of its magnitude, i.e. float rounding) becomes all zeros (no class
    evidence) instead of a stretched noise pattern.

    Args:
        x (`torch.Tensor`): (..., h, w) floating point.

    Returns:
        `torch.Tensor`: same shape and dtype, each map in [0, 1].
    """
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    # "constant" is judged relative to the map's magnitude: a spread of float rounding (e.g. a 1x1 or 2x2 level of
    # near-uniform attention) must not be stretched into a full 0..1 map
    flat = rng <= _EPS + _REL_EPS * torch.maximum(hi.abs(), lo.abs())
    return torch.where(flat, torch.zeros_like(x), (x - lo) / rng.clamp_min(_EPS))


def select_token_maps(maps: torch.Tensor, token_groups: list[list[list[int]]]) -> torch.Tensor:
    """Average the maps of each class's tokens.

    One gather for the whole batch (the token positions go to the device in one non-blocking copy), not one small
    indexing per sample and class; the same values as averaging each group alone, bit for bit.

    Args:
        maps (`torch.Tensor`): (B, T, h, w) per-token maps of one level.
        token_groups (`list[list[list[int]]]`): for each sample b, for each of its C classes, the token positions
            whose maps are averaged (e.g. the sub-tokens of a multi-token name). Every sample must have the same C.

    Returns:
        `torch.Tensor`: (B, C, h, w).
    """
    b, t, h, w = maps.shape
    sizes = [len(g) for groups in token_groups for g in groups]
    c = len(token_groups[0]) if token_groups else 0
    if len(token_groups) != b or any(len(groups) != c for groups in token_groups) or not sizes or min(sizes) == 0:
        return _select_token_maps_loop(maps, token_groups)  # ragged or empty: the plain loop (and its errors)
    g = max(sizes)
    rows = [i * t + (group[k] if k < len(group) else group[0]) for i, groups in enumerate(token_groups)
            for group in groups for k in range(g)]  # fmt: skip
    index = to_device(torch.tensor(rows, dtype=torch.long), maps.device)
    picked = maps.reshape(b * t, h * w).index_select(0, index).view(b, c, g, h * w)
    if min(sizes) == g:
        out = picked.mean(dim=2)
    else:  # groups of several sizes: pad with zeros, divide by each group's size (the same sum and division)
        keep = torch.tensor([[float(k < n) for k in range(g)] for n in sizes], dtype=maps.dtype)
        count = torch.tensor(sizes, dtype=maps.dtype)
        keep, count = to_device(keep, maps.device), to_device(count, maps.device)
        out = (picked * keep.view(b, c, g, 1)).sum(dim=2) / count.view(b, c, 1)
    return out.view(b, c, h, w)


def _select_token_maps_loop(maps: torch.Tensor, token_groups: list[list[list[int]]]) -> torch.Tensor:
    out = []
    for b, groups in enumerate(token_groups):
        out.append(torch.stack([maps[b, idx].mean(dim=0) for idx in groups]))
    return torch.stack(out)


def fuse_levels(
    level_maps: dict[int, torch.Tensor], weights: dict[int, float], field: str = "level_weights"
) -> torch.Tensor:
    """Fuse class maps across resolution levels (paper step 9).

    Each level's maps are upsampled bilinearly to the finest level present, min-max normalised, and summed with
    ``weights`` keyed by downsampling factor, renormalised over the levels present so that the result is in [0, 1].

    Args:
        level_maps (`dict[int, torch.Tensor]`): downsampling factor -> (B, C, h_f, w_f) class maps.
        weights (`dict[int, float]`): downsampling factor -> weight (paper: {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1}).
        field (`str`, defaults to ``"level_weights"``): the config field the weights came from, for the message.

    Returns:
        `torch.Tensor`: (B, C, h, w) float32 in [0, 1] at the finest level's size.
    """
    if not level_maps:
        raise ValueError("no attention levels were captured")
    missing = [f for f in level_maps if f not in weights]
    if missing:
        unused = sorted(f for f in weights if f not in level_maps)
        raise ValueError(
            f"no fusion weight for downsampling factor(s) {sorted(missing)} (the levels captured: "
            f"{sorted(level_maps)}); give one for each in {field}"
            + (f" (its keys {unused} match no captured level)" if unused else "")
        )
    total = sum(weights[f] for f in level_maps)
    if total <= 0:
        raise ValueError(f"fusion weights over the levels present {sorted(level_maps)} sum to {total}, not > 0")
    finest = min(level_maps)
    size = level_maps[finest].shape[-2:]
    fused = None
    for factor in sorted(level_maps):
        m = level_maps[factor].float()
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        term = (weights[factor] / total) * minmax(m)
        fused = term if fused is None else fused + term
    return fused


def complete_with_self_attention(
    maps: torch.Tensor,
    self_qk: list[tuple[torch.Tensor, torch.Tensor, float]],
    steps: int = 1,
) -> torch.Tensor:
    r"""Mask completion (paper step 10): ``M = S̄ m`` with S̄ the layer- and head-averaged self-attention.

    ``S̄ m = mean_{l,h} softmax(Q_lh K_lh^T * scale_l) m`` is evaluated as scaled-dot-product attention with the maps
    as values, so the N x N matrix is never formed (N = 4096 for SD1.5 at 512²: 64 MiB per head and layer).

    Args:
        maps (`torch.Tensor`): (B, C, h, w) maps at the finest level.
        self_qk (`list[tuple[torch.Tensor, torch.Tensor, float]]`): per layer, queries and keys (B, heads, N, d)
            with N = h * w, and the softmax scale.
        steps (`int`, *optional*, defaults to 1): how many times to apply S̄ (the paper: once).

    Returns:
        `torch.Tensor`: (B, C, h, w) float32; a convex combination of the input values, so it stays in [0, 1] if
        the input is.
    """
    if steps < 0:
        raise ValueError(f"self-attention steps must be >= 0, got {steps}")
    if steps == 0 or not self_qk:
        return maps.float()
    b, c, h, w = maps.shape
    n = h * w
    for q, _, _ in self_qk:
        if q.shape[0] != b or q.shape[2] != n:
            raise ValueError(f"self-attention of shape {tuple(q.shape)} does not match maps of shape {(b, c, h, w)}")
    dtype = self_qk[0][0].dtype
    # values: (B, 1, N, C), broadcast over every (layer, head). Fused SDPA kernels need the value width to equal the
    # head dim (otherwise PyTorch falls back to the math path, which forms N x N per head): zero-pad C to a multiple
    # of the head dim and run the columns in groups of that width.
    x = maps.reshape(b, c, n).transpose(1, 2).unsqueeze(1).float()
    for _ in range(steps):
        x = _apply_mean_self_attention(x, self_qk, dtype)
    return x.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


def _apply_mean_self_attention(
    x: torch.Tensor, self_qk: list[tuple[torch.Tensor, torch.Tensor, float]], dtype: torch.dtype
) -> torch.Tensor:
    """One application of the averaged self-attention to (B, 1, N, C) values; returns (B, 1, N, C) float32."""
    b, _, n, c = x.shape
    d = self_qk[0][0].shape[-1]
    width = -(-c // d) * d
    v = F.pad(x, (0, width - c)).to(dtype)
    acc = torch.zeros(b, 1, n, width, dtype=torch.float32, device=x.device)
    count = 0
    for q, k, scale in self_qk:
        heads = q.shape[1]
        for start in range(0, width, d):
            chunk = v[..., start : start + d].expand(b, heads, n, d)
            out = F.scaled_dot_product_attention(q, k, chunk, scale=scale)
            acc[..., start : start + d] += out.float().sum(dim=1, keepdim=True)
        count += heads
    return (acc / count)[..., :c]


def mean_self_attention_matrix(self_qk: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """The explicit layer- and head-averaged self-attention matrix, as the released code forms it.

    Only for tests and the reference benchmark: it costs N x N per sample.

    Args:
        self_qk (`list[tuple[torch.Tensor, torch.Tensor, float]]`): per layer, (B, heads, N, d) queries and keys
            and the softmax scale.

    Returns:
        `torch.Tensor`: (B, N, N) float32; rows are query pixels and each row sums to 1.
    """
    total = None
    count = 0
    for q, k, scale in self_qk:
        probs = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale, dim=-1)
        s = probs.sum(dim=1)
        total = s if total is None else total + s
        count += q.shape[1]
    return total / count


def upsample_scores(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample maps to the image size and min-max normalise each (paper step 11).

    Args:
        maps (`torch.Tensor`): (C, h, w) or (B, C, h, w) maps.
        size (`tuple[int, int]`): output (H, W).

    Returns:
        `torch.Tensor`: same leading dims, (..., H, W) float32 in [0, 1]; each map reaches 1 at its peak.
    """
    squeeze = maps.ndim == 3
    x = maps.unsqueeze(0) if squeeze else maps
    x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False)
    x = minmax(x)
    return x.squeeze(0) if squeeze else x


def split_where_and_which(where: torch.Tensor, which: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scores whose foreground comes from one set of maps and whose class comes from another (not in the paper).

    ``score_c = max_k where_k * (which_c + eps) / (max_k which_k + eps)``: at each pixel the best class of ``which``
    gets the strongest ``where`` evidence and the others a share of it in proportion to their ``which``. So
    :func:`label_with_background` with threshold tau calls a pixel foreground exactly when ``max_k where_k > tau``
    (as with ``where`` alone) and then picks ``argmax_k which_k``. With one class the result equals ``where``
    (up to ``eps`` where ``which`` is 0).

    Args:
        where (`torch.Tensor`): (..., K, H, W) foreground evidence per class in [0, 1] (the paper's final maps).
        which (`torch.Tensor`): (..., K, H, W) non-negative class evidence (e.g. fused raw cross-attention).
        eps (`float`, *optional*, defaults to 1e-6): keeps pixels where every ``which`` is 0 at ``max where``.

    Returns:
        `torch.Tensor`: (..., K, H, W) float32 in [0, 1].
    """
    if where.shape != which.shape:
        raise ValueError(f"where {tuple(where.shape)} and which {tuple(which.shape)} must have the same shape")
    if where.shape[-3] == 0:
        return where.float()
    fg = where.float().amax(dim=-3, keepdim=True)
    which = which.float().clamp_min(0)
    share = (which + eps) / (which.amax(dim=-3, keepdim=True) + eps)
    return fg * share


def label_with_background(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Label each pixel by argmax over a constant background score and the class scores (paper step 12).

    Computed as "the best class where its score is above tau (or not a number), else background": the argmax of
    ``[tau, scores...]`` without forming that stack (ties go to the background, then to the first class).

    Args:
        scores (`torch.Tensor`): (K, H, W) class scores in [0, 1] (K may be 0).
        tau (`float`): background score; a pixel is background unless some class scores strictly above it.

    Returns:
        `torch.Tensor`: (H, W) int64 labels, 0 = background, i = class i-1 of ``scores``.
    """
    h, w = scores.shape[-2:]
    if scores.shape[0] == 0:
        return torch.zeros((h, w), dtype=torch.long, device=scores.device)
    best, index = scores.float().max(dim=0)
    foreground = (best > float(tau)) | best.isnan()
    return torch.where(foreground, index + 1, torch.zeros_like(index))
