"""The diffusion-only category filter on tiny random components."""

from __future__ import annotations

import json

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


def test_a_kept_best_guess_is_said_up_to_the_sidecar(tiny_segmenter, tmp_path):
    # the filter keeps the best class when none reaches its threshold (demo --classes circle on a scene without a
    # circle printed "circle"), and nothing in the result or its files told a guess from a finding
    from diffsegmenter.io.results import write_result

    vocab = ["cat", "sofa", "plant"]
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    flt.threshold = 1e9
    decision = flt.select(_image(), vocab)
    assert decision.best_guess and len(decision.kept) == 1
    res = tiny_segmenter.segment(_image(), classes=vocab, filter=flt)
    assert res.filter_best_guess and res.classes == decision.kept
    write_result(tmp_path, "a", _image(), res, ["png"])
    assert json.loads((tmp_path / "a.json").read_text())["filter_best_guess"] is True
    flt.threshold = -1e9
    assert not flt.select(_image(), vocab).best_guess
    res = tiny_segmenter.segment(_image(), classes=vocab, filter=flt)
    assert not res.filter_best_guess and res.classes == vocab
    assert not tiny_segmenter.segment(_image(), classes=vocab).filter_best_guess  # no filter


def test_segment_with_diffusion_filter_keeps_subset(tiny_segmenter):
    res = tiny_segmenter.segment(_image(), classes=["cat", "sofa", "plant"], filter="diffusion")
    assert set(res.classes) <= {"cat", "sofa", "plant"} and res.classes
    assert set(res.candidates) == {"cat", "sofa", "plant"}
    assert res.scores.shape[0] == len(res.classes)


def test_bad_settings_raise(tiny_segmenter):
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionFilter(tiny_segmenter, timesteps=(0,))
    # a NaN threshold kept only the top class, silently; batch_size 0 failed at the first image
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        DiffusionFilter(tiny_segmenter, threshold=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        DiffusionFilter(tiny_segmenter, batch_size=0)
    with pytest.raises(ValueError, match="vocabulary"):
        DiffusionFilter(tiny_segmenter).scores(_image(), [])


def test_images_are_read_as_the_segmenter_reads_them(tiny_segmenter, tmp_path):
    # a float image in [0, 1] was divided by 255 again (read as black); a grey array or a path failed in torch
    from PIL import Image

    flt = DiffusionFilter(tiny_segmenter, timesteps=(300,), noise_draws=1)
    vocab = ["cat", "sofa"]
    expected = flt.scores(_image(), vocab)
    assert flt.scores(_image().astype(np.float32) / 255, vocab) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    Image.fromarray(_image()).save(tmp_path / "x.png")
    assert flt.scores(tmp_path / "x.png", vocab) == expected
    grey = _image()[..., 0]
    assert flt.scores(grey, vocab) == flt.scores(np.repeat(grey[..., None], 3, axis=2), vocab)


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


@pytest.mark.parametrize(("kept", "error"), [(["Sofa"], None), (["dog"], "not in the vocabulary"), ("cat", "list")])
def test_a_user_filters_kept_names_are_read_as_class_lists_read_names(tiny_segmenter, kept, error):
    # "Sofa" (a class list would match "sofa"), a name outside the vocabulary, or the string "cat" (the set
    # {'c', 'a', 't'}) each left the image with no class, an all-background map and no word
    from diffsegmenter.filters import FilterDecision, select_classes

    class Mine:
        def select(self, image, vocabulary):
            return FilterDecision(kept, {c.title(): 1.0 for c in vocabulary})  # scores named "Cat": cat's, not 0.0

    if error is None:
        decision = select_classes(Mine(), _image(), ["cat", "sofa"])
        assert decision.kept == ["sofa"] and decision.scores == {"cat": 1.0, "sofa": 1.0}
        assert tiny_segmenter.segment(_image(), classes=["cat", "sofa"], filter=Mine()).classes == ["sofa"]
    else:
        with pytest.raises((TypeError, ValueError), match=error):
            tiny_segmenter.segment(_image(), classes=["cat", "sofa"], filter=Mine())


# ---------------------------------------------------------------------------------------- "regions" scoring (issue 17)
def test_connected_regions_are_4_connected_largest_first():
    import torch

    from diffsegmenter.filters.diffusion import connected_regions

    m = torch.zeros(8, 8, dtype=torch.bool)
    m[0:3, 0:3] = True  # 9 pixels
    m[5:7, 5:8] = True  # 6 pixels
    m[3, 3] = True  # touches the first blob only at a corner: its own region under 4-connectivity
    regions = connected_regions(m)
    assert [int(r.sum()) for r in regions] == [9, 6, 1]
    assert bool(regions[0][1, 1]) and bool(regions[1][6, 7]) and bool(regions[2][3, 3])
    assert torch.equal(sum(r.int() for r in regions).bool(), m)  # a partition of the mask
    assert [int(r.sum()) for r in connected_regions(m, min_pixels=2)] == [9, 6]
    snake = torch.zeros(5, 5, dtype=torch.bool)
    snake[0, :] = snake[:, 4] = snake[4, :] = True  # one region however long the path
    assert len(connected_regions(snake)) == 1


def test_region_margins_give_each_region_its_own_vote():
    import torch

    from diffsegmenter.filters.diffusion import region_margins

    red = torch.zeros(3, 4, 4)
    red[0, :, :2] = 1.0  # class 0 helps on the left half
    red[1, :, 2:] = 0.5  # class 1 on the right half
    red[2] = 0.2  # class 2 a little everywhere
    fg = torch.zeros(8, 8, dtype=torch.bool)
    fg[1:7, 0:2] = True  # a left object
    fg[1:7, 6:8] = True  # a right object
    m = region_margins(red, fg, min_region=0.0)
    assert m[0] > 0 and m[1] > 0 and m[2] < 0  # both objects' classes win, the everywhere class does not
    # merged into one region, the objects cast one vote: only the stronger class wins
    fg[1:7, :] = True
    merged = region_margins(red, fg, min_region=0.0)
    assert (merged > 0).sum() == 1 and merged[0] > 0
    # regions below min_region do not vote; with none left the whole image is one region
    small = torch.zeros(8, 8, dtype=torch.bool)
    small[0, 7] = True
    whole = region_margins(red, small, min_region=0.5)
    assert torch.allclose(whole, region_margins(red, torch.ones(8, 8, dtype=torch.bool), min_region=0.0))


def test_regions_scoring_is_the_margins_of_its_error_maps(tiny_segmenter):
    import torch

    from diffsegmenter.filters.diffusion import reductions_from_errors, region_margins

    vocab = ["cat", "sofa", "plant"]
    flt = DiffusionFilter(tiny_segmenter, timesteps=(300, 700), noise_draws=2, scoring="regions", min_region=0.01)
    err = flt.error_maps(_image(), vocab, (300, 500, 700), 2)
    assert err.shape == (3, 2, 4, 16, 16) and torch.all(err >= 0)
    # each (timestep, draw) has its own noise: a subset of timesteps sees what the full set saw
    assert torch.equal(flt.error_maps(_image(), vocab, (700,), 1)[0, 0], err[2, 0])
    assert not torch.equal(err[2, 0], err[2, 1])
    scores = flt.scores(_image(), vocab)
    expected = region_margins(reductions_from_errors(err[[0, 2]]), flt.foreground(_image(), vocab), 0.01)
    assert list(scores) == vocab and np.allclose(list(scores.values()), expected.numpy(), atol=1e-6)
    decision = flt.select(_image(), vocab)
    assert decision.kept == flt.predict(_image(), vocab, scores=scores) and decision.kept
    flt.threshold = 0.0  # every region's winner is kept (the best class when no region is won outright)
    winners = [c for c in vocab if scores[c] >= 0] or [max(vocab, key=scores.get)]
    assert flt.predict(_image(), vocab, scores=scores) == winners


def test_regions_scoring_is_read_from_the_model_folder_and_checked(tiny_segmenter):
    tiny_segmenter.model_settings = {"_diffusion_filter": {"scoring": "regions", "min_region": 0.02}}
    flt = DiffusionFilter(tiny_segmenter)
    assert flt.scoring == "regions" and flt.min_region == 0.02
    assert DiffusionFilter(tiny_segmenter, scoring="quantile").scoring == "quantile"  # an argument wins
    with pytest.raises(ValueError, match="scoring"):
        DiffusionFilter(tiny_segmenter, scoring="per-pixel")
    with pytest.raises(ValueError, match="min_region"):
        DiffusionFilter(tiny_segmenter, min_region=1.5)


def _zero_denoiser_errors(seg, timestep=300, scheduler=None):
    """The filter's error maps with a denoiser that predicts 0 everywhere: the mean square of its target, so the
    target the filter measures against shows (the same for every prompt), with the z0 and noise it used. Runs on
    shallow copies of the segmenter and its backbone (the shared fixtures stay untouched), optionally with another
    scheduler."""
    import copy

    import torch

    from diffsegmenter.filters.diffusion import _draw_seed

    seg = copy.copy(seg)
    seg.backbone = copy.copy(seg.backbone)
    seg.backbone.denoise = lambda latents, t, text: torch.zeros_like(latents)
    if scheduler is not None:
        seg.backbone.scheduler = scheduler
    flt = DiffusionFilter(seg, timesteps=(timestep,), noise_draws=1, resolution=32)
    err = flt.error_maps(_image(), ["cat"], (timestep,), 1)[0, 0]  # (K + 1, h, w)
    z0 = seg.encode_latents([_image()], seg.config.seed, 32)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(_draw_seed(seg.config.seed, timestep, 0)))
    assert torch.equal(err[0], err[1])  # a constant prediction: the prompt cannot matter
    return err[0], z0[0], eps[0]


def test_epsilon_models_are_scored_against_the_noise(tiny_segmenter):
    err, z0, eps = _zero_denoiser_errors(tiny_segmenter)
    assert tiny_segmenter.backbone.scheduler.config.prediction_type == "epsilon"
    torch_close(err, (eps**2).mean(0))


def test_v_prediction_models_are_scored_against_v(tiny_segmenter):
    """SD2 at 768² predicts v = sqrt(abar) eps - sqrt(1 - abar) z0; measured against eps its error would be wrong."""
    from diffusers import DDIMScheduler

    v_sched = DDIMScheduler.from_config(tiny_segmenter.backbone.scheduler.config, prediction_type="v_prediction")
    err, z0, eps = _zero_denoiser_errors(tiny_segmenter, scheduler=v_sched)
    abar = v_sched.alphas_cumprod[300]
    torch_close(err, ((abar**0.5 * eps - (1 - abar) ** 0.5 * z0) ** 2).mean(0))


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_models_are_scored_against_the_velocity(segmenters, name):
    """SD3 and FLUX predict the velocity eps - z0."""
    err, z0, eps = _zero_denoiser_errors(segmenters[name])
    torch_close(err, ((eps - z0) ** 2).mean(0))


def test_prediction_targets_recover_what_was_noised():
    """Each target is what its denoiser must predict: from the noisy latents and the exact target, the clean latents
    and the noise come back (epsilon, v, sample); an unknown prediction type is refused."""
    import torch
    from diffusers import DDIMScheduler

    from diffsegmenter.backbones.sd import VPSchedule, vp_add_noise, vp_target

    gen = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = 400
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind)
        ac = VPSchedule().on(sched, z0.device, z0.dtype)
        zt = vp_add_noise(ac, z0, eps, t)
        target = vp_target(sched.config, ac, z0, eps, t)
        a, s = ac[t] ** 0.5, (1 - ac[t]) ** 0.5
        if kind == "epsilon":
            torch_close(target, eps)
        elif kind == "sample":
            torch_close(target, z0)
        else:  # v: eps = s z_t + a v and z0 = a z_t - s v
            torch_close(s * zt + a * target, eps)
            torch_close(a * zt - s * target, z0)
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        vp_target({"prediction_type": "flow"}, ac, z0, eps, t)


def torch_close(a, b):
    import torch

    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_per_call_seed_reaches_the_filter_as_config_seed_does():
    # segment(seed=123) seeded the segmentation but the filter still drew config.seed's noise
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.cli import example_images

    seg = DiffSegmenter.from_pretrained("shapes", flip=False, resolution=64)
    vocabulary = ["circle", "square", "triangle", "cross"]
    with example_images() as scenes:
        by_call = seg.segment(scenes[0], vocabulary, filter="diffusion", seed=123)
        assert seg.config.seed == 0  # the call's seed does not stay
        seg.config = seg.config.replace(seed=123)
        by_config = seg.segment(scenes[0], vocabulary, filter="diffusion")
        seg.config = seg.config.replace(seed=0)
        plain = seg.segment(scenes[0], vocabulary, filter="diffusion")
    assert by_call.candidates == by_config.candidates != plain.candidates
    assert np.array_equal(by_call.labels, by_config.labels)


def test_per_call_seed_and_tau_follow_the_configs_rules():
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.cli import example_images

    seg = DiffSegmenter.from_pretrained("shapes", flip=False, resolution=64)
    with example_images() as scenes:
        for bad in (-1, 2**64):  # -1 was accepted; 2**64 gave torch's "Overflow when unpacking long long"
            with pytest.raises(ValueError, match="seed must be"):
                seg.segment(scenes[0], ["circle"], seed=bad)
        a = seg.segment(scenes[0], ["circle"], seed=np.int64(5), tau=np.float32(0.25))  # NumPy scalars: fine
        b = seg.segment(scenes[0], ["circle"], seed=5, tau=0.25)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.relabel(np.float32(0.5)), b.relabel(0.5))


def test_a_user_filter_may_give_any_iterable_of_names():
    # a NumPy array or a generator of names worked before kept names were checked, and must still
    from diffsegmenter.filters import select_classes

    for kept in (np.array(["sofa"]), (n for n in ["sofa"]), {"sofa"}):

        class Legacy:
            def scores(self, image, vocabulary):
                return {"cat": 0.1, "sofa": 0.9, "background": 0.5}  # a key of its own: left out

            def predict(self, image, vocabulary, kept=kept):
                return kept

        decision = select_classes(Legacy(), _image(), ["cat", "sofa"])
        assert decision.kept == ["sofa"] and decision.scores == {"cat": 0.1, "sofa": 0.9}
