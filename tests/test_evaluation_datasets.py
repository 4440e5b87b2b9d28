from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsegmenter.evaluation.datasets import (
    DATASET_NAMES,
    DatasetFilesMissingError,
    load_dataset,
)
from diffsegmenter.io.palette import VOC_PALETTE


def _image(path: Path, size=(6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _label(path: Path, values: list[int], mode: str = "L", size=(6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    for i, v in enumerate(values):
        arr[i % size[1], i // size[1]] = v
    img = Image.fromarray(arr)
    if mode == "P":
        img.putpalette(VOC_PALETTE.reshape(-1).tolist())  # was voc_colormap(256)
    img.save(path)


# Each builder writes 2 images of a tiny fake dataset in its exact on-disk layout and returns the root to pass.
# The first image's label holds `values`; the second is all on-disk zero.


def build_voc(tmp: Path, values, label_dir="SegmentationClass", year="VOC2012", split_dir="Segmentation", ext=".jpg"):
    root = tmp / "VOCdevkit" / year
    ids = ["2007_000033", "2007_000042"]
    (root / "ImageSets" / split_dir).mkdir(parents=True)
    (root / "ImageSets" / split_dir / "val.txt").write_text("\n".join(ids) + "\n")
    for i, image_id in enumerate(ids):
        _image(root / "JPEGImages" / f"{image_id}{ext}")
        _label(root / label_dir / f"{image_id}.png", values if i == 0 else [], mode="P")
    return tmp  # a parent of the dataset folder, as mmseg's data/


def build_coco(tmp: Path, values, suffix):
    root = tmp / "coco_stuff164k"
    for i, image_id in enumerate(["000000000139", "000000000285"]):
        _image(root / "images" / "val2017" / f"{image_id}.jpg")
        _label(root / "annotations" / "val2017" / f"{image_id}{suffix}", values if i == 0 else [])
    return root


def build_ade(tmp: Path, values):
    root = tmp / "ADEChallengeData2016"
    for i, image_id in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        _image(root / "images" / "validation" / f"{image_id}.jpg")
        _label(root / "annotations" / "validation" / f"{image_id}.png", values if i == 0 else [])
    return tmp / ""


def build_city(tmp: Path, values):
    root = tmp / "cityscapes"
    for i, (city, stem) in enumerate([("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")]):
        _image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        _label(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png", values if i == 0 else [])
    return root


def build_shapes(tmp: Path, values):
    root = tmp / "shapes_voc"
    for split, ids in {
        "train": ["000000", "000001"],
        "val": ["000002", "000003"],
        "test": ["000004", "000005"],
    }.items():
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids))
        for i, image_id in enumerate(ids):
            _image(root / "JPEGImages" / f"{image_id}.png")
            _label(root / "SegmentationClass" / f"{image_id}.png", values if i == 0 else [], mode="P")
    return root


# name: (builder, on-disk values of image 0, expected contiguous ids, expected id of on-disk zero, num classes)
CASES = {
    "voc21": (build_voc, [0, 15, 20, 255], [0, 15, 20, 255], 0, 21),
    "voc20": (build_voc, [0, 15, 20, 255], [255, 14, 19, 255], 255, 20),
    "pc60": (
        lambda t, v: build_voc(t, v, "SegmentationClassContext", "VOC2010", "SegmentationContext"),
        [0, 1, 59],
        [0, 1, 59],
        0,
        60,
    ),
    "pc59": (
        lambda t, v: build_voc(t, v, "SegmentationClassContext", "VOC2010", "SegmentationContext"),
        [0, 1, 59],
        [255, 0, 58],
        255,
        59,
    ),
    "object": (lambda t, v: build_coco(t, v, "_instanceTrainIds.png"), [0, 1, 80, 255], [0, 1, 80, 255], 0, 81),
    "stuff": (lambda t, v: build_coco(t, v, "_labelTrainIds.png"), [0, 170, 255], [0, 170, 255], 0, 171),
    "ade": (build_ade, [0, 1, 150], [255, 0, 149], 255, 150),
    "city": (build_city, [0, 18, 255], [0, 18, 255], 0, 19),
    "shapes": (build_shapes, [0, 1, 4, 255], [0, 1, 4, 255], 0, 5),
}


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_reader_on_fake_layout(tmp_path, name):
    builder, values, expected, zero_id, num_classes = CASES[name]
    root = builder(tmp_path, values)
    ds = load_dataset(name, root)
    assert ds.name == name
    assert len(ds.classes) == num_classes == ds.num_classes
    assert len(ds) == 2
    assert ds.has_background == (name in ("voc21", "pc60", "object", "shapes"))
    assert ds.palette.shape == (256, 3) and ds.palette.dtype == np.uint8
    labels = ds.load_label(0)
    assert labels.dtype == np.int64 and labels.shape == (4, 6)
    got = [int(labels[i % 4, i // 4]) for i in range(len(values))]
    assert got == expected
    assert int(ds.load_label(ds[1])[0, 0]) == zero_id
    for sample in ds:
        assert sample.image_path.is_file() and sample.label_path.is_file()
        assert sample.image_id in sample.image_path.name


def test_voc_ids_paths_palette_and_names(tmp_path):
    ds = load_dataset("voc21", build_voc(tmp_path, [1]))
    assert ds.root == tmp_path / "VOCdevkit" / "VOC2012"
    assert [s.image_id for s in ds] == ["2007_000033", "2007_000042"]
    assert ds[0].image_path == ds.root / "JPEGImages" / "2007_000033.jpg"
    assert ds[0].label_path == ds.root / "SegmentationClass" / "2007_000033.png"
    assert tuple(ds.palette[1]) == (128, 0, 0) and tuple(ds.palette[255]) == (224, 224, 192)
    assert ds.classes[15] == "person" and ds.foreground_ids == list(range(1, 21))
    paper = load_dataset("voc21", tmp_path, class_names="paper")
    assert [paper.classes[i] for i in (1, 6, 11, 15, 16, 20)] == [
        "plane",
        "buses",
        "table",
        "people",
        "plant",
        "monitor",
    ]
    for ds_ in (ds, paper):
        assert ds_.class_index("people") == ds_.class_index("Person") == 15
        assert ds_.class_index("pottedplant") == ds_.class_index("plant") == 16
    with pytest.raises(ValueError, match="not a class of voc21"):
        ds.class_index("unicorn")


def test_voc_falls_back_to_segmentation_class_aug(tmp_path):
    ds = load_dataset("voc21", build_voc(tmp_path, [3], label_dir="SegmentationClassAug"))
    assert ds[0].label_path.parent.name == "SegmentationClassAug"
    assert ds.load_label(0)[0, 0] == 3


def test_voc_train_split_and_explicit_label_dir(tmp_path):
    root = build_voc(tmp_path, [3])
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").write_text("2007_000042\n")
    ds = load_dataset("voc21", root, split="train", label_dir="SegmentationClass")
    assert ds.split == "train" and [s.image_id for s in ds] == ["2007_000042"]


def test_context_and_coco_paper_names(tmp_path):
    pc = load_dataset("pc59", build_voc(tmp_path, [1], "SegmentationClassContext", "VOC2010", "SegmentationContext"))
    assert pc.class_index("airplane") == pc.class_index("aeroplane") == 0
    assert pc.class_index("monitor") == pc.classes.index("tvmonitor")
    coco = load_dataset("object", build_coco(tmp_path, [1], "_instanceTrainIds.png"), class_names="paper")
    assert coco.classes[0] == "background" and "motorbike" in coco.classes and "toothbrush" in coco.classes
    assert coco.class_index("toothbrus") == coco.class_index("toothbrush") == 80
    assert coco.class_index("tvmonitor") == coco.class_index("tv")


def test_shapes_splits(tmp_path):
    root = build_shapes(tmp_path, [1])
    assert [len(load_dataset("shapes", root, split=s)) for s in ("train", "val", "test")] == [2, 2, 2]
    ds = load_dataset("shapes", root)
    # its settings are chosen on val (the shipped model's were): the split read unless told is test
    assert ds.split == "test" and [s.image_id for s in ds] == ["000004", "000005"]
    assert load_dataset("voc21", build_voc(tmp_path / "voc", [1])).split == "val"
    assert ds.classes == ["background", "circle", "square", "triangle", "cross"]
    assert ds[0].image_path.suffix == ".png"


@pytest.mark.parametrize("name", ["ade", "city", "object"])
def test_hidden_files_that_macos_leaves_are_not_images(tmp_path, name):
    builder = CASES[name][0]
    root = builder(tmp_path, CASES[name][1])
    for image in [p for p in tmp_path.rglob("*") if p.is_file()]:
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble, on FAT / exFAT
    ds = load_dataset(name, root)
    assert len(ds) == 2 and not any(s.image_id.startswith(".") for s in ds)


def test_missing_files_are_listed_with_preparation_hint(tmp_path):
    root = build_voc(tmp_path, [1])
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000042.png").unlink()
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg").unlink()
    with pytest.raises(DatasetFilesMissingError) as info:
        load_dataset("voc21", root)
    msg = str(info.value)
    assert "2 of 4 expected files" in msg
    assert "SegmentationClass/2007_000042.png" in msg and "JPEGImages/2007_000033.jpg" in msg
    assert "How to prepare" in msg and "VOCtrainval_11-May-2012" in msg
    assert len(load_dataset("voc21", root, check_files=False)) == 2


@pytest.mark.parametrize("name", ["voc21", "pc60", "object", "ade", "city", "shapes"])
def test_empty_root_raises_missing(tmp_path, name):
    with pytest.raises(DatasetFilesMissingError, match="How to prepare"):
        load_dataset(name, tmp_path)


def test_nonexistent_root(tmp_path):
    with pytest.raises(DatasetFilesMissingError, match="does not exist"):
        load_dataset("ade", tmp_path / "nope")


def test_unexpected_label_value_raises(tmp_path):
    ds = load_dataset("voc21", build_voc(tmp_path, [42]))
    with pytest.raises(ValueError, match=r"values \[42\]"):
        ds.load_label(0)


def test_rgb_label_is_rejected(tmp_path):
    root = build_voc(tmp_path, [1])
    Image.new("RGB", (6, 4)).save(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_dataset("voc21", root).load_label(0)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        load_dataset("voc21", build_voc(tmp_path, [1]), class_names="fancy")
    with pytest.raises(ValueError, match="label_dir"):
        load_dataset("ade", tmp_path, label_dir="x")


def test_dataset_aliases(tmp_path):
    assert load_dataset("ADE20K", build_ade(tmp_path, [1])).name == "ade"
