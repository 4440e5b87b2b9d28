"""PAMR (``refinement.py``, ``SegmenterConfig.refine``): the formula, its properties, and its place in ``segment``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffsegmenter import SegmenterConfig
from diffsegmenter.refinement import Refiner, neighbour_offsets, pamr, pamr_weights


def _naive_weights(image: np.ndarray, dilations: tuple[int, ...], temperature: float) -> np.ndarray:
    """Per pixel, per neighbour, written out with loops and clamped indices (the replicated edge)."""
    c, h, w = image.shape
    offsets = neighbour_offsets(dilations)
    out = np.zeros((len(offsets), h, w))
    for y in range(h):
        for x in range(w):
            at = [(min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)) for dy, dx in offsets]
            window = np.stack([image[:, y, x]] + [image[:, yy, xx] for yy, xx in at], 1)  # C, 1 + P
            spread = window.std(1, ddof=1)
            k = np.array(
                [-(np.abs(image[:, yy, xx] - image[:, y, x]) / (temperature * spread + 1e-8)).mean() for yy, xx in at]
            )
            e = np.exp(k - k.max())
            out[:, y, x] = e / e.sum()
    return out


def test_weights_follow_the_formula_with_replicated_edges():
    image = np.random.RandomState(0).rand(3, 6, 7).astype(np.float32)
    got = pamr_weights(torch.from_numpy(image), (1, 2), 0.1).numpy()
    assert got.shape == (16, 6, 7)
    assert np.allclose(got, _naive_weights(image, (1, 2), 0.1), atol=1e-5)
    assert np.allclose(got.sum(0), 1.0, atol=1e-6)


def test_one_round_is_the_weighted_mean_of_the_neighbours():
    rng = np.random.RandomState(1)
    image, scores = rng.rand(3, 6, 7).astype(np.float32), rng.rand(2, 6, 7).astype(np.float32)
    weights = _naive_weights(image, (1, 3), 0.1)
    expected = np.zeros_like(scores)
    for p, (dy, dx) in enumerate(neighbour_offsets((1, 3))):
        for y in range(6):
            for x in range(7):
                expected[:, y, x] += weights[p, y, x] * scores[:, min(max(y + dy, 0), 5), min(max(x + dx, 0), 6)]
    got = pamr(torch.from_numpy(image), torch.from_numpy(scores), iterations=1, dilations=(1, 3)).numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_refinement_pulls_a_leaking_map_back_to_the_colour_edge():
    # left half red, right half blue; the class's map is 1 on the left and leaks into the right in a 8-px ramp
    image = torch.zeros(3, 32, 32)
    image[0, :, :16] = 1.0
    image[2, :, 16:] = 1.0
    image += 0.02 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))  # a little texture
    ramp = torch.clamp(1 - (torch.arange(32.0) - 15) / 8, 0, 1).expand(32, 32)
    truth = (torch.arange(32) < 16).float().expand(32, 32)
    before = (ramp - truth).abs().mean()
    refined = pamr(image, ramp[None].clone())[0]
    blind = pamr(torch.ones(3, 32, 32), ramp[None].clone())[0]  # no colour edge to stop at
    assert (refined - truth).abs().mean() < 0.5 * before
    assert (blind - truth).abs().mean() > 0.9 * before
    assert refined.min() >= ramp.min() - 1e-6 and refined.max() <= ramp.max() + 1e-6  # convex combinations


def test_weights_ignore_a_per_channel_scale_and_offset_of_the_image():
    image = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(2))
    scaled = image * torch.tensor([2.0, 0.5, 3.0])[:, None, None] + torch.tensor([0.1, -0.3, 5.0])[:, None, None]
    assert torch.allclose(pamr_weights(image), pamr_weights(scaled), atol=1e-4)


def test_zero_rounds_no_classes_and_size_mismatch():
    image, scores = torch.rand(3, 8, 8), torch.rand(2, 8, 8)
    assert pamr(image, scores, iterations=0) is scores
    assert pamr(image, torch.zeros(0, 8, 8)).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="same H x W"):
        pamr(image, torch.rand(2, 8, 9))


def test_refiner_runs_at_its_working_size_and_returns_the_image_size():
    refiner = Refiner(iterations=3, dilations=(1, 2), max_side=16)
    assert refiner.working_size((24, 40)) == (10, 16)
    assert refiner.working_size((12, 9)) == (12, 9)  # no larger than max_side: its own size
    image = (np.random.RandomState(3).rand(24, 40, 3) * 255).astype(np.uint8)
    scores = torch.rand(2, 10, 16, generator=torch.Generator().manual_seed(3))
    out = refiner(image, scores, (24, 40))
    rgb = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(10, 16), mode="bilinear", antialias=True
    )[0]
    small = pamr(rgb, scores, iterations=3, dilations=(1, 2))
    expected = F.interpolate(small[None], size=(24, 40), mode="bilinear", align_corners=False)[0]
    assert out.shape == (2, 24, 40) and torch.allclose(out, expected, atol=1e-6)
    assert refiner(image, torch.zeros(0, 10, 16), (24, 40)).shape == (0, 24, 40)


@pytest.mark.parametrize("flip", [False, True])
def test_segment_refines_its_final_scores(tiny_segmenter, flip):
    image = (np.random.RandomState(4).rand(24, 40, 3) * 255).astype(np.uint8)
    tiny_segmenter.config = tiny_segmenter.config.replace(flip=flip)
    plain = tiny_segmenter.segment(image, classes=["cat", "sofa"], seed=1)
    tiny_segmenter.config = tiny_segmenter.config.replace(
        refine="pamr", refine_iterations=4, refine_dilations=[1, 2, 4]
    )
    refined = tiny_segmenter.segment(image, classes=["cat", "sofa"], seed=1)
    rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = pamr(rgb, torch.from_numpy(plain.scores), iterations=4, dilations=(1, 2, 4)).numpy()
    assert np.allclose(refined.scores, expected, atol=1e-5)
    assert not np.allclose(refined.scores, plain.scores, atol=1e-3)
    assert np.array_equal(refined.labels, refined.relabel(refined.tau))
    # a larger image than refine_max_side: refined at the working size, returned at the image's size
    tiny_segmenter.config = tiny_segmenter.config.replace(refine_max_side=16)
    small = tiny_segmenter.segment(image, classes=["cat", "sofa"], seed=1)
    assert small.scores.shape == (2, 24, 40) and small.scores.min() >= 0 and small.scores.max() <= 1
    assert np.array_equal(small.labels, small.relabel(small.tau))
    # per call (the app's switch): refine="none" on a refining config is the plain call, refine="pamr" on a plain
    # config the refining one; the rounds, dilations and working size stay the config's
    tiny_segmenter.config = tiny_segmenter.config.replace(refine_max_side=512)
    assert np.array_equal(
        tiny_segmenter.segment(image, classes=["cat", "sofa"], seed=1, refine="none").scores, plain.scores
    )
    tiny_segmenter.config = tiny_segmenter.config.replace(refine="none")
    per_call = tiny_segmenter.segment(image, classes=["cat", "sofa"], seed=1, refine="pamr")
    assert np.array_equal(per_call.scores, refined.scores)
    with pytest.raises(ValueError, match="refine must be one of 'none', 'pamr'"):
        tiny_segmenter.segment(image, classes=["cat"], refine="crf")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"refine": "crf"}, "refine must be one of 'none', 'pamr'"),
        ({"refine_iterations": -1}, "refine_iterations must be an integer in 0..100"),
        ({"refine_dilations": [0, 2]}, "refine_dilations must be a non-empty list"),
        ({"refine_dilations": []}, "refine_dilations must be a non-empty list"),
        ({"refine_max_side": 4}, "refine_max_side must be an integer in 16..8192"),
    ],
)
def test_bad_refine_settings_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        SegmenterConfig(**change)


def test_refine_is_off_by_default_and_round_trips():
    cfg = SegmenterConfig()
    assert cfg.refine == "none"
    cfg = cfg.replace(refine="pamr", refine_dilations=(1, 2))
    assert cfg.refine_dilations == [1, 2] and SegmenterConfig(**cfg.to_dict()) == cfg
