"""The shapes world: determinism, the issue-7 image distribution, VOC export, captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from research.shapes import captions as cap
from research.shapes import world as w

N_SCENES = 120


@pytest.fixture(scope="module")
def scenes() -> list[w.Scene]:
    return [w.make_scene(s) for s in range(N_SCENES)]


def test_deterministic_by_seed():
    a, b = w.make_scene(123), w.make_scene(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.objects == b.objects
    c = w.make_scene(124)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert a.labels.shape == (64, 64) and a.labels.dtype == np.uint8


def test_split_seed_ranges_disjoint():
    offsets = sorted(w.SPLIT_SEED_OFFSETS.values())
    assert all(b - a >= w.SPLIT_SIZE_LIMIT for a, b in zip(offsets, offsets[1:]))
    assert w.scene_seed("test", 123) == w.SPLIT_SEED_OFFSETS["test"] + 123
    with pytest.raises(ValueError):
        w.scene_seed("train", w.SPLIT_SIZE_LIMIT)
    with pytest.raises(ValueError):
        w.scene_seed("nope", 0)
    assert all(s // w.SPLIT_SIZE_LIMIT == 3 for s in w.EXAMPLE_SEEDS)


def test_object_counts_and_attributes(scenes):
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)
    assert counts[0] == 0 and counts[1:].min() > N_SCENES / 6  # 1-3 objects, roughly uniform
    lo, hi = w.R_RANGE
    assert lo == pytest.approx(0.14 * 64) and hi == pytest.approx(0.26 * 64)
    for s in scenes:
        for o in s.objects:
            assert 1 <= o.label <= 4 and o.colour in w.COLOURS
            assert lo <= o.r <= hi
            x0, y0, x1, y1 = w.shape_extent(o)
            assert x0 >= 1.0 and y0 >= 1.0 and x1 <= 63.0 and y1 <= 63.0
    labels = {o.label for s in scenes for o in s.objects}
    colours = {o.colour for s in scenes for o in s.objects}
    assert labels == {1, 2, 3, 4} and colours == set(w.COLOURS)


def test_gap_and_no_overlap(scenes):
    for s in scenes:
        masks = [w.shape_mask(o) for o in s.objects]
        for i in range(len(s.objects)):
            for j in range(i + 1, len(s.objects)):
                assert w.shape_gap(s.objects[i], s.objects[j]) >= w.MIN_GAP
                # pixel-centre sets at least 1.5 px apart
                pi = np.argwhere(masks[i]).astype(float)
                pj = np.argwhere(masks[j]).astype(float)
                d = np.sqrt(((pi[:, None, :] - pj[None, :, :]) ** 2).sum(-1)).min()
                assert d >= w.MIN_GAP


def test_labels_match_objects(scenes):
    for s in scenes:
        expected = np.zeros((64, 64), np.uint8)
        for o in s.objects:
            m = w.shape_mask(o)
            assert m.sum() > 0
            assert not expected[m].any()  # no overlap
            expected[m] = o.label
        assert np.array_equal(expected, s.labels)
        assert s.classes == [w.CLASS_NAMES[k] for k in sorted({o.label for o in s.objects})]


def test_shape_geometry_areas():
    r = 12.0
    c = (32.0, 32.0)
    area = {name: w.shape_mask(w.ShapeObject(k, "red", c, r)).sum() for k, name in enumerate(w.CLASS_NAMES) if k}
    expected = {
        "circle": np.pi * r**2,
        "square": (2 * 0.85 * r) ** 2,
        "triangle": 0.5 * (2 * r) * (1.8 * r),
        "cross": 2 * (2 * r) * (0.7 * r) - (0.7 * r) ** 2,
    }
    for name, a in expected.items():
        assert area[name] == pytest.approx(a, rel=0.06), name
    tri = w.shape_mask(w.ShapeObject(3, "red", c, r))
    rows = np.nonzero(tri.any(1))[0]
    assert rows.min() + 0.5 >= 32 - r and rows.max() + 0.5 <= 32 + 0.8 * r
    widths = tri.sum(1)[rows]
    assert widths[0] < widths[-1]  # upward: narrow at the top


def test_colours_within_noise(scenes):
    for s in scenes[:40]:
        bg = s.image[s.labels == 0].astype(float)
        assert 20 - 4 <= bg.mean() <= 90 + 4
        assert 4.0 < bg.std(0).mean() < 8.0
        for o in s.objects:
            px = s.image[w.shape_mask(o)].astype(float)
            mean = px.mean(0)
            assert np.abs(mean - np.array(w.COLOURS[o.colour])).max() < 4.0
            assert 5.0 < px.std(0).mean() < 10.0


def test_export_voc_round_trip(tmp_path):
    root = w.export_voc(tmp_path / "voc", {"val": 3, "test": 4}, workers=1)
    ids = (root / "ImageSets" / "Segmentation" / "test.txt").read_text().split()
    assert ids == [f"test_{i:06d}" for i in range(4)]
    assert (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0] == "val_000000"
    for i, sid in enumerate(ids):
        scene = w.make_split_scene("test", i)
        img = Image.open(root / "JPEGImages" / f"{sid}.png")
        lab = Image.open(root / "SegmentationClass" / f"{sid}.png")
        assert img.mode == "RGB" and lab.mode == "P"
        assert np.array_equal(np.asarray(img), scene.image)
        assert np.array_equal(np.asarray(lab), scene.labels)
        assert lab.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]


def test_example_scenes_cover_the_world():
    ex = w.example_scenes()
    assert {o.label for s in ex for o in s.objects} == {1, 2, 3, 4}
    assert {o.colour for s in ex for o in s.objects} == set(w.COLOURS)
    assert {len(s.objects) for s in ex} == {1, 2, 3}


def test_caption_full_and_words(scenes):
    for s in scenes[:30]:
        text = cap.full_caption(s)
        words = text.split()
        assert set(words) <= set(cap.VOCABULARY)
        for o in s.objects:
            assert o.name in words and o.colour in words
        assert words.count("a") == len(s.objects)


def test_caption_sampling_statistics(scenes):
    rng = np.random.default_rng(0)
    n_obj = n_col = n_pos = n_empty = total = 0
    for _ in range(10):
        for s in scenes:
            text = cap.sample_caption(s, rng)
            total += 1
            if not text:
                n_empty += 1
                continue
            assert set(text.split()) <= set(cap.VOCABULARY)
            for phrase in text.split(" and "):
                n_obj += 1
                ws = phrase.split()
                n_col += any(c in ws for c in w.COLOURS)
                n_pos += any(p in ws for p in cap.POSITION_WORDS)
                assert ws[0] == "a" and ws[-1] in w.SHAPE_NAMES
    assert n_empty / total == pytest.approx(cap.P_EMPTY, abs=0.03)
    assert 1 - n_col / n_obj == pytest.approx(cap.P_DROP_COLOUR, abs=0.04)
    assert 1 - n_pos / n_obj == pytest.approx(cap.P_DROP_POSITION, abs=0.04)


def test_caption_sampling_deterministic(scenes):
    a = [cap.sample_caption(s, np.random.default_rng(7)) for s in scenes[:20]]
    b = [cap.sample_caption(s, np.random.default_rng(7)) for s in scenes[:20]]
    assert a == b


def test_position_words():
    assert cap.position_phrase(10.0, 10.0) == "top left"
    assert cap.position_phrase(54.0, 54.0) == "bottom right"
    assert cap.position_phrase(32.0, 10.0) == "top"
    assert cap.position_phrase(10.0, 32.0) == "left"
    assert cap.position_phrase(32.0, 32.0) == "center"


def test_vocabulary_tokenises_to_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    from research.shapes.tokenizer import save_tokenizer

    tok = CLIPTokenizer.from_pretrained(save_tokenizer(cap.VOCABULARY, tmp_path / "tok"))
    for word in cap.VOCABULARY:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
