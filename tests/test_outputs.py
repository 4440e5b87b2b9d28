"""Tests for the writers of diffsegmenter.io (formerly diffsegmenter.outputs): every writer round-trips through its
reader, writes atomically, and write_result/is_done give resumable per-image outputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import diffsegmenter.io.sidecar as outputs  # package_version and the importlib it reads the version with
from diffsegmenter.io import (
    HEATMAP_LUT,
    OUTPUT_FORMATS,
    VOC_PALETTE,
    class_colors,
    decode_rle_records,
    encode_rle_records,
    heatmap_filenames,
    is_done,
    load_label_png,
    load_npz,
    load_rle_json,
    load_sidecar,
    output_paths,
    render_overlay,
    safe_filename,
    save_heatmaps,
    save_label_png,
    save_npz,
    save_rle_json,
    save_sidecar,
    write_result,
)
from diffsegmenter.io.formats.overlay import desaturate, outline_mask, upscale_factor
from diffsegmenter.io.palette import name_color, name_colors

HEIGHT, WIDTH = 20, 24
CLASSES = ["cat", "traffic light", "a/b"]  # "a/b" is absent from the labels


@dataclasses.dataclass
class FakeResult:
    """Stand-in for diffsegmenter.SegmentationResult (same fields)."""

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float = 0.4
    candidates: dict[str, float] | None = None


def _labels() -> np.ndarray:
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    labels[2:8, 3:10] = 1  # cat: rows 2..7, cols 3..9
    labels[10:18, 12:22] = 2  # traffic light: rows 10..17, cols 12..21
    labels[15, 0] = 2  # a stray pixel widens the box to col 0
    return labels


def _result() -> FakeResult:
    rng = np.random.default_rng(0)
    scores = rng.random((len(CLASSES), HEIGHT, WIDTH), dtype=np.float32)
    return FakeResult(_labels(), scores, list(CLASSES), [f"a photo of a {c}" for c in CLASSES])


def _image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------- palette + label PNG


def test_voc_palette_known_entries() -> None:
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[2].tolist() == [0, 128, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # ignore
    assert len({tuple(c) for c in VOC_PALETTE.tolist()}) == 256
    assert not VOC_PALETTE.flags.writeable


def test_label_png_roundtrip_with_palette_and_ignore(tmp_path: Path) -> None:
    labels = _labels()
    labels[0, :] = 255
    path = save_label_png(tmp_path / "x.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.frombuffer(bytes(image.getpalette("RGB")), dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(palette[:256], VOC_PALETTE)
        colours = np.asarray(image.convert("RGB"))
    decoded = load_label_png(path)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, labels)
    np.testing.assert_array_equal(colours, VOC_PALETTE[labels])


def test_label_png_rejects_values_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="npz"):
        save_label_png(tmp_path / "x.png", np.full((2, 2), 300, dtype=np.int32))
    with pytest.raises(ValueError, match="2-D"):
        save_label_png(tmp_path / "x.png", np.zeros((2, 2, 1), dtype=np.int32))
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- sidecar


def test_sidecar_contents(tmp_path: Path) -> None:
    result = _result()
    result.candidates = {"cat": np.float32(0.9), "dog": 0.1}
    path = save_sidecar(tmp_path / "x.json", result, {"source": tmp_path / "img.jpg", "step": np.int64(3)})
    data = load_sidecar(path)
    assert data["classes"] == CLASSES
    assert data["prompts"] == result.prompts
    assert data["tau"] == pytest.approx(0.4)
    assert data["image_size"] == {"height": HEIGHT, "width": WIDTH}
    assert data["label_values"] == {"0": "background", "1": "cat", "2": "traffic light", "3": "a/b"}
    assert data["candidates"]["cat"] == pytest.approx(0.9)
    assert data["diffsegmenter_version"] == outputs.package_version()
    assert isinstance(data["diffsegmenter_version"], str) and data["diffsegmenter_version"]
    assert data["source"] == str(tmp_path / "img.jpg") and data["step"] == 3
    with pytest.raises(ValueError, match="clashes"):
        save_sidecar(tmp_path / "y.json", result, {"classes": []})


def test_package_version_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise outputs.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(outputs.importlib.metadata, "version", missing)
    assert outputs.package_version() == "unknown"


# -------------------------------------------------------------------------------------------------------- RLE


def test_rle_roundtrip_area_bbox_score(tmp_path: Path) -> None:
    result = _result()
    records = encode_rle_records(result.labels, result.scores, result.classes)
    assert [r["name"] for r in records] == CLASSES
    assert [r["class_index"] for r in records] == [1, 2, 3]
    json.dumps(records)  # JSON-ready: counts are str, numbers are Python ints/floats

    cat, light, absent = records
    assert cat["area"] == 6 * 7 and cat["bbox"] == [3, 2, 7, 6]
    assert light["area"] == 8 * 10 + 1 and light["bbox"] == [0, 10, 22, 8]
    assert absent["area"] == 0 and absent["bbox"] == [0, 0, 0, 0] and absent["score"] == 0.0
    expected_score = result.scores[1][result.labels == 2].mean()
    assert light["score"] == pytest.approx(float(expected_score), rel=1e-6)
    for record in records:
        assert record["segmentation"]["size"] == [HEIGHT, WIDTH]
        assert isinstance(record["segmentation"]["counts"], str)
        rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == record["area"]
        if record["area"]:
            assert mask_utils.toBbox(rle).tolist() == record["bbox"]

    path = save_rle_json(tmp_path / "x.rle.json", records, (HEIGHT, WIDTH))
    loaded = load_rle_json(path)
    assert loaded["image_size"] == {"height": HEIGHT, "width": WIDTH}
    masks = decode_rle_records(loaded["annotations"])
    assert list(masks) == CLASSES
    for index, name in enumerate(CLASSES, start=1):
        assert masks[name].dtype == bool and masks[name].shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(masks[name], result.labels == index)


def test_rle_validation(tmp_path: Path) -> None:
    result = _result()
    records = encode_rle_records(result.labels, result.scores, result.classes)
    with pytest.raises(ValueError, match="image_size"):
        save_rle_json(tmp_path / "x.json", records, (HEIGHT + 1, WIDTH))
    with pytest.raises(ValueError, match="unique"):
        encode_rle_records(result.labels, result.scores, ["a", "a", "b"])
    with pytest.raises(ValueError, match="maps"):
        encode_rle_records(result.labels, result.scores[:2], CLASSES)
    with pytest.raises(ValueError, match="Malformed"):
        decode_rle_records([{"name": "x"}])


# -------------------------------------------------------------------------------------------------------- NPZ


def test_npz_roundtrip(tmp_path: Path) -> None:
    result = _result()
    path = save_npz(tmp_path / "x.npz", result.scores, result.classes, result.labels)
    assert path == tmp_path / "x.npz" and path.is_file()
    data = load_npz(path)
    assert data["classes"] == CLASSES
    assert data["scores"].dtype == np.float32 and data["labels"].dtype == np.int32
    np.testing.assert_array_equal(data["scores"], result.scores)
    np.testing.assert_array_equal(data["labels"], result.labels)
    with np.load(path, allow_pickle=False) as raw:  # no pickled objects inside
        assert raw["classes"].dtype.kind == "U"


def test_scores_validation(tmp_path: Path) -> None:
    result = _result()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_npz(tmp_path / "x.npz", result.scores * 3, CLASSES, result.labels)
    with pytest.raises(ValueError, match="NaN"):
        save_npz(tmp_path / "x.npz", np.full_like(result.scores, np.nan), CLASSES, result.labels)
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------------- overlay


def test_overlay_tints_the_grey_image_outlines_regions_and_adds_legend() -> None:
    image, labels = _image(), _labels()
    overlay = render_overlay(image, labels, CLASSES, alpha=0.5, min_side=0)
    assert overlay.mode == "RGB"
    assert overlay.width >= WIDTH and overlay.height > HEIGHT  # legend strip below the image
    pixels = np.asarray(overlay)
    top = pixels[:HEIGHT, :WIDTH].astype(np.float32)
    grey = desaturate(image)
    background = labels == 0
    np.testing.assert_allclose(top[background], grey[background], atol=1)  # background: the image, in grey
    colors = name_colors(CLASSES)
    border = outline_mask(labels)
    for index in (1, 2):
        region = labels == index
        inner = region & ~border
        expected = 0.5 * grey[inner] + 0.5 * colors[index].astype(np.float32)
        np.testing.assert_allclose(top[inner], expected, atol=1)
        np.testing.assert_array_equal(top[region & border], np.broadcast_to(colors[index], top[region & border].shape))

    legend = pixels[HEIGHT:].reshape(-1, 3)
    legend_colours = {tuple(c) for c in legend.tolist()}
    assert tuple(colors[1].tolist()) in legend_colours  # swatches of the present classes
    assert tuple(colors[2].tolist()) in legend_colours
    assert tuple(colors[3].tolist()) not in legend_colours  # absent class not listed
    assert (0, 0, 0) in legend_colours  # text
    assert len({tuple(c) for c in colors[1:].tolist()}) == len(CLASSES)  # distinct class colours


def test_overlay_colours_follow_the_class_name_not_its_index() -> None:
    image, labels = _image(), _labels()
    swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, labels))
    first = np.asarray(render_overlay(image, labels, CLASSES, min_side=0))[:HEIGHT, :WIDTH]
    second = np.asarray(render_overlay(image, swapped, [CLASSES[1], CLASSES[0], CLASSES[2]], min_side=0))
    np.testing.assert_array_equal(first, second[:HEIGHT, :WIDTH])  # same pixels of "cat", same colour
    assert name_color("Traffic  Light") == name_color("traffic light")
    assert tuple(name_colors(["circle", "cross"])[1]) == name_color("circle") == tuple(name_colors(["circle"])[1])


def test_small_overlays_are_enlarged_with_nearest_neighbour() -> None:
    image, labels = _image(), _labels()
    big = render_overlay(image, labels, CLASSES)  # 20 x 24 -> 13x: shorter side >= OVERLAY_MIN_SIDE
    scale = upscale_factor(HEIGHT, WIDTH)
    assert scale == 13 and big.width >= WIDTH * scale and big.height > HEIGHT * scale
    pixels = np.asarray(big)[: HEIGHT * scale, : WIDTH * scale]
    corner = pixels[:scale, :scale].reshape(-1, 3)  # one source pixel -> a scale x scale block
    assert len({tuple(c) for c in corner.tolist()}) == 1
    assert upscale_factor(512, 300) == 1
    # a thin image is not enlarged past OVERLAY_MAX_SIDE on its longer side (2 x 1000 became 256 x 128,000)
    assert upscale_factor(2, 1000) == 4 and upscale_factor(1, 40000) == 1 and upscale_factor(1000, 2) == 4
    thin = render_overlay(np.zeros((2, 1000, 3), np.uint8), np.ones((2, 1000), np.int32), ["circle"])
    assert thin.width <= 4096 + 400  # the enlarged image (4000) plus the legend's margin at most


def test_overlay_alpha_zero_and_edge_cases() -> None:
    image, labels = _image(), _labels()
    plain = np.asarray(render_overlay(image, labels, CLASSES, alpha=0.0, min_side=0))[:HEIGHT, :WIDTH]
    inside = ~outline_mask(labels)
    np.testing.assert_allclose(plain[inside], desaturate(image)[inside], atol=1)  # outlines only

    nothing = render_overlay(image, np.zeros_like(labels), CLASSES, min_side=0)
    assert nothing.height > HEIGHT
    np.testing.assert_allclose(np.asarray(nothing)[:HEIGHT, :WIDTH], desaturate(image), atol=1)

    wide = render_overlay(
        image, labels, ["cat", "a very long class name that does not fit a tiny image", "x"], min_side=0
    )
    assert wide.width > WIDTH
    np.testing.assert_array_equal(np.asarray(wide)[:HEIGHT, WIDTH:], 255)  # padding beside the image is white

    with pytest.raises(ValueError, match="alpha"):
        render_overlay(image, labels, CLASSES, alpha=1.5)
    with pytest.raises(ValueError, match="must match"):
        render_overlay(image[:-1], labels, CLASSES)
    with pytest.raises(ValueError, match="outside"):
        render_overlay(image, labels + 5, CLASSES)


def test_class_colors_many_classes_are_distinct() -> None:
    colors = class_colors(400)
    assert colors.shape == (401, 3)
    np.testing.assert_array_equal(colors[:255], VOC_PALETTE[:255])
    assert len({tuple(c) for c in colors[1:].tolist()}) > 390


# --------------------------------------------------------------------------------------------------- heat maps


def test_safe_filenames() -> None:
    assert safe_filename("traffic light") == "traffic_light"
    assert safe_filename("person/rider") == "person_rider"
    assert safe_filename("../etc/passwd") == "etc_passwd"
    assert safe_filename("...") == "class"
    assert safe_filename("CON") == "CON_"
    assert safe_filename("café au lait") == "café_au_lait"
    assert heatmap_filenames(["a b", "a/b", "A_B", "c"]) == ["a_b.png", "a_b-2.png", "A_B-3.png", "c.png"]


def test_heatmaps_one_per_class(tmp_path: Path) -> None:
    result = _result()
    result.scores[0] = 0.0
    result.scores[0, 0, 0] = 1.0
    written = save_heatmaps(tmp_path / "maps", result.scores, CLASSES)
    assert [p.name for p in written] == ["cat.png", "traffic_light.png", "a_b.png"]
    for path, score in zip(written, result.scores):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
            pixels = np.asarray(image)
        np.testing.assert_array_equal(pixels, HEATMAP_LUT[np.rint(score * 255).astype(np.uint8)])
    with Image.open(written[0]) as image:
        assert image.getpixel((0, 0)) == tuple(HEATMAP_LUT[255].tolist())
        assert image.getpixel((1, 0)) == tuple(HEATMAP_LUT[0].tolist())
    lightness = HEATMAP_LUT.astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(lightness) > -1.0).all()  # perceptual order: brighter means higher score


# --------------------------------------------------------------------------------------------------- atomicity


def test_failed_write_keeps_previous_target_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.png"
    save_label_png(target, _labels())
    before = target.read_bytes()
    fresh = tmp_path / "new.png"

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_label_png(target, np.zeros((HEIGHT, WIDTH), dtype=np.int32))
    with pytest.raises(OSError, match="disk full"):
        save_label_png(fresh, _labels())
    assert target.read_bytes() == before
    assert not fresh.exists()
    assert _temp_files(tmp_path) == []


# ------------------------------------------------------------------------------------- write_result / is_done


def test_write_result_all_formats(tmp_path: Path) -> None:
    result = _result()
    out = tmp_path / "out"
    written = write_result(out, "img_001", _image(), result, list(reversed(OUTPUT_FORMATS)), extra={"source": "x.jpg"})
    names = [p.relative_to(out).as_posix() for p in written]
    assert names == [
        "img_001.png",
        "img_001.overlay.png",
        "img_001.heatmaps/cat.png",
        "img_001.heatmaps/traffic_light.png",
        "img_001.heatmaps/a_b.png",
        "img_001.rle.json",
        "img_001.npz",
        "img_001.json",  # sidecar last
    ]
    assert all(p.is_file() for p in written)
    assert _temp_files(out) == []
    sidecar = load_sidecar(out / "img_001.json")
    assert sidecar["formats"] == list(OUTPUT_FORMATS)
    assert sidecar["files"] == names[:-1]
    assert sidecar["source"] == "x.jpg"
    np.testing.assert_array_equal(load_label_png(out / "img_001.png"), result.labels)
    np.testing.assert_array_equal(load_npz(out / "img_001.npz")["scores"], result.scores)
    assert output_paths(out, "img_001", OUTPUT_FORMATS, CLASSES).files() == written[:2] + written[5:7] + written[
        2:5
    ] + [written[-1]]


def test_is_done_logic(tmp_path: Path) -> None:
    result = _result()
    assert not is_done(tmp_path, "a", ["png"])
    write_result(tmp_path, "a", None, result, ["png", "heatmaps", "npz"])
    assert is_done(tmp_path, "a", ["png", "heatmaps", "npz"])
    assert is_done(tmp_path, "a", ["npz"])  # a subset of what was written
    assert not is_done(tmp_path, "a", ["png", "rle"])  # rle was never written
    (tmp_path / "a.heatmaps" / "traffic_light.png").unlink()
    assert not is_done(tmp_path, "a", ["heatmaps"])
    assert is_done(tmp_path, "a", ["png"])
    (tmp_path / "a.json").write_text("{broken")
    assert not is_done(tmp_path, "a", ["png"])
    with pytest.raises(ValueError, match="Unknown output format"):
        is_done(tmp_path, "a", ["jpeg"])


def test_interrupted_write_is_not_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _result()
    write_result(tmp_path, "a", None, result, ["png", "npz"])
    assert is_done(tmp_path, "a", ["png", "npz"])

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(np, "savez_compressed", crash)  # was outputs.np: the same numpy module
    with pytest.raises(OSError, match="killed"):
        write_result(tmp_path, "a", None, result, ["png", "npz"])
    assert not (tmp_path / "a.json").exists()  # the old sidecar was removed before rewriting
    assert not is_done(tmp_path, "a", ["png", "npz"])
    assert _temp_files(tmp_path) == []


def test_rewrite_with_other_classes_removes_stale_heatmaps(tmp_path: Path) -> None:
    write_result(tmp_path, "a", None, _result(), ["heatmaps"])
    other = FakeResult(np.zeros((HEIGHT, WIDTH), np.int32), np.zeros((1, HEIGHT, WIDTH), np.float32), ["dog"], ["dog"])
    write_result(tmp_path, "a", None, other, ["heatmaps"])
    assert sorted(p.name for p in (tmp_path / "a.heatmaps").iterdir()) == ["dog.png"]
    assert is_done(tmp_path, "a", ["heatmaps"])


def test_label_png_numbers_the_run_vocabulary_when_a_filter_kept_part_of_it(tmp_path: Path) -> None:
    # with a filter each image keeps part of the vocabulary; its label PNG numbered only the kept classes, so value 1
    # was "triangle" in one file and "square" in the next (and the palette colours disagreed likewise)
    vocabulary = ["dog", "a/b", "cat", "traffic light"]
    written = write_result(tmp_path, "x", None, _result(), ["png", "npz"], vocabulary=vocabulary)
    assert [p.name for p in written] == ["x.png", "x.npz", "x.json"]
    expected = np.array([0, 3, 4, 2])[_labels()]  # cat -> 3, traffic light -> 4 (a/b -> 2 is absent)
    np.testing.assert_array_equal(load_label_png(tmp_path / "x.png"), expected)
    data = load_sidecar(tmp_path / "x.json")
    assert data["png_classes"] == vocabulary  # value i of the PNG is png_classes[i-1]
    assert data["classes"] == CLASSES  # the image's own classes, as label_values, the npz and the rle number them
    assert data["label_values"] == {"0": "background", "1": "cat", "2": "traffic light", "3": "a/b"}
    np.testing.assert_array_equal(load_npz(tmp_path / "x.npz")["labels"], _labels())
    # a class missing from the vocabulary gets the next value; without a vocabulary the image's own order
    write_result(tmp_path, "y", None, _result(), ["png"], vocabulary=["traffic light"])
    np.testing.assert_array_equal(load_label_png(tmp_path / "y.png"), np.array([0, 2, 1, 3])[_labels()])
    write_result(tmp_path, "z", None, _result(), ["png"])
    np.testing.assert_array_equal(load_label_png(tmp_path / "z.png"), _labels())
    assert load_sidecar(tmp_path / "z.json")["png_classes"] == CLASSES
    write_result(tmp_path, "n", None, _result(), ["npz"], vocabulary=vocabulary)
    assert "png_classes" not in load_sidecar(tmp_path / "n.json")  # no PNG, nothing to name


def test_write_result_validation(tmp_path: Path) -> None:
    result = _result()
    with pytest.raises(ValueError, match="needs `image_rgb`"):
        write_result(tmp_path, "a", None, result, ["overlay"])
    with pytest.raises(ValueError, match="Unknown output format"):
        write_result(tmp_path, "a", None, result, ["png", "jpeg"])
    with pytest.raises(ValueError, match="stem"):
        write_result(tmp_path, "sub/a", None, result, ["png"])
    with pytest.raises(ValueError, match="prompts"):
        write_result(tmp_path, "a", None, dataclasses.replace(result, prompts=["p"]), ["png"])
    with pytest.raises(ValueError, match="outside"):
        write_result(tmp_path, "a", None, dataclasses.replace(result, labels=result.labels + 4), ["png"])
    with pytest.raises(ValueError, match="reserved"):
        write_result(tmp_path, "a", None, result, ["png"], extra={"files": []})
    assert list(tmp_path.iterdir()) == []


def test_write_result_no_classes(tmp_path: Path) -> None:
    empty = FakeResult(np.zeros((4, 5), np.int32), np.zeros((0, 4, 5), np.float32), [], [])
    written = write_result(tmp_path, "e", np.zeros((4, 5, 3), np.uint8), empty, OUTPUT_FORMATS)
    assert written[-1].name == "e.json"
    assert load_npz(tmp_path / "e.npz")["classes"] == []
    assert load_rle_json(tmp_path / "e.rle.json")["annotations"] == []
    assert is_done(tmp_path, "e", OUTPUT_FORMATS)


def test_a_target_with_a_long_name_is_written(tmp_path):
    # a 245-character name fits the file system, but its temporary name (+ ~22 characters) did not: the image was
    # skipped with "[Errno 36] File name too long: '.<name>....tmp'"
    from diffsegmenter.io.atomic import is_temp_name, temp_path, write_bytes

    for name in ("n" * 241 + ".png", "é" * 120 + ".png"):  # 245 characters; 244 bytes in UTF-8
        target = tmp_path / name
        assert len(temp_path(target).name.encode()) <= 255 and is_temp_name(temp_path(target).name) == os.getpid()
        write_bytes(target, b"data")
        assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == [name]
        target.unlink()


def test_files_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    # a sidecar or settings file saved again by a Windows editor starts with a BOM: the image was redone (its
    # sidecar "unreadable") and the settings refused as not JSON
    from diffsegmenter.io.results import sidecars_in
    from diffsegmenter.settings import ModelSettings

    out = tmp_path / "out"
    write_result(out, "a", _image(), _result(), ["png"], extra={"source": "a.png"})
    sidecar = out / "a.json"
    sidecar.write_bytes(b"\xef\xbb\xbf" + sidecar.read_bytes().replace(b"\n", b"\r\n"))
    assert is_done(out, "a", ["png"]) and load_sidecar(sidecar)["source"] == "a.png"
    assert list(sidecars_in(out)) == ["a.json"]
    settings = tmp_path / "segmenter_config.json"
    settings.write_bytes(b"\xef\xbb\xbf" + json.dumps({"tau": 0.5, "_classes": ["cat"]}).encode())
    assert ModelSettings.from_file(settings).classes == ["cat"]
