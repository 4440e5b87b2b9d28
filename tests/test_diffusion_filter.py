"""The diffusion-only category filter on tiny random components."""

from __future__ import annotations

import numpy as np
import pytest

from diffsegmenter.filters.diffusion import DiffusionFilter


def _image(seed=0):
    return (np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8)


def test_scores_predict_and_threshold(tiny_segmenter):
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    vocab = ["cat", "sofa", "plant"]
    scores = flt.scores(_image(), vocab)
    assert list(scores) == vocab and all(np.isfinite(v) for v in scores.values())
    assert flt.scores(_image(), vocab) == scores  # deterministic given the segmenter's seed
    flt.threshold = -1e9
    assert flt.predict(_image(), vocab) == vocab
    flt.threshold = 1e9  # nothing reaches it: the best class is kept
    assert flt.predict(_image(), vocab, scores=scores) == [max(vocab, key=scores.get)]


def test_reduction_maps_shape_and_class_dependence(tiny_segmenter):
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    maps = flt.reduction_maps(_image(), ["cat"])
    assert maps.shape == (1, 16, 16)
    # the latent-resolution map depends on which class is named
    other = flt.reduction_maps(_image(), ["sofa"])
    assert not np.allclose(maps.numpy(), other.numpy())


def test_segment_with_diffusion_filter_keeps_subset(tiny_segmenter):
    res = tiny_segmenter.segment(_image(), classes=["cat", "sofa", "plant"], filter="diffusion")
    assert set(res.classes) <= {"cat", "sofa", "plant"} and res.classes
    assert set(res.candidates) == {"cat", "sofa", "plant"}
    assert res.scores.shape[0] == len(res.classes)


def test_bad_settings_raise(tiny_segmenter):
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionFilter(tiny_segmenter, timesteps=(0,))
    with pytest.raises(ValueError, match="vocabulary"):
        DiffusionFilter(tiny_segmenter).scores(_image(), [])


def test_scores_then_predict_run_the_model_once(tiny_segmenter, monkeypatch):
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    calls = []
    original = flt.reduction_maps
    monkeypatch.setattr(flt, "reduction_maps", lambda image, vocab: calls.append(1) or original(image, vocab))
    vocab = ["cat", "sofa"]
    flt.scores(_image(), vocab)
    flt.predict(_image(), vocab)
    assert len(calls) == 1
    flt.scores(_image(seed=1), vocab)  # another image is computed afresh
    assert len(calls) == 2


def test_remembered_scores_follow_the_segmenter_settings(tiny_segmenter):
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    vocab = ["cat", "sofa"]
    before = flt.scores(_image(), vocab)
    config = tiny_segmenter.config
    try:
        tiny_segmenter.config = config.replace(emphasis=3.0)  # changes the class-token embeddings
        assert flt.scores(_image(), vocab) != before
    finally:
        tiny_segmenter.config = config
    assert flt.scores(_image(), vocab) == before


def test_filter_runs_at_its_own_resolution(tiny_segmenter):
    native = tiny_segmenter.native_resolution
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    assert flt.resolution is None and flt.reduction_maps(_image(), ["cat"]).shape == (1, 16, 16)
    # a segmenter whose where pass runs larger does not move a filter pinned to the size its thresholds hold at
    tiny_segmenter.config = tiny_segmenter.config.replace(resolution=2 * native)
    assert flt.reduction_maps(_image(), ["cat"]).shape == (1, 32, 32)
    pinned = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1, resolution=native)
    assert pinned.reduction_maps(_image(), ["cat"]).shape == (1, 16, 16)
    # the model folder's recommendation is read like the other filter settings
    tiny_segmenter.model_settings = {"_diffusion_filter": {"resolution": native}}
    assert DiffusionFilter(tiny_segmenter).resolution == native
    with pytest.raises(ValueError, match="resolution"):
        DiffusionFilter(tiny_segmenter, resolution=0)
