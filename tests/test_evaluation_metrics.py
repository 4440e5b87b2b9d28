import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from diffsegmenter.evaluation.metrics import ConfusionMatrix, metrics_from_confusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall

# 4 classes: 0 background, 1, 2, and 3 which appears in neither GT nor prediction (must be left out of the mean).
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 255, 255],
        [2, 2, 255, 255],
    ]
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 0],
        [2, 0, 2, 2],  # the last two pixels are under an ignored GT region: they must not count
        [2, 2, 1, 1],
    ]
)


def test_known_answer_with_ignore_region_and_absent_class():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED, GT)
    m = cm.compute()
    # bg: TP 3, GT 4, PRED 5 -> 3/6; class 1: TP 3, GT 4, PRED 4 -> 3/5; class 2: TP 3, GT 4, PRED 3 -> 3/4
    np.testing.assert_allclose(m.iou[:3], [0.5, 0.6, 0.75])
    assert math.isnan(m.iou[3])
    assert m.miou == pytest.approx((0.5 + 0.6 + 0.75) / 3)
    np.testing.assert_allclose(m.acc[:3], [0.75, 0.75, 0.75])
    assert math.isnan(m.acc[3])
    assert m.macc == pytest.approx(0.75)
    assert m.aacc == pytest.approx(9 / 12)
    assert m.gt_area.tolist() == [4, 4, 4, 0]
    assert m.pred_area.tolist() == [5, 4, 3, 0]


def test_class_only_in_prediction_counts_as_zero_iou():
    gt = np.zeros((2, 2), dtype=np.int64)
    pred = np.array([[0, 0], [0, 1]])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, gt)
    m = cm.compute()
    assert m.iou[1] == 0.0  # false positive class: in the mean
    assert math.isnan(m.acc[1])  # but no GT pixel: not in mAcc
    assert m.miou == pytest.approx((0.75 + 0.0) / 2)


def test_dataset_level_accumulation_is_not_a_per_image_mean():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))  # image IoU(1) = 1
    cm.update(np.array([[0]]), np.array([[1]]))  # image IoU(1) = 0
    assert cm.compute().iou[1] == pytest.approx(4 / 5)


def test_unassigned_prediction_is_a_miss():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(np.array([[255, 1]]), np.array([[1, 1]]))
    m = cm.compute()
    assert m.iou[1] == pytest.approx(0.5)
    assert m.aacc == pytest.approx(0.5)


def test_merge_equals_single_accumulator():
    rng = np.random.default_rng(0)
    a, b, both = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    for acc in (a, b):
        p, t = rng.integers(0, 5, (8, 8)), rng.integers(0, 5, (8, 8))
        acc.update(p, t)
        both.update(p, t)
    np.testing.assert_array_equal(a.merge(b).matrix, both.matrix)


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
        (np.full((2, 2), 7), np.zeros((2, 2), int), "prediction holds values"),
        (np.zeros((2, 2), int), np.full((2, 2), 9), "ground truth holds values"),
        (np.zeros((2, 2), float), np.zeros((2, 2), int), "integer"),
    ],
)
def test_invalid_inputs_raise(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(num_classes=3).update(pred, gt)


def test_ignore_index_must_not_be_a_class():
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(num_classes=300)


def test_metrics_from_confusion_validates_shape():
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))


def test_to_dict_percent_and_nan_as_none():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PRED, GT)
    d = cm.compute().to_dict(["bg", "a", "b", "c"])
    assert d["per_class_iou"] == {"bg": 50.0, "a": 60.0, "b": 75.0, "c": None}
    assert d["mIoU"] == pytest.approx(61.6667, abs=1e-4)


def test_equals_torchmetrics_on_random_data():
    num_classes = 7
    rng = np.random.default_rng(1234)
    ours = ConfusionMatrix(num_classes)
    jaccard = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="macro")
    jaccard_none = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="none")
    accuracy = MulticlassAccuracy(num_classes=num_classes, ignore_index=255, average="micro")
    for size in [(5, 7), (16, 9), (3, 3)]:
        # class 6 never occurs, class 5 only in GT (never predicted): both edge cases of the macro reduction
        gt = rng.integers(0, 6, size)
        pred = rng.integers(0, 5, size)
        gt[rng.random(size) < 0.2] = 255
        ours.update(pred, gt)
        for metric in (jaccard, jaccard_none, accuracy):
            metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    m = ours.compute()
    assert m.miou == pytest.approx(jaccard.compute().item(), abs=1e-6)
    present = ~np.isnan(m.iou)
    np.testing.assert_allclose(m.iou[present], jaccard_none.compute().numpy()[present], atol=1e-6)
    assert m.aacc == pytest.approx(accuracy.compute().item(), abs=1e-6)
