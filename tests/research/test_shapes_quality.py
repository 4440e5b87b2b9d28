"""Known-answer tests of the shapes-world quality numbers (``shapes.quality``)."""

from __future__ import annotations

import numpy as np
import pytest

from research.shapes.quality import class_accuracy_given_foreground, scenes_of, score_predictions
from research.shapes.world import CLASS_NAMES


@pytest.fixture(scope="module")
def scenes():
    return scenes_of("val", 6)


def _one_hot_scores(scene, wrong: bool = False) -> np.ndarray:
    """(K, 64, 64) scores that peak on each given class's true pixels (on another class's when ``wrong``)."""
    ids = [CLASS_NAMES.index(c) for c in scene.classes]
    scores = np.zeros((len(ids), *scene.labels.shape), dtype=np.float32)
    for k, cid in enumerate(ids):
        target = ids[(k + 1) % len(ids)] if wrong else cid
        scores[k][scene.labels == target] = 1.0
    return scores


def test_perfect_predictions_score_one(scenes):
    m = score_predictions(scenes, [s.labels for s in scenes], [(s.classes, _one_hot_scores(s)) for s in scenes])
    assert m["mIoU"] == pytest.approx(1.0) and m["fg_iou"] == pytest.approx(1.0)
    assert m["class_acc_fg"] == pytest.approx(1.0) and m["class_acc_given_fg"] == pytest.approx(1.0)
    assert 0.0 < m["chance_class_acc"] <= 1.0


def test_class_decision_is_scored_apart_from_the_background_decision(scenes):
    all_background = [np.zeros_like(s.labels) for s in scenes]
    right = [(s.classes, _one_hot_scores(s)) for s in scenes]
    m = score_predictions(scenes, all_background, right)
    assert m["class_acc_fg"] == 0.0 and m["fg_iou"] == 0.0  # strict: foreground labelled background is wrong
    assert m["class_acc_given_fg"] == pytest.approx(1.0)  # but the class scores pick the right class everywhere
    assert "class_acc_given_fg" not in score_predictions(scenes, all_background)


def test_swapped_class_scores_are_wrong_on_multi_class_scenes(scenes):
    multi = [s for s in scenes if len(s.classes) > 1]
    assert multi, "the fixture needs a scene with two classes"
    acc = class_accuracy_given_foreground(multi, [(s.classes, _one_hot_scores(s, wrong=True)) for s in multi])
    assert acc == 0.0
    with pytest.raises(ValueError, match="class scores for 1 scenes"):
        class_accuracy_given_foreground([*multi, *multi], [(multi[0].classes, _one_hot_scores(multi[0]))])
