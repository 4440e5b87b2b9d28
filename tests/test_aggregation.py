"""Known-answer tests of the pure maths on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from diffsegmenter.aggregation import (
    complete_with_self_attention,
    fuse_levels,
    label_with_background,
    mean_self_attention_matrix,
    minmax,
    select_token_maps,
    split_where_and_which,
    upsample_scores,
)


def test_minmax_known_answer_and_constant_map():
    x = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = minmax(x)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))
    # rounding-level spread on a large value is "constant" too; a real spread is not
    noise = torch.tensor([[[0.05, 0.05 + 1e-9], [0.05, 0.05]]])
    assert torch.equal(minmax(noise), torch.zeros(1, 2, 2))
    assert minmax(torch.tensor([[[0.05, 0.051], [0.05, 0.05]]])).max() == 1.0


def test_fuse_levels_weights_renormalised_over_present_levels():
    fine = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # factor 1, min-max = itself
    coarse = torch.tensor([[[[2.0]]]])  # factor 2, constant -> zeros after min-max
    fused = fuse_levels({1: fine, 2: coarse}, {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1})
    # weights 0.1 / 0.1 renormalise to 0.5 / 0.5
    assert torch.allclose(fused, 0.5 * fine)


def test_fuse_levels_paper_weights_on_four_levels():
    maps = {f: torch.zeros(1, 1, 16 // f, 16 // f) for f in (1, 2, 4, 8)}
    for f in maps:
        maps[f][..., 0, 0] = 1.0  # a peak in the top-left cell of every level
    fused = fuse_levels(maps, {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1})
    assert fused.shape == (1, 1, 16, 16)
    assert fused[0, 0, 0, 0] == pytest.approx(1.0)  # every level reaches its max at the corner
    assert float(fused.min()) >= 0.0 and float(fused.max()) <= 1.0 + 1e-6
    # a 1x1 level is constant, so it carries no evidence: only the other three levels' weights remain
    one = {1: maps[1], 8: torch.ones(1, 1, 1, 1)}
    assert fuse_levels(one, {8: 0.3, 1: 0.1})[0, 0, 0, 0] == pytest.approx(0.25)


def test_fuse_levels_missing_weight_raises():
    with pytest.raises(ValueError, match="no fusion weight"):
        fuse_levels({16: torch.zeros(1, 1, 2, 2)}, {1: 1.0})


def test_a_bad_class_level_weights_is_named_with_the_levels_captured():
    # `class_level_weights={64: 1.0}` was told to "give one in level_weights"
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.cli import example_images

    seg = DiffSegmenter.from_pretrained("shapes", class_level_weights={64: 1.0}, flip=False)
    with example_images() as scenes, pytest.raises(ValueError) as info:
        seg.segment(scenes[0], ["circle", "square"])
    text = str(info.value)
    assert "give one for each in class_level_weights" in text and "its keys [64] match no captured level" in text


def test_select_token_maps_averages_groups():
    maps = torch.arange(2 * 4 * 1 * 1, dtype=torch.float32).view(2, 4, 1, 1)
    out = select_token_maps(maps, [[[1, 2], [3]], [[0], [1, 3]]])
    assert out.flatten().tolist() == [1.5, 3.0, 4.0, 6.0]


@pytest.mark.parametrize("channels", [1, 3, 11])
def test_completion_without_matrix_equals_explicit_product(channels):
    g = torch.Generator().manual_seed(0)
    b, heads, h, w, d = 2, 3, 4, 5, 8
    n = h * w
    qk = [
        (torch.randn(b, heads, n, d, generator=g), torch.randn(b, heads, n, d, generator=g), d**-0.5) for _ in range(2)
    ]
    maps = torch.rand(b, channels, h, w, generator=g)
    implicit = complete_with_self_attention(maps, qk, steps=1)
    s = mean_self_attention_matrix(qk)  # (B, N, N), rows sum to 1
    assert torch.allclose(s.sum(-1), torch.ones(b, n), atol=1e-5)
    explicit = torch.einsum("bij,bcj->bci", s, maps.reshape(b, channels, n)).reshape(b, channels, h, w)
    assert torch.allclose(implicit, explicit, atol=1e-5)
    two = complete_with_self_attention(maps, qk, steps=2)
    explicit2 = torch.einsum("bij,bcj->bci", s, explicit.reshape(b, channels, n)).reshape(b, channels, h, w)
    assert torch.allclose(two, explicit2, atol=1e-5)


def test_completion_zero_steps_is_identity():
    maps = torch.rand(1, 2, 3, 3)
    assert torch.equal(complete_with_self_attention(maps, [], steps=0), maps)


def test_upsample_scores_minmax_each_map():
    maps = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    up = upsample_scores(maps, (5, 7))
    assert up.shape == (1, 5, 7)
    assert float(up.min()) == pytest.approx(0.0) and float(up.max()) == pytest.approx(1.0)


def test_label_with_background_known_answer():
    scores = torch.tensor([[[0.9, 0.1, 0.5]], [[0.2, 0.3, 0.6]]])  # (K=2, H=1, W=3)
    labels = label_with_background(scores, tau=0.4)
    assert labels.tolist() == [[1, 0, 2]]
    assert label_with_background(scores, tau=0.95).tolist() == [[0, 0, 0]]
    assert label_with_background(torch.zeros(0, 2, 2), tau=0.4).tolist() == [[0, 0], [0, 0]]


def test_split_where_and_which_known_answer():
    where = torch.tensor([[[0.9, 0.3, 0.7]], [[0.2, 0.1, 0.8]]])  # (K=2, H=1, W=3): fg at pixels 0 and 2 for tau 0.5
    which = torch.tensor([[[0.1, 0.9, 0.6]], [[0.4, 0.2, 0.3]]])  # class 2 wins pixel 0, class 1 pixels 1 and 2
    scores = split_where_and_which(where, which, eps=0.0)
    expected = torch.tensor([[[0.9 * 0.25, 0.3, 0.8]], [[0.9, 0.3 * 0.2 / 0.9, 0.8 * 0.5]]])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert label_with_background(scores, tau=0.5).tolist() == [[2, 0, 1]]
    # one class: the where map itself; no class evidence anywhere: every class gets the where maximum
    assert torch.allclose(split_where_and_which(where[:1], which[:1]), where[:1], atol=1e-5)
    assert torch.allclose(
        split_where_and_which(where, torch.zeros_like(which)), where.amax(0, keepdim=True).expand(2, 1, 3)
    )
    with pytest.raises(ValueError, match="same shape"):
        split_where_and_which(where, which[:1])


def _select_loop(maps, token_groups):
    """The definition: each class's token maps averaged on their own."""
    return torch.stack(
        [torch.stack([maps[b, idx].mean(dim=0) for idx in groups]) for b, groups in enumerate(token_groups)]
    )


@pytest.mark.parametrize(
    "groups",
    [
        [[[1], [4], [6]], [[2], [5], [0]]],  # one token per class (the released rule)
        [[[1, 2], [4, 5]], [[3, 4], [6, 7]]],  # two per class (the -ing heuristic)
        [[[1, 2], [4], [6, 7, 8]], [[0], [2, 3, 4], [5, 6]]],  # ragged sizes
    ],
)
def test_batched_token_selection_equals_the_per_group_mean_bit_for_bit(groups):
    maps = torch.rand(2, 9, 5, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(select_token_maps(maps, groups), _select_loop(maps, groups))


def test_label_with_background_is_the_argmax_over_tau_and_the_classes():
    """Ties go to the background, then to the first class; a NaN score wins its pixel (as torch.argmax does)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.round(torch.rand(4, 30, 40, generator=g) * 10) / 10  # many exact ties, with tau and each other
    scores[0, :5, :3] = float("nan")
    scores[2, :5, 1:6] = float("nan")
    for tau in (0.4, 0.0, 1.0, -1.0):
        bg = torch.full((1, 30, 40), tau)
        expected = torch.cat([bg, scores]).argmax(dim=0)
        assert torch.equal(label_with_background(scores, tau), expected)
