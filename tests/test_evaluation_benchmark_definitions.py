"""The benchmark definitions pinned to mmsegmentation's (1.x ``mmseg/datasets/*.py``, SCLIP/NACLIP
``custom_datasets.py`` for VOC20 / PC60 / PC59 / COCO-Object): class order at a few telling positions, which classes
exist, and how on-disk label values become class ids (``reduce_zero_label``, ignore index 255)."""

import pytest

from diffsegmenter.evaluation.datasets import load_dataset
from tests.test_evaluation_datasets import CASES

# (dataset, class id, mmseg's name at that id). Positions chosen where an off-by-one or a reordered list shows.
SPOT_CHECKS = [
    ("voc21", 0, "background"), ("voc21", 11, "diningtable"), ("voc21", 20, "tvmonitor"),
    ("voc20", 0, "aeroplane"), ("voc20", 19, "tvmonitor"),
    ("pc60", 0, "background"), ("pc60", 1, "aeroplane"), ("pc60", 40, "pottedplant"), ("pc60", 59, "wood"),
    ("pc59", 0, "aeroplane"), ("pc59", 44, "sidewalk"), ("pc59", 58, "wood"),
    ("object", 0, "background"), ("object", 1, "person"), ("object", 80, "toothbrush"),
    ("stuff", 0, "person"), ("stuff", 79, "toothbrush"), ("stuff", 80, "banner"), ("stuff", 170, "wood"),
    ("ade", 0, "wall"), ("ade", 7, "bed"), ("ade", 44, "chest of drawers"), ("ade", 149, "flag"),
    ("city", 0, "road"), ("city", 11, "person"), ("city", 18, "bicycle"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "class_id", "mmseg_name"), SPOT_CHECKS)
def test_class_order_matches_mmseg(tmp_path, name, class_id, mmseg_name):
    builder, values = CASES[name][:2]
    ds = load_dataset(name, builder(tmp_path, values))
    assert ds.classes[class_id] == mmseg_name


def test_coco_object_is_background_plus_the_80_things_of_coco_stuff(tmp_path):
    obj = load_dataset("object", CASES["object"][0](tmp_path / "o", CASES["object"][1]))
    stuff = load_dataset("stuff", CASES["stuff"][0](tmp_path / "s", CASES["stuff"][1]))
    assert obj.classes[1:] == stuff.classes[:80]
    assert len(set(stuff.classes)) == 171


# (dataset, reduce_zero_label in mmseg, number of classes)
LABEL_RULES = [
    ("voc21", False, 21), ("voc20", True, 20), ("pc60", False, 60), ("pc59", True, 59), ("object", False, 81),
    ("stuff", False, 171), ("ade", True, 150), ("city", False, 19),
]  # fmt: skip


@pytest.mark.parametrize(("name", "reduce_zero", "num_classes"), LABEL_RULES)
def test_on_disk_values_map_as_in_mmseg(tmp_path, name, reduce_zero, num_classes):
    builder, values = CASES[name][:2]
    lut = load_dataset(name, builder(tmp_path, values)).label_lut
    # mmseg's reduce_zero_label: 0 -> 255, v -> v - 1, and an on-disk 255 stays 255 (254 is mapped back to 255)
    disk = range(1, num_classes + 1) if reduce_zero else range(num_classes)
    assert [int(lut[v]) for v in disk] == list(range(num_classes))
    assert int(lut[0]) == (255 if reduce_zero else 0)
    assert int(lut[255]) == 255
    assert (lut[max(disk) + 1 : 255] == -1).all()  # anything else is not a label of this benchmark: raises on load


def test_miou_matches_the_per_image_histogram_definition():
    """mmseg's IoUMetric: drop ignored ground truth, histogram intersection / prediction / label areas per image over
    ``0..C-1`` (a prediction outside that range, e.g. 255, lands in no bin), sum over the dataset, IoU = I / U with
    0/0 = NaN, mIoU = nanmean. Classes 5 and 6 never occur; class 6 is predicted once (IoU 0, counted)."""
    import numpy as np
    import torch

    from diffsegmenter.evaluation.metrics import ConfusionMatrix

    c, rng = 7, np.random.default_rng(0)
    cm, areas = ConfusionMatrix(c), np.zeros((3, c))
    for _ in range(4):
        gt = rng.integers(0, 5, (9, 11))
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = rng.integers(0, 5, (9, 11))
        pred[rng.random(pred.shape) < 0.1] = 255
        pred[0, 0] = 6
        cm.update(pred, gt)
        p, g = torch.from_numpy(pred)[torch.from_numpy(gt) != 255], torch.from_numpy(gt)[torch.from_numpy(gt) != 255]
        for i, x in enumerate((p[p == g], p, g)):
            areas[i] += torch.histc(x.float(), bins=c, min=0, max=c - 1).numpy()
    inter, pred_area, label_area = areas
    with np.errstate(invalid="ignore"):
        iou = inter / (pred_area + label_area - inter)
    got = cm.compute()
    np.testing.assert_allclose(got.iou, iou, equal_nan=True)
    assert np.isnan(got.iou[5]) and got.iou[6] == 0.0
    assert got.miou == pytest.approx(np.nanmean(iou))
    assert got.aacc == pytest.approx(inter.sum() / label_area.sum())
