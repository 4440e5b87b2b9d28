"""Tests of the score-map ensemble study (``research.shapes.ensemble``): member names, the mIoU it bootstraps,
the averaged labels and the member cache. No model is loaded: a stub segmenter stands in."""

from __future__ import annotations

import numpy as np
import pytest

from diffsegmenter.config import SegmenterConfig
from diffsegmenter.result import SegmentationResult
from research.shapes.components import package_folder
from research.shapes.ensemble import (
    label_change,
    member_scores,
    miou_of,
    paired_bootstrap,
    parse_member,
    results_of,
    run_member,
    scene_confusions,
)
from research.shapes.ensemble import (
    main as ensemble_main,
)
from research.shapes.quality import scenes_of
from research.shapes.readouts import metrics
from research.shapes.world import CLASS_NAMES


@pytest.fixture(scope="module")
def scenes():
    return scenes_of("val", 6)


def _scores(scene, wrong: bool = False) -> np.ndarray:
    """(K, 64, 64) scores 0.9 on each given class's true pixels (on the next class's when ``wrong``), else 0.1."""
    ids = [CLASS_NAMES.index(c) for c in scene.classes]
    out = np.full((len(ids), *scene.labels.shape), 0.1, dtype=np.float32)
    for k in range(len(ids)):
        out[k][scene.labels == (ids[(k + 1) % len(ids)] if wrong else ids[k])] = 0.9
    return out


def test_member_names_parse_and_bad_ones_are_refused():
    assert parse_member("s0t50") == (0, 50, False, "")
    assert parse_member("s12t200v") == (12, 200, True, "")
    assert parse_member("s0t50h") == (0, 50, False, "h") and parse_member("s1t25vf") == (1, 25, True, "f")
    for bad in ("seed0", "s0t50hf", "s0t50x"):
        with pytest.raises(ValueError, match="expected s"):
            parse_member(bad)


def test_bootstrap_miou_is_the_reported_miou(scenes):
    for wrong in (False, True):
        scores = [_scores(s, wrong) for s in scenes]
        res = results_of(scenes, scores, 0.5)
        conf = scene_confusions(scenes, res, 0.5)
        assert miou_of(conf.sum(0)) == pytest.approx(metrics(scenes, res, 0.5)["mIoU"])
    good = scene_confusions(scenes, results_of(scenes, [_scores(s) for s in scenes], 0.5), 0.5)
    bad = scene_confusions(scenes, results_of(scenes, [_scores(s, True) for s in scenes], 0.5), 0.5)
    same = paired_bootstrap(good, good, draws=50)
    assert same == {"delta": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    better = paired_bootstrap(good, bad, draws=200)
    assert better["delta"] > 0 and better["ci95_low"] <= better["delta"] <= better["ci95_high"]


def test_averaged_maps_follow_the_majority_of_members(scenes):
    multi = [s for s in scenes if len(s.classes) > 1]
    assert multi, "the fixture needs a scene with two classes"
    members = [[_scores(s) for s in multi], [_scores(s) for s in multi], [_scores(s, True) for s in multi]]
    mean = [np.mean([m[i] for m in members], axis=0) for i in range(len(multi))]
    assert metrics(multi, results_of(multi, mean, 0.5), 0.5)["mIoU"] == pytest.approx(1.0)
    assert metrics(multi, results_of(multi, members[2], 0.5), 0.5)["mIoU"] < 0.9
    assert label_change(members[0], mean, 0.5) == 0.0
    moved = np.mean([(s.labels > 0).mean() for s in multi])  # every object pixel changes class
    assert label_change(members[0], members[2], 0.5) == pytest.approx(moved)


class _StubSegmenter:
    """``segment`` returns maps that depend on the seed and timestep; counts the images it was given."""

    def __init__(self) -> None:
        self.config = SegmenterConfig()
        self.images = 0

    def segment(self, images, classes, seed=None):
        self.images += len(images)
        out = []
        for names in classes:
            scores = np.full((len(names), 64, 64), seed / 10 + self.config.timestep / 1000, dtype=np.float32)
            out.append(SegmentationResult(np.zeros((64, 64), np.int32), scores, list(names), [], 0.5))
        return out


def test_member_cache_computes_only_the_new_scenes(scenes, tmp_path):
    seg = _StubSegmenter()
    base = seg.config
    first, per_scene = member_scores(seg, base, "s2t100", scenes[:3], tmp_path)
    assert seg.images == 3 and per_scene >= 0 and seg.config is base
    assert float(first[0].flat[0]) == pytest.approx(0.3)
    again, per_scene = member_scores(seg, base, "s2t100", scenes, tmp_path)
    assert seg.images == 6  # scenes 3..5 only
    assert all(np.array_equal(a, b) for a, b in zip(first, again[:3])) and len(again) == 6
    cached, timing = member_scores(seg, base, "s2t100", scenes[:4], tmp_path)
    assert seg.images == 6 and len(cached) == 4
    assert timing == per_scene  # the cached timing: over the 6 scenes computed
    with pytest.raises(RuntimeError, match="do not match the scenes"):
        member_scores(seg, base, "s2t100", scenes[1:3], tmp_path)  # other scenes, even with equal class counts
    # maps made by another model or other settings were taken as this one's (only the class count was checked)
    with pytest.raises(RuntimeError, match="made by another model or settings"):
        member_scores(seg, base, "s2t100", scenes[:3], tmp_path, model="runs/other-model")
    with pytest.raises(RuntimeError, match="made by another model or settings"):
        member_scores(seg, base.replace(tau=0.3), "s2t100", scenes[:3], tmp_path)
    assert seg.images == 6


def test_main_refuses_an_out_folder_inside_the_package_and_a_bad_member(tmp_path):
    with pytest.raises(ValueError, match="member 'seed0'"):  # also before any model is loaded
        ensemble_main(["--out", str(tmp_path / "run"), "--members", "seed0"])
    out = package_folder() / "models" / "shapes-ensemble"
    with pytest.raises(ValueError, match="--out"):  # raised before any model is loaded
        ensemble_main(["--out", str(out), "--val", "1"])
    assert not out.exists()


class _ImageSegmenter(_StubSegmenter):
    """``segment`` returns each image's red channel (scaled to [0, 1]) as every class's map; records ``flip``."""

    def segment(self, images, classes, seed=None):
        self.flips = getattr(self, "flips", []) + [self.config.flip]
        return [
            SegmentationResult(
                np.zeros(im.shape[:2], np.int32),
                np.repeat(im[None, :, :, 0].astype(np.float32) / 255, len(names), axis=0),
                list(names),
                [],
                0.5,
            )
            for im, names in zip(images, classes)
        ]


def test_mirror_members_map_back_and_flip_members_ask_the_library(scenes):
    seg = _ImageSegmenter()
    base = seg.config.replace(flip=True)  # a model folder that recommends flip: members still run as named
    own = run_member(seg, base, "s0t50", scenes)
    assert seg.flips == [False] and seg.config is base
    mirror = run_member(seg, base, "s0t50h", scenes)
    assert seg.flips == [False, False]
    for scene, a, m in zip(scenes, own, mirror):
        assert not np.array_equal(scene.image[:, ::-1, 0], scene.image[:, :, 0])  # the view differs...
        assert np.array_equal(a.scores, m.scores)  # ...and its maps, mirrored back, are the image's again
    run_member(seg, base, "s0t50f", scenes)
    assert seg.flips == [False, False, True]
