"""Segment-then-edit (issue 21): mask helpers by known answers, and the edit on a tiny random SD model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsegmenter.cli.edit import edit_command
from diffsegmenter.editing import (
    EditSettings,
    dilate_mask,
    edit_segmented,
    feather_mask,
    latent_mask,
    paste_back,
    vae_round_trip_error,
    verify_share,
)
from diffsegmenter.io.paths import collect_jobs

FAST = {"steps": 2, "dilate": 1, "feather": 1}


def _image(seed: int = 0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 60, size=(*size, 3), dtype=np.uint8)
    img[8:20, 10:22] = (200, 40, 40)
    return img


# ---------------------------------------------------------------------------------------------------------- helpers
def test_dilate_single_pixel_gives_a_disk():
    m = torch.zeros(7, 7, dtype=torch.bool)
    m[3, 3] = True
    d1 = dilate_mask(m, 1)
    assert d1.dtype == torch.bool
    assert d1.sum() == 5 and d1[2, 3] and d1[3, 2] and not d1[2, 2]  # a plus: dy² + dx² <= 1
    d2 = dilate_mask(m, 2)
    assert d2.sum() == 13  # the radius-2 digital disk
    assert torch.equal(dilate_mask(m, 0), m)


def test_dilate_at_the_border_and_empty():
    m = torch.zeros(5, 5, dtype=torch.bool)
    assert not dilate_mask(m, 3).any()
    m[0, 0] = True
    assert dilate_mask(m, 1).sum() == 3
    with pytest.raises(ValueError, match=">= 0"):
        dilate_mask(m, -1)


def test_feather_ramps_inside_the_mask_only():
    m = torch.zeros(9, 9, dtype=torch.bool)
    m[2:7, 2:7] = True
    w = feather_mask(m, 1)
    assert w.dtype == torch.float32
    assert torch.all(w[~m] == 0)  # never outside the mask
    assert torch.all(w[3:6, 3:6] == 1.0)
    ring = m.clone()
    ring[3:6, 3:6] = False
    assert torch.allclose(w[ring], torch.tensor(0.5))
    w2 = feather_mask(m, 2)  # edge 1/3, next ring 2/3, centre 1
    assert w2[2, 4] == pytest.approx(1 / 3) and w2[3, 4] == pytest.approx(2 / 3) and w2[4, 4] == 1.0
    assert torch.equal(feather_mask(m, 0), m.float())
    full = torch.ones(4, 4, dtype=torch.bool)
    assert torch.all(feather_mask(full, 2) == 1.0)  # the image border is not an edge


def test_latent_mask_any_coverage():
    r = torch.zeros(8, 8, dtype=torch.bool)
    r[0, 0] = True
    lm = latent_mask(r, (4, 4))
    assert lm.shape == (4, 4) and lm.dtype == torch.float32
    assert lm[0, 0] == 1 and lm.sum() == 1


def test_paste_back_keeps_zero_weight_pixels_exactly():
    a = np.full((4, 4, 3), 10, np.uint8)
    b = np.full((4, 4, 3), 250, np.uint8)
    w = np.zeros((4, 4), np.float32)
    w[1, 1], w[2, 2] = 1.0, 0.5
    out = paste_back(a, b, w)
    assert out.dtype == np.uint8
    assert out[1, 1, 0] == 250 and out[2, 2, 0] == 130 and out[0, 0, 0] == 10
    assert np.array_equal(out[w == 0], a[w == 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"dilate": -1}, "dilate"),
        ({"guidance": -1.0}, "guidance"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"resolution": 3}, "resolution"),
        ({"candidates": 0}, "candidates"),
    ],
)
def test_settings_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EditSettings(**kwargs)


# ---------------------------------------------------------------------------------------------------------- the edit
def _edit(seg, img, **kw):
    kw = {**FAST, **kw}
    return seg.edit(img, "bird", "a cat", classes=["bird", "dog"], tau=0.3, progress=False, **kw)


def test_edit_shapes_dtype_and_untouched_outside(tiny_segmenter):
    img = _image(size=(30, 34))  # not square, not the native size
    res = _edit(tiny_segmenter, img)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    assert res.mask.shape == img.shape[:2] and res.mask.dtype == np.float32
    assert res.mask.min() >= 0.0 and res.mask.max() <= 1.0
    assert res.region.shape == img.shape[:2] and res.region.dtype == bool
    assert res.segmentation.classes == ["bird", "dog"]
    assert res.edited, "the tiny model labels some pixels bird at tau 0.3"
    outside = ~res.region
    assert outside.any()
    assert np.array_equal(res.image[outside], img[outside])  # exactly, thanks to the paste-back
    assert np.all(res.mask[outside] == 0)
    assert not np.array_equal(res.image, img)


def test_edit_is_deterministic_by_seed(tiny_segmenter):
    img = _image(1)
    a = _edit(tiny_segmenter, img, seed=3)
    b = _edit(tiny_segmenter, img, seed=3)
    c = _edit(tiny_segmenter, img, seed=4)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_edit_guidance_one_and_partial_strength_run(tiny_segmenter):
    img = _image(2)
    res = _edit(tiny_segmenter, img, guidance=1.0, strength=0.5, steps=4)
    assert res.image.shape == img.shape


def test_edit_nothing_found_returns_the_image(tiny_segmenter):
    img = _image(3)
    res = tiny_segmenter.edit(img, "bird", "a cat", classes=["bird"], tau=1.0, progress=False, **FAST)
    assert not res.edited
    assert np.array_equal(res.image, img)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"target": "cat", "classes": ["bird", "dog"]}, "not among the classes"),
        ({"tau": 1.5}, "tau must be"),
        ({"tau": -0.1}, "tau must be"),
        ({"target": ""}, "empty"),
        ({"steps": 0}, "steps"),
    ],
)
def test_edit_bad_input_says_how_to_fix(tiny_segmenter, kwargs, match):
    args = {"target": "bird", "prompt": "a cat", "classes": ["bird", "dog"], **kwargs}
    with pytest.raises(ValueError, match=match):
        tiny_segmenter.edit(_image(), args.pop("target"), args.pop("prompt"), progress=False, **args)


def test_edit_without_classes_uses_the_target_alone(tiny_segmenter):
    res = tiny_segmenter.edit(_image(), "bird", "a cat", tau=0.3, progress=False, **FAST)
    assert res.segmentation.classes == ["bird"]


def test_vae_round_trip_error_is_a_number(tiny_segmenter):
    err = vae_round_trip_error(tiny_segmenter.backbone, [_image()])
    assert 0.0 <= err <= 255.0


def test_edit_command_writes_pngs(tiny_segmenter, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_image(i)).save(folder / f"x{i}.png")
    written = edit_command(
        [folder],
        tmp_path / "out",
        target="bird",
        prompt="a cat",
        classes=["bird", "dog"],
        tau=0.3,
        settings=EditSettings(**FAST),
        save_mask=True,
        progress=False,
        segmenter=tiny_segmenter,
    )
    assert [p.name for p in written.written] == ["x0.png", "x1.png"] and written.skipped == []
    assert (tmp_path / "out" / "x0.mask.png").exists()
    one = edit_command(
        [folder / "x0.png"],
        tmp_path / "edited.png",
        target="bird",
        prompt="a cat",
        classes=["bird", "dog"],
        tau=0.3,
        settings=EditSettings(**FAST),
        progress=False,
        segmenter=tiny_segmenter,
    )
    assert one.written == [tmp_path / "edited.png"]
    assert np.asarray(Image.open(one.written[0])).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="PNG"):
        edit_command([folder / "x0.png"], tmp_path / "e.jpg", target="bird", prompt="a cat", segmenter=tiny_segmenter)
    with pytest.raises(ValueError, match="prompt is empty"):
        edit_command([folder], tmp_path / "o", target="bird", prompt="", segmenter=tiny_segmenter)


def test_edit_never_replaces_inputs_and_skips_only_what_it_cannot_read(tiny_model_dir, tmp_path, capsys):
    # `edit folder --out folder` replaced every input PNG by its edit; `--save-mask` could write a.png's mask over the
    # edit of an input named a.mask.png; `--out` naming a file failed after the model ran; one corrupt image stopped
    # the run and unusable inputs were dropped without a word. All refused (exit 2) before the model loads, or
    # skipped and listed (exit 1) with the other images still edited.
    from PIL import Image

    from diffsegmenter import cli

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(_image()).save(folder / name)
    inputs = {p.name: p.read_bytes() for p in folder.iterdir()}
    base = ["--target", "cat", "--prompt", "a dog", "--model", str(tiny_model_dir), "--steps", "2", "--quiet"]
    for argv, match in (
        (["edit", str(folder), "--out", str(folder), *base], "is the input folder"),
        (["edit", str(folder / "a.png"), "--out", str(folder / "a.png"), *base], "would replace the input"),
        (["edit", str(folder), "--out", str(folder / "a.png"), *base], "is a file"),
    ):
        assert cli.main(argv) == 2, argv
        assert match in capsys.readouterr().err
    masked = tmp_path / "masked"
    masked.mkdir()
    Image.fromarray(_image()).save(masked / "a.png")
    Image.fromarray(_image()).save(masked / "a.mask.png")
    assert cli.main(["edit", str(masked), "--out", str(tmp_path / "m"), *base, "--save-mask"]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # nothing written, the model never ran
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == inputs

    (folder / "c.png").write_bytes(b"not an image")  # sorts between b and d
    Image.fromarray(_image()).save(folder / "d.png")
    (folder / "e.heic").write_bytes(b"\0" * 64)  # an image type that is not read
    out = tmp_path / "out"
    assert cli.main(["edit", str(folder), "--out", str(out), *base]) == 1
    err = capsys.readouterr().err
    assert "c.png" in err and "e.heic" in err and "2 input(s) skipped" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "d.png"]
    listed = json.loads((out / "skipped.json").read_text())
    assert sorted(Path(item["path"]).name for item in listed) == ["c.png", "e.heic"]


def test_an_edit_folder_resumes_and_never_replaces_edits_made_with_other_settings(tiny_model_dir, tmp_path, capsys):
    # `edit folder --out edits/` used to redo every image on a rerun, and a rerun with another prompt replaced the
    # earlier edits under the same names without a word; a folder's sub-folders had to have unique stems.
    from PIL import Image

    from diffsegmenter import cli

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_image(0)).save(folder / "a.png")
    Image.fromarray(_image(1)).save(folder / "sub" / "a.png")  # same stem, kept apart by its sub-folder
    out = tmp_path / "edits"
    base = ["edit", str(folder), "--out", str(out), "--target", "cat", "--model", str(tiny_model_dir)]
    fast = ["--steps", "2", "--quiet", "--save-mask"]
    assert cli.main([*base, "--prompt", "a dog", *fast]) == 0
    made = {p: p.read_bytes() for p in (out / "a.png", out / "sub" / "a.png", out / "sub" / "a.mask.png")}
    sidecar = json.loads((out / "sub" / "a.json").read_text())
    assert Path(sidecar["source"]) == folder / "sub" / "a.png" and sidecar["request"]["prompt"] == "a dog"
    assert (sidecar["edit"], sidecar["mask"]) == ("a.png", "a.mask.png") and isinstance(sidecar["edited"], bool)
    jobs = collect_jobs([str(out)], tmp_path / "masks")  # segmenting the edits takes them, not their masks
    assert sorted(job.path.relative_to(out).as_posix() for job in jobs) == ["a.png", "sub/a.png"]

    (out / "a.png").unlink()  # as if the first run had stopped before this image
    assert cli.main([*base, "--prompt", "a dog", "--steps", "2", "--save-mask"]) == 0  # not --quiet: the summary
    assert (out / "a.png").read_bytes() == made[out / "a.png"]  # redone, same seed: the same edit
    assert "1 already done" in capsys.readouterr().out

    assert cli.main([*base, "--prompt", "a bird", *fast]) == 2  # refused before the model loads
    err = capsys.readouterr().err
    assert "edited earlier with other settings" in err and "'a dog' -> 'a bird'" in err and "--overwrite" in err
    assert cli.main([*base, "--prompt", "a dog", *fast, "--dtype", "bf16"]) == 2  # another precision: other edits
    assert "dtype: 'torch.float32' -> 'torch.bfloat16'" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in made} == made
    assert cli.main([*base, "--prompt", "a bird", *fast, "--overwrite"]) == 0
    assert json.loads((out / "sub" / "a.json").read_text())["request"]["prompt"] == "a bird"


def test_the_edit_subcommand_writes_the_edit_and_refuses_bad_settings(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from diffsegmenter import cli

    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    out = tmp_path / "edited.png"
    argv = [
        "edit",
        str(src),
        "--target",
        "cat",
        "--prompt",
        "a dog",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
    ]
    assert cli.main([*argv, "--steps", "2", "--quiet", "--save-mask"]) == 0
    edited = np.asarray(Image.open(out))
    assert edited.shape == (32, 32, 3) and edited.dtype == np.uint8
    assert (tmp_path / "edited.mask.png").is_file()
    assert cli.main([*argv, "--strength", "2"]) == 2  # refused before the model loads
    assert "strength must be in (0, 1]" in capsys.readouterr().err
    assert cli.main([*argv, "--candidates", "2"]) == 2
    assert "--new-class" in capsys.readouterr().err
    argv2 = [*argv, "--steps", "2", "--quiet", "--candidates", "2", "--new-class", "dog", "--classes", "cat,bird"]
    assert cli.main(argv2) == 0
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------------------- candidates
def test_verify_share_known_answer():
    labels = np.array([[0, 2, 2], [1, 2, 0]])
    found = np.array([[True, True, True], [True, False, False]])
    assert verify_share(labels, found, 2) == pytest.approx(0.5)
    assert verify_share(labels, found, 1) == pytest.approx(0.25)
    assert verify_share(labels, np.zeros_like(found), 2) == 0.0


def test_candidates_keep_the_best_rechecked_edit(tiny_segmenter):
    """Each candidate k is the single edit at seed + k; its score is the share of the found region its
    re-segmentation (image classes + new class, same seed and tau) labels the new class; the best is kept."""
    seg, img, seed = tiny_segmenter, _image(4), 2
    found_res = seg.segment(img, classes=["bird", "dog"], seed=seed, tau=0.3)
    settings = EditSettings(**FAST, candidates=3)
    best = edit_segmented(
        seg, [img], [found_res], ["bird"], ["a cat"], new_classes="cat", settings=settings, seed=seed, progress=False
    )[0]
    assert best.new_class == "cat" and len(best.candidate_scores) == 3
    found = found_res.labels == 1
    singles, shares = [], []
    for k in range(3):
        one = edit_segmented(
            seg, [img], [found_res], ["bird"], ["a cat"], settings=EditSettings(**FAST), seed=seed + k, progress=False
        )[0]
        assert one.candidate_scores is None and one.seed == seed + k
        check = seg.segment(one.image, classes=["bird", "dog", "cat"], seed=seed, tau=0.3)
        singles.append(one.image)
        shares.append(verify_share(check.labels, found, 3))
    assert best.candidate_scores == pytest.approx(shares)
    k_best = int(np.argmax(shares))
    assert k_best == 1, "this image and seed were picked so that the best is neither the first nor the last"
    assert best.seed == seed + k_best
    assert np.array_equal(best.image, singles[k_best])
    assert np.array_equal(best.image[~best.region], img[~best.region])


def test_candidates_need_the_new_class(tiny_segmenter):
    with pytest.raises(ValueError, match="new_class"):
        tiny_segmenter.edit(_image(), "bird", "a cat", classes=["bird"], progress=False, candidates=2, **FAST)


# ------------------------------------------------------------------------------------------------- names, limits
def test_target_and_new_class_match_their_list_as_duplicates_do(tiny_segmenter):
    """Class lists refuse 'cat' beside 'Cat', so 'Bird' is the listed 'bird' (it was 'not among the classes'), and a
    new class 'Cat' is the listed 'cat' (the check segmentation refused the pair as duplicates, after one edit)."""
    seg, img = tiny_segmenter, _image(4)
    res = seg.edit(img, "Bird", "a cat", classes=["bird", "dog"], tau=0.3, progress=False, **FAST)
    assert res.target == "bird" and res.segmentation.classes == ["bird", "dog"] and res.edited
    same = seg.edit(img, "bird", "a cat", classes=["bird", "dog"], tau=0.3, progress=False, **FAST)
    assert np.array_equal(res.image, same.image)
    best = seg.edit(
        img, "BIRD", "a cat", classes=["bird", "cat"], new_class="Cat", tau=0.3, progress=False, candidates=2, **FAST
    )
    assert best.target == "bird" and len(best.candidate_scores) == 2


@pytest.mark.parametrize("seed", [1.5, True, "3", -1])
def test_edit_seeds_follow_segments_rule(tiny_segmenter, seed):
    with pytest.raises(ValueError, match="seed must be"):
        tiny_segmenter.edit(_image(), "bird", "a cat", classes=["bird"], seed=seed, progress=False, **FAST)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": " ".join(["cat"] * 100)}, "tokens long"),
        ({"steps": 1001}, "steps=1001 does not fit"),
    ],
)
def test_a_prompt_or_steps_the_model_cannot_take_are_refused_before_segmenting(tiny_segmenter, kwargs, match):
    seg = tiny_segmenter

    def segment(*args, **kw):  # pragma: no cover - must not be reached
        raise AssertionError("segmented before the edit's prompt and steps were checked")

    seg.segment = segment
    args = {"prompt": "a cat", **kwargs}
    with pytest.raises(ValueError, match=match):
        seg.edit(_image(), "bird", args.pop("prompt"), classes=["bird"], progress=False, **args)


def test_one_file_edits_check_their_output_before_the_model_and_say_what_was_left(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from diffsegmenter import cli

    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    base = ["edit", str(src), "--target", "cat", "--prompt", "a dog", "--steps", "2", "--quiet"]
    missing = ["--model", str(tmp_path / "no-model")]  # a run that got past the checks would fail on this
    (tmp_path / "d.png").mkdir()
    assert cli.main([*base, "--out", str(tmp_path / "d.png"), *missing]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main([*base, "--out", str(tmp_path / "file" / "x.png"), *missing]) == 2
    assert "not a folder" in capsys.readouterr().err
    for suffix in (".tif", ".gif", ".heic"):  # an image name is never taken for a folder name
        assert cli.main([*base, "--out", str(tmp_path / f"out{suffix}"), *missing]) == 2
        assert "written as PNG" in capsys.readouterr().err
        assert not (tmp_path / f"out{suffix}").exists()
    # two inputs and --out two.png made a folder named two.png holding both edits
    Image.fromarray(_image()).save(tmp_path / "in2.png")
    two = ["edit", str(src), str(tmp_path / "in2.png"), *base[2:]]
    assert cli.main([*two, "--out", str(tmp_path / "two.png"), *missing]) == 2
    assert "names one image file, but 2 images were given" in capsys.readouterr().err
    assert not (tmp_path / "two.png").exists()
    model = ["--model", str(tiny_model_dir)]
    assert cli.main([*base, "--out", str(tmp_path / "e.png"), "--tau", "1", *model]) == 0
    err = capsys.readouterr().err
    assert "1 of them unchanged: no pixel was labelled 'cat'" in err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e.png")), _image())
    assert cli.main([*base, "--out", str(tmp_path / "f.png"), "--max-pixels", "100", *model]) == 1
    err = capsys.readouterr().err
    assert "too large" in err and "nothing was edited" in err and not (tmp_path / "f.png").exists()


def test_a_write_error_on_one_file_stops_with_status_3(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from diffsegmenter import cli
    from diffsegmenter.batch import edits

    def full_disk(path, image):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edits, "save_image_png", full_disk)
    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    argv = ["edit", str(src), "--target", "cat", "--prompt", "a dog", "--steps", "2", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "e.png"), "--model", str(tiny_model_dir)]) == 3
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'e.png'} (No space left on device)" in err and "run stopped" in err


def test_a_folder_edit_with_a_prompt_too_long_is_one_usage_error(tiny_model_dir, tmp_path, capsys):
    """It skipped every image one by one (exit 1) after loading each."""
    from PIL import Image

    from diffsegmenter import cli

    for i in range(2):
        Image.fromarray(_image(i)).save(tmp_path / f"x{i}.png")
    long = " ".join(["cat"] * 100)
    argv = ["edit", str(tmp_path), "--target", "cat", "--prompt", long, "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main([*argv, "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "tokens long" in err and "skipped" not in err


def test_huge_dilate_and_feather_radii_cost_no_more_than_the_image_allows():
    # dilate=10**6 asked torch for 32 TB; feather=200 took 39 s on a 40 x 48 mask, 10**4 never ended
    mask = torch.zeros(40, 48, dtype=torch.bool)
    mask[10:30, 12:40] = True
    assert dilate_mask(mask, 10**6).all()
    assert torch.equal(dilate_mask(mask, 10**6), dilate_mask(mask, 40 + 48))
    weight = feather_mask(mask, 10**4)
    assert weight[~mask].eq(0).all() and weight.max() == pytest.approx(10 / (10**4 + 1))  # 10 steps to the edge


def test_dilate_and_feather_match_the_disk_definition_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        height, width = torch.randint(1, 24, (2,), generator=generator).tolist()
        mask = torch.rand(height, width, generator=generator) < torch.rand(1, generator=generator).item()
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        points = torch.stack([yy.flatten(), xx.flatten()], 1).float()
        squared = torch.cdist(points, points).pow(2).round()  # (P, P) squared distances
        for radius in (1, 2, 3, 6):
            near = (squared <= radius * radius) & mask.flatten()[None]
            assert torch.equal(dilate_mask(mask, radius), near.any(1).view(height, width))
            outside = ~mask.flatten()
            expected = mask.float().flatten()
            if outside.any() and mask.any():
                steps = torch.ceil(squared[:, outside].min(1).values.sqrt() - 1e-6)
                ring = mask.flatten() & (steps <= radius)
                expected[ring] = steps[ring] / (radius + 1)
            assert torch.allclose(feather_mask(mask, radius).flatten(), expected), (height, width, radius)


def test_an_edit_run_refuses_another_file_under_a_name_already_edited(tiny_model_dir, tmp_path, capsys):
    # b/a.png after a/a.png into one --out was "already done": b's edit was a's
    from PIL import Image

    from diffsegmenter import cli

    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        Image.fromarray(_image(i)).save(tmp_path / folder / "a.png")
    out = tmp_path / "edits"
    base = ["--out", str(out), "--target", "cat", "--prompt", "a dog", "--model", str(tiny_model_dir)]
    assert cli.main(["edit", str(tmp_path / "a" / "a.png"), *base, "--steps", "2", "--quiet"]) == 0
    made = (out / "a.png").read_bytes()
    assert cli.main(["edit", str(tmp_path / "b" / "a.png"), *base, "--steps", "2", "--quiet"]) == 2
    assert "edited earlier from another file under the same name" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == made


def _second_run_is_refused(first: list[str], second: list[str], kept: Path, message: str, capsys) -> None:
    """``first`` runs (exit 0); ``second``, into the same folder, is refused (exit 2, ``message`` on stderr) and
    leaves the file ``kept`` that ``first`` wrote byte for byte."""
    from diffsegmenter import cli

    assert cli.main(first) == 0
    capsys.readouterr()
    before = kept.read_bytes()
    assert cli.main(second) == 2
    assert message in capsys.readouterr().err
    assert kept.read_bytes() == before


def _inputs(tmp_path: Path, files: list[tuple[str, str]]) -> None:
    """Save the test image as each ``(folder, name)`` under ``tmp_path``."""
    from PIL import Image

    for folder, name in files:
        (tmp_path / folder).mkdir()
        Image.fromarray(_image()).save(tmp_path / folder / name)


@pytest.mark.parametrize("first", ["edit", "segment"])
def test_edit_and_segment_results_do_not_share_a_folder(tiny_model_dir, tmp_path, capsys, first):
    # both write x.png (an edited image, a label map) and x.json; their requests share no setting that differed,
    # so a segment run into an edit run's folder replaced the edits with label maps (and the reverse), exit 0
    _inputs(tmp_path, [("in", "x.png")])
    src, out = tmp_path / "in", tmp_path / "out"
    model = ["--model", str(tiny_model_dir), "--quiet"]
    runs = {
        "edit": ["edit", str(src), "--out", str(out), "--target", "cat", "--prompt", "a dog", "--steps", "2", *model],
        "segment": ["segment", str(src), "--out", str(out), "--classes", "cat,dog", "--format", "png", *model],
    }
    second = "segment" if first == "edit" else "edit"
    _second_run_is_refused(
        runs[first], runs[second], out / "x.png", f"the results of an earlier `{first}` run", capsys
    )


def test_an_edit_mask_never_replaces_an_earlier_images_label_map(tiny_model_dir, tmp_path, capsys):
    # segment M/x.mask.png wrote x.mask.png (its label map); edit N/x.png --save-mask then wrote its mask over it
    _inputs(tmp_path, [("M", "x.mask.png"), ("N", "x.png")])
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_dir), "--quiet"]
    seg = ["segment", str(tmp_path / "M"), "--out", str(out), "--classes", "cat,dog", "--format", "png", *model]
    edit = ["edit", str(tmp_path / "N"), "--out", str(out), "--target", "cat", "--prompt", "a dog", "--steps", "2"]
    _second_run_is_refused(
        seg, [*edit, *model, "--save-mask"], out / "x.mask.png", "would write its output over", capsys
    )


def test_an_earlier_edited_image_is_never_replaced_by_another_images_output(tiny_model_dir, tmp_path, capsys):
    # an edit's sidecar names its edited image apart from "files": edit N/x.overlay.png, then segment M/x.png with
    # the overlay format replaced the edited image with an overlay, exit 0
    _inputs(tmp_path, [("N", "x.overlay.png"), ("M", "x.png")])
    out = tmp_path / "out"
    model = ["--model", str(tiny_model_dir), "--quiet"]
    edit = ["edit", str(tmp_path / "N"), "--out", str(out), "--target", "cat", "--prompt", "a dog", "--steps", "2"]
    seg = ["segment", str(tmp_path / "M"), "--out", str(out), "--classes", "cat,dog", "--format", "png,overlay"]
    _second_run_is_refused(
        [*edit, *model], [*seg, *model], out / "x.overlay.png", "would write its overlay over", capsys
    )
