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


def test_select_runs_the_model_once_per_image(tiny_segmenter, monkeypatch):
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    calls = []
    original = flt.reduction_maps
    monkeypatch.setattr(flt, "reduction_maps", lambda image, vocab: calls.append(1) or original(image, vocab))
    vocab = ["cat", "sofa"]
    decision = flt.select(_image(), vocab)  # kept classes and scores from one run
    assert len(calls) == 1
    assert decision.scores == flt.scores(_image(), vocab) and decision.kept == flt.predict(_image(), vocab)
    flt.select(_image(seed=1), vocab)  # another image is computed afresh (nothing of the last one is remembered)
    assert len(calls) == 4  # select, scores, predict, then select on the other image


def test_scores_follow_the_segmenter_settings(tiny_segmenter):
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


def test_built_in_filters_come_from_one_factory_and_any_object_can_decide(tiny_segmenter):
    from diffsegmenter.filters import FilterDecision, build_filter, select_classes

    flt = build_filter("diffusion", tiny_segmenter, timesteps=(300,), noise_draws=1)
    assert isinstance(flt, DiffusionFilter) and flt.timesteps == (300,)
    with pytest.raises(ValueError, match="unknown filter 'nope'"):
        build_filter("nope", tiny_segmenter)

    class Legacy:  # a user filter with only scores() and predict()
        def scores(self, image, vocabulary):
            return {c: float(i) for i, c in enumerate(vocabulary)}

        def predict(self, image, vocabulary):
            return vocabulary[1:]

    assert select_classes(Legacy(), _image(), ["cat", "sofa"]) == FilterDecision(["sofa"], {"cat": 0.0, "sofa": 1.0})
    with pytest.raises(TypeError, match="select"):
        select_classes(object(), _image(), ["cat"])
    res = tiny_segmenter.segment(_image(), classes=["cat", "sofa"], filter=Legacy())
    assert res.classes == ["sofa"] and res.candidates == {"cat": 0.0, "sofa": 1.0}
