"""The dataset exports (issue 19), each read back by its consumer's reader and compared with the label maps.

- ``coco``: ``pycocotools.coco.COCO`` loads ``coco_instances.json``; ``annToMask`` of each annotation equals the
  label map's class mask exactly.
- ``yolo``: a parser of the format Ultralytics documents; each line's polygon rasterised back (PIL ``ImageDraw``,
  coordinates times the image size) agrees with the class mask except on boundary pixels: every differing pixel has
  a pixel of the other kind among its 8 neighbours (tolerance: boundary pixels only, nothing else).
- ``labelstudio``: the documented task JSON; the brush RLE decoded by our decoder, and by the Label Studio SDK's
  ``label_studio_sdk.converter.brush.decode_rle`` when the SDK is importable (it is not in ``[dev]``: it pins
  numpy < 2.3 through opencv < 4.13), equals the mask exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from diffsegmenter.batch import run_batch
from diffsegmenter.io.formats import labelstudio, yolo
from diffsegmenter.io.paths import collect_jobs
from research.shapes.world import CLASS_NAMES, make_scene

pytest.importorskip("pycocotools")
pytest.importorskip("cv2")

CLASSES = [c for c in CLASS_NAMES if c != "background"]  # label i = CLASSES[i - 1]
FORMATS = ["png", "coco", "yolo", "labelstudio"]

# pycocotools' Cython RLE object predates NumPy 2's __array__(copy=...) protocol; harmless
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@dataclasses.dataclass
class FakeResult:
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float = 0.4
    candidates: dict[str, float] | None = None


def _edge_case_labels() -> np.ndarray:
    """Holes, an island in a hole, two parts, a one-pixel object, an object on the border."""
    labels = np.zeros((40, 48), dtype=np.int32)
    labels[4:20, 4:22] = 1  # a circle-class ring ...
    labels[8:16, 8:18] = 0  # ... with a background hole ...
    labels[10:14, 11:15] = 2  # ... holding a square-class island
    labels[25:35, 30:47] = 3  # two triangle-class parts
    labels[25:30, 5:10] = 3
    labels[37, 2] = 4  # a one-pixel cross
    labels[0:6, 40:48] = 4  # on the image border
    return labels


class FakeSegmenter:
    """Labels keyed by the image bytes: the scene's ground truth; counts its calls."""

    def __init__(self, truth: dict[bytes, np.ndarray]) -> None:
        self.truth = truth
        self.calls = 0

    def segment(self, images, classes=None, filter=None):
        self.calls += len(images)
        out = []
        for image in images:
            labels = self.truth[np.asarray(image).tobytes()]
            rng = np.random.default_rng(int(labels.sum()))
            scores = rng.random((len(CLASSES), *labels.shape), dtype=np.float32)
            out.append(FakeResult(labels.astype(np.int32), scores, list(CLASSES), [f"a {c}" for c in CLASSES]))
        return out


@pytest.fixture()
def scenes(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], FakeSegmenter]:
    """Four shapes scenes and an edge-case map as image files, with their label maps."""
    src = tmp_path / "in"
    src.mkdir()
    truth, by_name = {}, {}
    maps = [(f"scene{seed}", make_scene(seed).labels.astype(np.int32)) for seed in (11, 12, 13, 14)]
    maps.append(("edges", _edge_case_labels()))
    for index, (name, labels) in enumerate(maps):
        image = np.random.default_rng(index).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(src / f"{name}.png")
        truth[image.tobytes()] = labels
        by_name[name] = labels
    return src, by_name, FakeSegmenter(truth)


def _run(src: Path, out: Path, segmenter: FakeSegmenter, formats=FORMATS):
    jobs = collect_jobs([str(src)], out, formats)
    return run_batch(segmenter, jobs, formats=formats, request={"classes": CLASSES}, progress=False, out=out)


def test_coco_loads_in_pycocotools_and_matches_the_label_maps(tmp_path: Path, scenes) -> None:
    from pycocotools.coco import COCO

    src, truth, segmenter = scenes
    out = tmp_path / "out"
    report = _run(src, out, segmenter)
    assert len(report.segmented) == 5
    coco = COCO(str(out / "coco_instances.json"))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == CLASSES  # categories in class order, ids 1..K
    assert sorted(img["file_name"] for img in coco.imgs.values()) == sorted(f"{n}.png" for n in truth)
    for image_id, image in coco.imgs.items():
        labels = truth[Path(image["file_name"]).stem]
        assert (image["height"], image["width"]) == labels.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        present = {int(v) for v in np.unique(labels) if v}
        assert sorted(a["category_id"] for a in anns) == sorted(present)  # one annotation per class present
        for ann in anns:
            mask = labels == ann["category_id"]
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            rows, cols = np.nonzero(mask)
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0 and 0 <= ann["score"] <= 1
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels with a pixel of the other kind among their 8 neighbours."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    shifted = [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any([s != mask for s in shifted], axis=0)


def _rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([(float(x) * width, float(y) * height) for x, y in poly], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def test_yolo_lines_rasterise_back_to_the_label_maps(tmp_path: Path, scenes) -> None:
    src, truth, segmenter = scenes
    out = tmp_path / "out"
    _run(src, out, segmenter)
    dataset = (out / "dataset.yaml").read_text()
    yaml = pytest.importorskip("yaml")
    meta = yaml.safe_load(dataset)
    assert meta["names"] == dict(enumerate(CLASSES)) and meta["nc"] == 4 and Path(meta["path"]) == out.resolve()
    for name, labels in truth.items():
        lines = yolo.read_labels(out / "labels" / f"{name}.txt")  # raises on a line outside the format
        assert all(0 <= cls < len(CLASSES) for cls, _ in lines)
        for index in range(1, len(CLASSES) + 1):
            mask = labels == index
            polygons = [poly for cls, poly in lines if cls == index - 1]
            if not mask.any():
                assert not polygons
                continue
            drawn = _rasterise(polygons, labels.shape)
            differ = drawn != mask
            assert not (differ & ~_boundary(mask)).any(), f"{name}/{CLASSES[index - 1]}: off-boundary pixels differ"
    # one line per 8-connected instance: the edge cases' ring+hole, island, two parts, a pixel, a border object
    classes_of_lines = sorted(cls for cls, _ in yolo.read_labels(out / "labels" / "edges.txt"))
    assert classes_of_lines == [0, 1, 2, 2, 3, 3]


def test_yolo_hole_stays_empty() -> None:
    labels = _edge_case_labels()
    (ring,) = yolo.mask_polygons(labels == 1)
    drawn = _rasterise([ring / np.array([48, 40])], labels.shape)
    assert not drawn[10:14, 10:16].any()  # the hole's inside (the island's pixels) is not filled


def test_labelstudio_tasks_decode_to_the_label_maps(tmp_path: Path, scenes) -> None:
    src, truth, segmenter = scenes
    out = tmp_path / "out"
    _run(src, out, segmenter)
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    config = (out / "labelstudio_config.xml").read_text()
    assert all(f'<Label value="{c}"/>' in config for c in CLASSES) and 'toName="image"' in config
    assert len(tasks) == len(truth)
    try:
        from label_studio_sdk.converter.brush import decode_rle as sdk_decode
    except ImportError:
        sdk_decode = None
    for task in tasks:
        labels = truth[Path(task["data"]["file_name"]).stem]
        assert task["data"]["image"].startswith("/data/local-files/?d=")
        (prediction,) = task["predictions"]
        seen = set()
        for result in prediction["result"]:
            assert result["type"] == "brushlabels" and result["from_name"] == "label" and result["to_name"] == "image"
            assert (result["original_height"], result["original_width"]) == labels.shape
            (name,) = result["value"]["brushlabels"]
            mask = labels == CLASSES.index(name) + 1
            np.testing.assert_array_equal(labelstudio.mask_from_result(result), mask)
            if sdk_decode is not None:
                flat = sdk_decode(bytes(result["value"]["rle"]))
                np.testing.assert_array_equal(flat.reshape(*labels.shape, 4)[:, :, 3] > 0, mask)
            seen.add(name)
        assert seen == {CLASSES[v - 1] for v in np.unique(labels) if v}


def test_brush_rle_matches_the_sdk_encoder() -> None:
    """Byte for byte, but for the SDK's padding: it adds a whole zero byte when the bits already end on a byte."""
    brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk is not installed")
    big = np.zeros((300, 300), dtype=bool)  # runs longer than 2**16 values
    big[150:, :] = True
    labels = _edge_case_labels()
    for mask in [labels == index for index in range(1, 5)] + [big]:
        ours, sdk = labelstudio.encode_brush_rle(mask), brush.mask2rle((mask * 255).astype(np.uint8))
        assert sdk[: len(ours)] == ours and sdk[len(ours) :] in ([], [0])


def test_brush_rle_round_trips_long_runs() -> None:
    mask = np.zeros((300, 300), dtype=bool)
    mask[150:, 7:] = True
    mask[0, 0] = True
    flat = labelstudio.decode_brush_rle(labelstudio.encode_brush_rle(mask))
    np.testing.assert_array_equal(flat.reshape(300, 300, 4)[:, :, 3] > 0, mask)


def test_resumed_run_rewrites_the_run_files_whole(tmp_path: Path, scenes) -> None:
    src, truth, segmenter = scenes
    out = tmp_path / "out"
    _run(src, out, segmenter)
    first = {name: (out / name).read_bytes() for name in ("coco_instances.json", "labelstudio_tasks.json")}
    calls = segmenter.calls
    report = _run(src, out, segmenter)  # nothing to recompute: the run files are still written whole
    assert segmenter.calls == calls and len(report.already_done) == 5
    for name, data in first.items():
        assert (out / name).read_bytes() == data
    (out / "scene12.json").unlink()  # one image unfinished: only it is recomputed, no duplicates
    (out / "coco_instances.json").unlink()
    report = _run(src, out, segmenter)
    assert segmenter.calls == calls + 1 and len(report.segmented) == 1
    coco = json.loads((out / "coco_instances.json").read_text())
    assert len(coco["images"]) == 5 and len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert coco == json.loads(first["coco_instances.json"])


def test_vocabulary_numbers_yolo_ids_run_wide(tmp_path: Path) -> None:
    """With a filter an image keeps part of the vocabulary; its YOLO ids still follow the run's class order."""
    from diffsegmenter.io.results import write_result

    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:6, 2:6] = 1
    result = FakeResult(labels, np.ones((1, 8, 8), np.float32), ["cross"], ["a cross"])
    write_result(tmp_path, "x", None, result, ["yolo"], vocabulary=CLASSES)
    ((cls, _),) = yolo.read_labels(tmp_path / "labels" / "x.txt")
    assert cls == 3


def test_a_raw_vocabulary_numbers_as_the_results_cleaned_names(tmp_path: Path) -> None:
    # the Python API's run_batch(classes=["Circle ", "square"]): results say "Circle" (the segmenter cleans names),
    # the run's list stayed raw, so "Circle" was appended as a third class: PNG value 3, YOLO id 2 of nc 2, a
    # phantom COCO category, and the run's finish refused the folder after every image was segmented
    from diffsegmenter.batch import ImageTask
    from diffsegmenter.io.results import write_result

    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:6, 2:6] = 1
    result = FakeResult(labels, np.ones((1, 8, 8), np.float32), ["Circle"], ["a Circle"])
    write_result(tmp_path, "x", None, result, ["png", "yolo"], vocabulary=["Circle ", "square"])
    assert np.asarray(Image.open(tmp_path / "x.png")).max() == 1
    ((cls, _),) = yolo.read_labels(tmp_path / "labels" / "x.txt")
    assert cls == 0
    task = ImageTask(None, ["png"], classes=["Circle ", " square"])
    assert task.vocabulary == ["Circle", "square"]


def test_heat_map_names_fit_the_file_systems_bytes() -> None:
    # 100 characters of CJK are 300 bytes, past the 255 a file name may take: the write failed after segmenting
    from diffsegmenter.io.formats.heatmaps import heatmap_filenames

    (name,) = heatmap_filenames(["\u732b" * 300])
    assert len(name.encode("utf-8")) <= 160 and name.startswith("\u732b" * 40)


# ------------------------------------------------------------------ faults found by an exports fault hunt (session 14)
def test_yolo_refuses_a_dataset_yaml_that_would_rename_an_images_class_ids(tmp_path: Path) -> None:
    # written with its own class list (a per-image list in segment), b's id 1 is "cross"; dataset.yaml said "square"
    from diffsegmenter.io.formats import RunImage
    from diffsegmenter.io.results import write_result, write_run_outputs

    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 2
    result = FakeResult(labels, np.zeros((2, 8, 8), np.float32), ["square", "cross"], ["a square", "a cross"])
    write_result(tmp_path, "b", None, result, ["yolo"])
    image = RunImage(tmp_path, "b", "b.png", tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"numbers its classes as \['square', 'cross'\].*vocabulary="):
        write_run_outputs(tmp_path, [image], ["yolo"], ["circle", "square", "cross"])
    write_run_outputs(tmp_path, [image], ["yolo"], ["square", "cross", "circle"])  # the same ids: fine
    write_result(tmp_path, "b", None, result, ["yolo"], vocabulary=["circle", "square", "cross"])
    write_run_outputs(tmp_path, [image], ["yolo"], ["circle", "square", "cross"])
    assert yolo.read_labels(tmp_path / "labels" / "b.txt")[0][0] == 2


def test_run_files_match_names_as_class_lists_do(tmp_path: Path) -> None:
    # through the API a vocabulary spelled "Cat" and results spelled "cat" made two COCO categories and two Label
    # Studio labels, the prediction's under the one the config's user did not mean
    from diffsegmenter.io.formats import RunImage
    from diffsegmenter.io.results import write_result, write_run_outputs

    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 1
    result = FakeResult(labels, np.ones((1, 8, 8), np.float32), ["cat"], ["a cat"])
    write_result(tmp_path, "b", None, result, ["coco", "labelstudio"])
    image = RunImage(tmp_path, "b", "b.png", tmp_path / "b.png")
    write_run_outputs(tmp_path, [image], ["coco", "labelstudio"], ["Cat", "Dog"])
    coco = json.loads((tmp_path / "coco_instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["Cat", "Dog"]
    assert [a["category_id"] for a in coco["annotations"]] == [1]
    (task,) = json.loads((tmp_path / "labelstudio_tasks.json").read_text())
    assert task["predictions"][0]["result"][0]["value"]["brushlabels"] == ["Cat"]
    assert (tmp_path / "labelstudio_config.xml").read_text().count("<Label ") == 2


def test_run_level_file_names_are_unique_across_input_folders(tmp_path: Path, scenes) -> None:
    # dA/x.png and dB/x.png were both file_name "x.png" in coco_instances.json and labelstudio_tasks.json
    src, truth, segmenter = scenes
    for folder, scene in (("dA", "scene11"), ("dB", "scene12")):
        (tmp_path / folder).mkdir()
        (src / f"{scene}.png").rename(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    jobs = collect_jobs([str(tmp_path / "dA"), str(tmp_path / "dB")], out, ["png", "coco", "labelstudio"])
    run_batch(segmenter, jobs, formats=["png", "coco", "labelstudio"], request={}, progress=False, out=out)
    coco = json.loads((out / "coco_instances.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["dA/x.png", "dB/x.png"]
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert [t["data"]["file_name"] for t in tasks] == ["dA/x.png", "dB/x.png"]
    one = collect_jobs([str(src)], tmp_path / "out2")  # one folder: names stay relative to it
    assert sorted(job.name for job in one) == ["edges.png", "scene13.png", "scene14.png"]


def test_yolo_lists_each_folders_images_and_refuses_two_images_of_one_stem(tmp_path: Path, scenes) -> None:
    import yaml

    from diffsegmenter.errors import UsageError

    src, truth, segmenter = scenes
    (src / "sub dir").mkdir()
    (src / "scene11.png").rename(src / "sub dir" / "scene11.png")
    out = tmp_path / "out"
    _run(src, out, segmenter, ["yolo"])
    dataset = yaml.safe_load((out / "dataset.yaml").read_text())
    assert dataset["train"] == dataset["val"] == ["images", "sub dir/images"]  # labels: <folder>/labels/<stem>.txt
    assert (out / "sub dir" / "labels" / "scene11.txt").is_file()
    Image.open(src / "scene12.png").convert("RGB").save(src / "scene12.jpg")
    with pytest.raises(UsageError, match="share the stem 'scene12'.*labels/scene12.txt for both"):
        collect_jobs([str(src)], tmp_path / "out2", ["png", "yolo"])
    collect_jobs([str(src)], tmp_path / "out2", ["png", "coco"])  # other formats name them apart: fine


def test_an_image_named_like_a_run_file_is_told_so(tmp_path: Path, caplog) -> None:
    # coco_instances.png (a run file's stem): "two inputs map to the same output name" with one input, and with yolo
    # "shares the stem with an image an earlier run wrote" into a new folder
    from diffsegmenter.errors import UsageError

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "coco_instances.png")
    with caplog.at_level("WARNING"):
        (job,) = collect_jobs([str(src)], tmp_path / "out", ["png"])
    assert job.stem == "coco_instances.png" and "kept for the run's file coco_instances.json" in caplog.text
    assert "two inputs" not in caplog.text
    with pytest.raises(UsageError, match="'coco_instances' is kept for the run's file.*labels/coco_instances.txt"):
        collect_jobs([str(src)], tmp_path / "out", ["png", "yolo"])
    (src / "coco_instances.png").rename(src / "Skipped.png")  # the run file's own spelling: skipped.json
    with caplog.at_level("WARNING"):
        collect_jobs([str(src)], tmp_path / "out", ["png"])
    assert "kept for the run's file skipped.json" in caplog.text


def test_more_classes_than_a_label_png_holds_are_refused_before_any_work(tmp_path: Path, capsys) -> None:
    from diffsegmenter import cli
    from diffsegmenter.io.results import write_result

    k = 255  # class 255 was written as 255, the value readers ignore
    labels = (np.arange(16 * 32).reshape(16, 32) % (k + 1)).astype(np.int32)
    names = [f"c{i}" for i in range(k)]
    result = FakeResult(labels, np.zeros((k, 16, 32), np.float32), names, names)
    with pytest.raises(ValueError, match="255 classes do not fit a label PNG"):
        write_result(tmp_path / "o", "img", None, result, ["png"])
    write_result(tmp_path / "o", "img", None, result, ["npz"])
    classes = ",".join(["circle", *(f"thing{i}" for i in range(299))])
    out = tmp_path / "o2"
    assert cli.main(["segment", str(tmp_path), "--classes", classes, "--out", str(out), "--offline"]) == 2
    assert "300 classes do not fit a label PNG" in capsys.readouterr().err and not out.exists()


def test_an_input_named_like_a_run_file_keeps_its_own_sidecar(tmp_path: Path, scenes) -> None:
    src, truth, segmenter = scenes
    (src / "scene11.png").rename(src / "coco_instances.png")  # its sidecar was overwritten by the COCO file
    out = tmp_path / "out"
    _run(src, out, segmenter, ["png", "coco"])
    report = _run(src, out, segmenter, ["png", "coco"])
    assert len(report.already_done) == 5 and not report.segmented  # it was recomputed on every resume
    assert (out / "coco_instances.png.json").is_file()
    assert "images" in json.loads((out / "coco_instances.json").read_text())


def test_dataset_yaml_keeps_odd_names_and_no_names(tmp_path: Path) -> None:
    import yaml

    odd = "nel\u0085x line\u2028sep"  # YAML reads both as line breaks, which JSON quoting leaves raw
    assert yaml.safe_load("x: " + yolo._yaml_str(odd))["x"] == odd
    yolo.write_run(tmp_path, [], [])
    assert yaml.safe_load((tmp_path / "dataset.yaml").read_text())["names"] == {}  # was `names:`, read as null


@pytest.mark.parametrize("mask_of", ["diagonal", "antidiagonal", "row", "pixel"])
def test_yolo_thin_runs_stay_thin(mask_of: str) -> None:
    """A 1-pixel-wide run has a 2-point contour in OpenCV; its line must follow the pixels, not fill their box."""
    cv2 = pytest.importorskip("cv2")
    mask = np.zeros((24, 24), dtype=bool)
    if mask_of == "diagonal":
        mask[np.arange(2, 22), np.arange(2, 22)] = True
    elif mask_of == "antidiagonal":
        mask[np.arange(2, 22), np.arange(21, 1, -1)] = True
    elif mask_of == "row":
        mask[5, 3:19] = True
    else:
        mask[7, 9] = True
    (ring,) = yolo.mask_polygons(mask)
    assert len(ring) >= 3
    line = yolo.format_line(0, ring, 24, 24)
    poly = np.array(line.split()[1:], dtype=float).reshape(-1, 2)
    drawn = np.zeros(mask.shape, np.uint8)  # drawn back as Ultralytics draws polygons (cv2.fillPoly)
    cv2.fillPoly(drawn, [np.rint(poly * 24).astype(np.int32)], 1)
    np.testing.assert_array_equal(drawn.astype(bool), mask)
