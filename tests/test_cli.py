"""Tests for the ``diffsegmenter`` command (diffsegmenter.cli) on the tiny random model: every format's content,
the defaults-forwarding rule, resume after a SIGKILL, a folder of broken images, usage errors and the demo."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsegmenter import cli
from diffsegmenter.io import (
    colorize_scores,
    decode_rle_records,
    is_done,
    load_label_png,
    load_npz,
    load_rle_json,
    load_sidecar,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall

ALL_FORMATS = "png,overlay,heatmaps,rle,npz"
SHIPPED_MODEL = Path(cli.__file__).parents[1] / "models" / "shapes"


def _save_random(path: Path, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """A random RGB image of (height, width) `size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ parsing


def test_no_flags_forward_no_overrides() -> None:
    args = cli.build_parser().parse_args(["segment", "x.png", "--out", "o"])
    assert cli.config_overrides(args) == {}
    assert cli.load_kwargs(args) == {}
    assert args.model is None and args.classes is None and args.format is None and args.filter is None

    args = cli.build_parser().parse_args(
        ["segment", "x.png", "--out", "o", "--tau", "0.3", "--prompt-mode", "single", "--set", "emphasis=1.0"]
        + ["--set", "tau=0.9", "--batch-size", "4", "--dtype", "fp16", "--captioner", "none"]
    )
    assert cli.config_overrides(args) == {"emphasis": 1.0, "tau": 0.3, "prompt_mode": "single", "batch_size": 4}
    assert cli.load_kwargs(args) == {"dtype": torch.float16}  # --captioner none = no captioner = not forwarded


def test_speed_flags_reach_the_loaded_model(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    for argv, expected in (
        (["--compile"], {"compile": "default"}),
        (["--compile", "max-autotune", "--channels-last"], {"compile": "max-autotune", "channels_last": True}),
    ):
        args = cli.build_parser().parse_args(["eval", "--dataset", "voc21", "--root", "r", "--out", "o", *argv])
        assert cli.load_kwargs(args) == expected
    image = _save_random(tmp_path / "x.png")
    base = ["segment", str(image), "--model", str(tiny_model_dir), "--classes", "a", "--quiet"]
    with pytest.raises(SystemExit):  # refused by the parser, before any folder is made
        cli.main([*base, "--out", str(tmp_path / "o"), "--compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):  # an input after a bare --compile is read as its mode: refused, not lost
        cli.main(["segment", "--compile", str(image), "--out", str(tmp_path / "o")])
    assert "invalid choice" in capsys.readouterr().err
    code, _, stderr = _run([*base, "--out", str(tmp_path / "o"), "--channels-last"], capsys)
    assert code == 0, stderr


#: The arguments each subcommand needs besides the shared flags; a new subcommand must be added here.
REQUIRED_ARGS = {
    "segment": ["x.png", "--out", "o"],
    "demo": [],
    "eval": ["--dataset", "shapes", "--root", "r", "--out", "o"],
    "edit": ["x.png", "--target", "cat", "--prompt", "a dog", "--out", "o.png"],
    "serve": [],
}


@pytest.mark.parametrize("command", sorted(REQUIRED_ARGS))
@pytest.mark.parametrize(
    ("spelling", "dtype"),
    [("fp16", "float16"), ("float16", "float16"), ("bf16", "bfloat16"), ("bfloat16", "bfloat16")]
    + [("fp32", "float32"), ("float32", "float32")],
)
def test_every_subcommand_takes_the_shared_flags_and_each_dtype_spelling(command, spelling, dtype) -> None:
    assert set(REQUIRED_ARGS) == set(cli.COMMANDS)  # every registered subcommand is covered
    argv = [command, *REQUIRED_ARGS[command], "--model", "m", "--device", "cpu", "--dtype", spelling]
    args = cli.build_parser().parse_args([*argv, "--offline", "--set", "emphasis=1.0", "-v"])
    assert args.command == command and args.model == "m" and args.offline and args.verbose
    assert args.config_set == [("emphasis", 1.0)]
    assert cli.load_kwargs(args) == {"device": "cpu", "dtype": getattr(torch, dtype)}
    assert cli.config_overrides(args) == {"emphasis": 1.0}
    bare = cli.build_parser().parse_args([command, *REQUIRED_ARGS[command]])
    assert bare.model is None and bare.dtype is None and bare.config_set is None and not bare.offline
    assert cli.load_kwargs(bare) == {}
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([command, *REQUIRED_ARGS[command], "--dtype", "half"])
    assert info.value.code == 2


def test_each_subcommand_keeps_its_default_model(monkeypatch) -> None:
    import diffsegmenter
    from diffsegmenter.cli.evaluate import load_eval_segmenter
    from diffsegmenter.evaluation.harness import DEFAULT_MODEL

    for command in ("segment", "demo", "edit"):  # not forwarded: the library's default ('shapes') applies
        assert cli.build_parser().parse_args([command, *REQUIRED_ARGS[command]]).model is None
    loaded = []

    class FakeDiffSegmenter:
        @classmethod
        def from_pretrained(cls, model, **kwargs):
            loaded.append(model)

    monkeypatch.setitem(vars(diffsegmenter), "DiffSegmenter", FakeDiffSegmenter)
    for dataset in ("shapes", "voc21"):
        args = cli.build_parser().parse_args(["eval", "--dataset", dataset, "--root", "r", "--out", "o"])
        load_eval_segmenter(args)
    assert loaded == ["shapes", DEFAULT_MODEL] and DEFAULT_MODEL == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_parse_classes_and_formats() -> None:
    assert cli.parse_classes(" cat,  potted   plant ,sofa") == ["cat", "potted plant", "sofa"]
    assert cli.parse_formats("npz, png") == ["png", "npz"]
    assert cli.parse_formats(None) == list(cli.DEFAULT_FORMATS)
    for bad in ("cat,,sofa", "cat,Cat", ""):
        with pytest.raises(cli.CliError):
            cli.parse_classes(bad)
    with pytest.raises(cli.CliError, match="jpeg"):
        cli.parse_formats("png,jpeg")


def test_collect_jobs_keeps_subfolders_and_unique_names(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for rel in ("a/x.png", "b/x.png", "x.png", "x.jpg", "out/old.png"):
        _save_random(src / rel, (4, 4), 0)
    out = src / "out"  # an output folder inside the input folder is never read as input
    jobs = cli.collect_jobs([str(src), str(src / "x.png")], out)
    got = {(j.path.relative_to(src).as_posix(), j.out_dir.relative_to(out).as_posix(), j.stem) for j in jobs}
    assert got == {("a/x.png", "a", "x"), ("b/x.png", "b", "x"), ("x.jpg", ".", "x"), ("x.png", ".", "x.png")}
    with pytest.raises(cli.CliError, match="input folder"):
        cli.collect_jobs([str(src)], src)
    with pytest.raises(cli.CliError, match="replace an input"):  # x.png's label map would be src/x.png itself
        cli.collect_jobs([str(src / "x.png")], src)


# ------------------------------------------------------------------------------------------------ formats


def test_every_format_matches_the_library(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from diffsegmenter import DiffSegmenter

    src = tmp_path / "in"
    paths = [_save_random(src / "one" / "img.png", (40, 56), 1), _save_random(src / "two" / "img.png", (36, 36), 2)]
    out = tmp_path / "out"
    classes = ["circle", "square", "triangle"]
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", ",".join(classes)]
    code, stdout, _ = _run(argv + ["--format", ALL_FORMATS, "--tau", "0.45", "--seed", "3", "--quiet"], capsys)
    assert code == 0 and stdout == ""
    assert not (out / "skipped.json").exists()

    seg = DiffSegmenter.from_pretrained(tiny_model_dir, tau=0.45, seed=3)
    for path in paths:
        ref = seg.segment(path, classes=classes)
        folder, stem = out / path.parent.name, path.stem  # sub-folders kept: same-named files don't collide
        assert is_done(folder, stem, ALL_FORMATS.split(","))
        labels = load_label_png(folder / f"{stem}.png")
        np.testing.assert_array_equal(labels, ref.labels)
        assert len(np.unique(labels)) > 1  # a non-trivial comparison
        masks = decode_rle_records(load_rle_json(folder / f"{stem}.rle.json")["annotations"])
        assert list(masks) == classes
        for i, name in enumerate(classes, start=1):
            np.testing.assert_array_equal(masks[name], ref.labels == i)
            heat = np.asarray(Image.open(folder / f"{stem}.heatmaps" / f"{name}.png").convert("RGB"))
            np.testing.assert_array_equal(heat, colorize_scores(ref.scores[i - 1]))
        npz = load_npz(folder / f"{stem}.npz")
        np.testing.assert_allclose(npz["scores"], ref.scores, atol=1e-6)
        assert npz["classes"] == classes
        np.testing.assert_array_equal(npz["labels"], ref.labels)
        with Image.open(folder / f"{stem}.overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.width >= ref.labels.shape[1]
            assert overlay.height > ref.labels.shape[0]  # legend strip below the image
        sidecar = load_sidecar(folder / f"{stem}.json")
        assert sidecar["classes"] == classes and sidecar["tau"] == pytest.approx(0.45)
        assert sidecar["prompts"] == ref.prompts and Path(sidecar["source"]) == path


# ------------------------------------------------------------------------------------------------ resume


def _files(out: Path) -> dict[str, int]:
    """Every output file's modification time (the lock file, touched by every run, left out)."""
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name != ".diffsegmenter.lock"
    }


def test_interrupted_run_resumes_without_redoing_or_losing(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    src = tmp_path / "in"
    for i in range(8):
        _save_random(src / f"img{i}.png", (160, 200), 10 + i)
    out = tmp_path / "out"
    formats = ALL_FORMATS.split(",")
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b,c,d"]
    argv += ["--format", ALL_FORMATS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffsegmenter", *argv, "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while not any(out.glob("img?.json")):  # a sidecar (img<i>.json): the first finished image
            assert proc.poll() is None, f"the CLI exited early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no image finished within 120 s"
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

    done = [f"img{i}" for i in range(8) if is_done(out, f"img{i}", formats)]
    assert 1 <= len(done) < 8, "the kill should land mid-batch"
    for sidecar in out.glob("img?.json"):  # a sidecar only ever marks a complete image
        assert is_done(out, sidecar.stem, formats)
    before = {name: t for name, t in _files(out).items() if name.split(".")[0] in done}
    (out / f".img7.png.{proc.pid}.0123abcd.tmp").write_bytes(b"partial")  # as a kill during a write leaves

    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    assert f"8 image(s): {8 - len(done)} segmented, {len(done)} already done, 0 skipped" in stdout
    assert all(is_done(out, f"img{i}", formats) for i in range(8))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    after = _files(out)
    assert {name: after[name] for name in before} == before  # finished images were not rewritten


def test_a_rerun_with_other_settings_never_replaces_finished_images_unasked(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    """It recomputed them silently (an INFO line), and a killed rerun left a folder of two settings."""
    src = tmp_path / "in"
    for i in range(2):
        _save_random(src / f"img{i}.png", (40, 48), 30 + i)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    argv += ["--format", "png,coco", "--quiet"]
    assert _run(argv, capsys)[0] == 0
    before = _files(out)
    code, _, stderr = _run([*argv, "--tau", "0.3"], capsys)
    assert code == 2
    assert "2 image(s) were segmented earlier with other settings (config.tau: " in stderr
    assert "-> 0.3)" in stderr and "--overwrite" in stderr
    assert _files(out) == before  # nothing rewritten, not even the run-level coco file
    # another class list into the same folder names that setting; the same settings resume as before
    assert "classes: ['a', 'b'] -> ['a', 'c']" in _run([*argv[:7], "a,c", *argv[8:]], capsys)[2]
    # so does another precision (its labels differ): it was "already done"
    assert "dtype: 'torch.float32' -> 'torch.bfloat16'" in _run([*argv, "--dtype", "bf16"], capsys)[2]
    images = {name: t for name, t in before.items() if name.startswith("img")}  # run-level files are rewritten whole
    assert _run(argv, capsys)[0] == 0 and {name: _files(out)[name] for name in images} == images
    assert _run([*argv, "--tau", "0.3", "--overwrite"], capsys)[0] == 0
    assert load_sidecar(out / "img0.json")["tau"] == pytest.approx(0.3)


def test_an_image_added_later_does_not_take_over_a_finished_images_name(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    # dup.png is done as "dup"; then dup.jpg is added, which sorts first and used to take the name "dup",
    # overwriting dup.png's finished outputs (dup.png was then recomputed as "dup.png"). Names now stay put.
    src = tmp_path / "in"
    _save_random(src / "dup.png", (24, 32), 1)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run(argv, capsys)[0] == 0
    before = {name: t for name, t in _files(out).items() if name.startswith("dup.")}  # not the run's lock file
    assert "dup.png" in before and "dup.json" in before
    _save_random(src / "dup.jpg", (24, 32), 2)
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "2 image(s): 1 segmented, 1 already done" in stdout
    after = _files(out)
    assert {name: after[name] for name in before} == before  # dup.png's outputs untouched
    assert json.loads((out / "dup.jpg.json").read_text())["source"].endswith("dup.jpg")
    assert json.loads((out / "dup.json").read_text())["source"].endswith("dup.png")


def test_a_label_png_numbered_by_an_older_version_is_redone(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    # label PNGs now number the run's classes; one written before (its sidecar has no png_classes) numbered only the
    # classes its image kept, and a resumed run would have left both numberings in one folder
    image = _save_random(tmp_path / "in" / "x.png", (24, 32), 3)
    out = tmp_path / "out"
    argv = ["segment", str(image), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run(argv, capsys)[0] == 0
    sidecar = json.loads((out / "x.json").read_text())
    assert sidecar["png_classes"] == ["a", "b"]
    assert "0 segmented, 1 already done" in _run(argv, capsys)[1]
    del sidecar["png_classes"]
    (out / "x.json").write_text(json.dumps(sidecar))
    assert "1 segmented, 0 already done" in _run(argv, capsys)[1]
    assert json.loads((out / "x.json").read_text())["png_classes"] == ["a", "b"]


def test_files_left_by_a_run_with_other_settings_are_not_reused(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    # run 1 (tau 0.2) writes png, overlay and npz; run 2 (tau 0.9, --overwrite) rewrites the png only; run 3 (tau 0.9)
    # asks for all three: the overlay and npz on disk are run 1's, which run 2's sidecar does not list. They were
    # counted as done (the resume checked the files' existence and the settings, not that they were written with the
    # sidecar).
    image = _save_random(tmp_path / "in" / "x.png", (24, 32), 3)
    out = tmp_path / "out"
    base = ["segment", str(image), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run([*base, "--tau", "0.2", "--format", "png,overlay,npz"], capsys)[0] == 0
    assert _run([*base, "--tau", "0.9", "--format", "png", "--overwrite"], capsys)[0] == 0  # other settings: asked
    assert not is_done(out, "x", ["png", "overlay", "npz"]) and is_done(out, "x", ["png"])
    code, stdout, _ = _run([*base, "--tau", "0.9", "--format", "png,overlay,npz"], capsys)
    assert code == 0 and "1 segmented, 0 already done" in stdout
    fresh = tmp_path / "fresh"
    assert _run([*base[:3], str(fresh), *base[4:], "--tau", "0.9", "--format", "png,overlay,npz"], capsys)[0] == 0
    for name in ("x.png", "x.overlay.png", "x.npz"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------ bad inputs


def test_a_file_name_that_is_not_utf8_is_skipped_and_reported(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    # a Latin-1 name (caf\xe9.png) left label maps without a sidecar, then the report crashed writing skipped.json
    # (UnicodeEncodeError: surrogates not allowed), on every rerun, with no summary
    src = tmp_path / "in"
    _save_random(src / "good.png", (24, 32), 1)
    bad = os.fsdecode(bytes(src) + b"/caf\xe9.png")
    shutil.copy(src / "good.png", bad)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    code, _, stderr = _run(argv, capsys)
    assert code == 1
    assert is_done(out, "good", cli.DEFAULT_FORMATS)
    (item,) = json.loads((out / "skipped.json").read_text(encoding="utf-8"))
    assert item["path"].endswith("caf\\xe9.png") and "not valid UTF-8" in item["reason"]
    assert "caf\\xe9.png" in stderr
    assert all(name.isascii() for name in os.listdir(out))  # no outputs of the skipped image


@pytest.mark.parametrize("where", ["out", "cwd"])
def test_a_full_path_that_is_not_utf8_is_refused_before_any_work(
    tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch, where: str
) -> None:
    # a folder above named in Latin-1: every image was segmented, then dataset.yaml (the output folder's full path)
    # or labelstudio_tasks.json (each image's) could not be written: exit 3 on every rerun, naming no path
    latin = Path(os.fsdecode(bytes(tmp_path) + b"/dir_\xe9"))
    _save_random(latin / "in" / "x.png", (24, 32), 1)
    monkeypatch.chdir(latin)
    out, fmt = ("out_" + os.fsdecode(b"\xe9"), "png,yolo") if where == "out" else ("out", "png,labelstudio")
    argv = ["segment", "in", "--out", out, "--model", str(tiny_model_dir), "--classes", "a,b", "--format", fmt]
    code, _, stderr = _run(argv, capsys)
    assert code == 2 and "not valid UTF-8" in stderr and "dir_\\xe9" in stderr
    assert not (latin / out / "x.png").exists()


@pytest.mark.parametrize(
    ("earlier", "fmt"),
    [("x.coco.png", "png,coco"), ("x.overlay.png", "png,overlay"), ("X.coco.png", "png,coco")],  # X: one file on macOS
)
def test_outputs_over_an_earlier_images_results_are_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys, earlier: str, fmt: str
) -> None:
    # x.png's COCO part x.coco.json replaced the sidecar of x.coco.png segmented earlier (its overlay x.overlay.png
    # the label map of x.overlay.png): rc 0, the other image's results orphaned or wrong
    src = tmp_path / "in"
    first = _save_random(src / earlier, (24, 32), 1)
    second = _save_random(src / "x.png", (24, 32), 2)
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run(["segment", str(first), *base, "--format", "png"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, stderr = _run(["segment", str(second), *base, "--format", fmt], capsys)
    assert code == 2 and "an earlier run wrote for the input" in stderr and earlier in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _run(["segment", str(first), *base, "--format", "png"], capsys)[0] == 0  # still done, still its own


@pytest.mark.parametrize("name", ["scene.coco.png", "scene.ls.png"])
def test_an_image_named_like_a_part_is_done_on_a_rerun(tmp_path: Path, tiny_model_dir: Path, capsys, name) -> None:
    # scene.coco.png's own sidecar scene.coco.json was read as a COCO part, failed that check, and the image was
    # segmented again on every rerun
    src = tmp_path / "in"
    _save_random(src / name, (24, 32), 1)
    argv = ["segment", str(src), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run([*argv, "--format", "png"], capsys)[0] == 0
    code, stdout, _ = _run([*argv, "--format", "png"], capsys)
    assert code == 0 and "0 segmented, 1 already done" in stdout, stdout


def test_folder_with_broken_images_reports_them_and_exits_1(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    src = tmp_path / "in"
    _save_random(src / "good1.png", (24, 32), 1)
    _save_random(src / "good2.jpg", (32, 24), 2)
    (src / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    (src / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(src / "cmyk.jpg", quality=95)
    wide = (np.arange(20 * 28, dtype=np.uint16).reshape(20, 28) * 117).astype(np.uint16)
    Image.fromarray(wide).save(src / "gray16.png")
    rgba = np.random.default_rng(4).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(src / "rgba.png")

    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    code, stdout, stderr = _run(argv + ["--images-per-batch", "3"], capsys)
    assert code == 1
    for stem in ("good1", "good2", "cmyk", "gray16", "rgba"):
        assert is_done(out, stem, cli.DEFAULT_FORMATS), stem
    assert not (out / "corrupt.json").exists() and not (out / "truncated.json").exists()
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(Path(item["path"]).name for item in skipped) == ["corrupt.png", "truncated.png"]
    assert all(item["reason"] for item in skipped)
    assert "truncated" in {Path(i["path"]).stem: i["reason"] for i in skipped}["truncated"]
    assert "7 image(s): 5 segmented, 0 already done, 2 skipped" in stdout
    assert "corrupt.png" in stderr and "truncated.png" in stderr and "Traceback" not in stderr


@dataclasses.dataclass
class _Result:
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float = 0.4


class _FailsOnSecond:
    """A segmenter whose model call fails for any batch holding the second image (a 7-pixel-wide one)."""

    def segment(self, images, classes=None, filter=None):
        if any(img.shape[1] == 7 for img in images):
            raise RuntimeError("boom")
        return [
            _Result(np.zeros(img.shape[:2], np.int32), np.zeros((1, *img.shape[:2]), np.float32), ["a"], ["p"])
            for img in images
        ]


def test_a_failing_model_call_costs_only_its_image(tmp_path: Path) -> None:
    jobs = [
        cli.ImageJob(_save_random(tmp_path / f"{i}.png", (5, 5 + 2 * (i == 1)), i), tmp_path / "out", str(i))
        for i in range(3)
    ]
    report = cli.run_batch(_FailsOnSecond(), jobs, formats=["png"], images_per_batch=3, progress=False)
    assert [job.stem for job, _ in report.segmented] == ["0", "2"]
    assert [(job.stem, reason) for job, reason in report.skipped] == [("1", "RuntimeError: boom")]


# ------------------------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "{tmp}/no-such-model", "--classes", "a"], "does not exist"),
        ([], "no classes"),
        (["--classes", "cat,sofa,Cat"], "duplicate class name"),
        (["--classes", "cat,,sofa"], "empty"),
        (["--classes", "a", "--format", "png,tiff"], "unknown output format"),
        (["--classes", "a", "--timestep", "5000"], "timestep"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, tiny_model_dir: Path, capsys, extra, message) -> None:
    image = _save_random(tmp_path / "img.png", (16, 16), 0)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    if "--model" not in extra:
        extra += ["--model", str(tiny_model_dir)]
    code, _, stderr = _run(["segment", str(image), "--out", str(tmp_path / "out"), *extra], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffsegmenter: error:") and message in lines[0], stderr


def test_output_folder_that_is_a_file_exits_2(tmp_path: Path, capsys) -> None:
    image = _save_random(tmp_path / "img.png", (8, 8), 0)
    (tmp_path / "taken").write_text("x")
    code, _, stderr = _run(["segment", str(image), "--out", str(tmp_path / "taken"), "--classes", "a"], capsys)
    assert code == 2 and "not a folder" in stderr


def test_offline_flag_sets_hf_hub_offline(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    image = _save_random(tmp_path / "img.png", (8, 8), 0)
    argv = ["segment", str(image), "--out", str(tmp_path / "o"), "--classes", "a", "--model", str(tmp_path / "none")]
    assert _run(argv, capsys)[0] == 2
    assert "HF_HUB_OFFLINE" not in os.environ
    assert _run([*argv, "--offline"], capsys)[0] == 2
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_import_has_no_side_effects() -> None:
    code = "import os, sys; os.environ.pop('HF_HUB_OFFLINE', None); import diffsegmenter.cli, diffsegmenter.__main__; "
    code += "assert 'torch' not in sys.modules and 'HF_HUB_OFFLINE' not in os.environ"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_eval_delegates_to_the_harness(capsys) -> None:
    pytest.importorskip("diffsegmenter.evaluation.harness")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert "--dataset" in capsys.readouterr().out


def test_eval_runs_the_harness_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    pytest.importorskip("diffsegmenter.evaluation.harness")
    world = pytest.importorskip("research.shapes.world", reason="the shapes world is not built yet")
    root = world.export_voc(tmp_path / "voc", {"val": 2}, workers=1)
    argv = ["eval", "--dataset", "shapes", "--root", str(root), "--split", "val", "--protocol", "oracle"]
    code, stdout, stderr = _run([*argv, "--model", str(tiny_model_dir), "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, stderr
    assert "mIoU" in stdout and (tmp_path / "ev" / "metrics.json").is_file()
    code, _, stderr = _run([*argv[:3], "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "e2")], capsys)
    assert code == 2 and "does not exist" in stderr


# ------------------------------------------------------------------------------------------------ demo


def test_demo_on_the_tiny_model_writes_overlays(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    with cli.example_images() as examples:
        names = [p.stem for p in examples]
    assert 4 <= len(names) <= 6
    out = tmp_path / "demo"
    code, stdout, stderr = _run(["demo", "--model", str(tiny_model_dir), "--out", str(out)], capsys)
    assert code == 0, stderr
    for name in names:
        assert (out / f"{name}.overlay.png").is_file() and (out / f"{name}.png").is_file()
        assert f"{name}.png: " in stdout
    assert str(out.resolve()) in stdout
    # a rerun resumed nothing and replaced everything under its names, whatever settings had made it
    made = _files(out)
    code, stdout, _ = _run(["demo", "--model", str(tiny_model_dir), "--out", str(out)], capsys)
    assert code == 0 and f"{names[0]}.png: already done" in stdout and _files(out) == made
    code, _, stderr = _run(["demo", "--model", str(tiny_model_dir), "--out", str(out), "--classes", "a,b"], capsys)
    assert code == 2 and "segmented earlier with other settings (classes: " in stderr and "--overwrite" in stderr
    assert _files(out) == made
    argv = ["demo", "--model", str(tiny_model_dir), "--out", str(out), "--classes", "a,b", "--overwrite"]
    assert _run(argv, capsys)[0] == 0
    assert json.loads((out / f"{names[0]}.json").read_text())["request"]["classes"] == ["a", "b"]
    # the demo of the previous version recorded no settings ("request": {}): its images are redone, not kept
    sidecar = json.loads((out / f"{names[0]}.json").read_text())
    (out / f"{names[0]}.json").write_text(json.dumps({**sidecar, "request": {}}))
    code, stdout, _ = _run(["demo", "--model", str(tiny_model_dir), "--out", str(out), "--classes", "a,b"], capsys)
    assert code == 0 and f"{names[0]}.png: already done" not in stdout and f"{names[1]}.png: already done" in stdout


def test_demo_says_when_the_filter_only_guessed(tmp_path: Path) -> None:
    # "circle" was printed for a scene without a circle: the filter keeps its best class when none reaches its
    # threshold, and the demo's line did not say so
    from types import SimpleNamespace

    from diffsegmenter.cli.demo import _guess_note

    task = SimpleNamespace(sidecar_path=lambda job: tmp_path / f"{job}.json")
    (tmp_path / "a.json").write_text(json.dumps({"filter_best_guess": True}))
    (tmp_path / "b.json").write_text(json.dumps({"filter_best_guess": False}))
    assert _guess_note(task, "a") == " (the filter's best guess: no class reached its threshold)"
    assert _guess_note(task, "b") == _guess_note(task, "missing") == ""


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHIPPED_MODEL / "unet").is_dir(), reason="the shipped shapes model (models/shapes/) is not built yet"
)
def test_demo_on_the_shipped_model(tmp_path: Path, capsys) -> None:
    code, stdout, stderr = _run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, stderr
    assert "overlay" in stdout and "diffusion filter" in stdout  # the shipped model recommends its filter
    overlays = sorted((tmp_path / "demo").glob("*.overlay.png"))
    assert len(overlays) == 6
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "demo").glob("shapes_*.json")]
    assert len(sidecars) == 6
    for data in sidecars:  # each image segments only the classes its filter kept, from the 4-shape vocabulary
        assert 1 <= len(data["classes"]) <= 4
        assert set(data["classes"]) <= {"circle", "square", "triangle", "cross"}
        assert set(data["candidates"]) == {"circle", "square", "triangle", "cross"}
        # the label PNGs number the vocabulary, the same in every image (they numbered the classes kept)
        assert data["png_classes"] == ["circle", "square", "triangle", "cross"]
        png = np.asarray(Image.open(tmp_path / "demo" / f"{Path(data['source']).stem}.png"))
        assert {data["png_classes"][v - 1] for v in np.unique(png) if v} <= set(data["classes"])
    assert any(len(data["classes"]) < 4 for data in sidecars)  # the filter dropped a class somewhere


def test_shipped_examples_are_the_example_scenes() -> None:
    """The demo images are ``shapes.world.example_scenes()``. After changing EXAMPLE_SEEDS, regenerate them with:
    python -c "from PIL import Image; from research.shapes.world import example_scenes as e;
    [Image.fromarray(s.image).save(f'src/diffsegmenter/examples/shapes_{s.seed}.png', optimize=True) for s in e()]"
    """
    world = pytest.importorskip("research.shapes.world", reason="the shapes world is not built yet")
    with cli.example_images() as paths:
        shipped = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in paths}
    scenes = world.example_scenes()
    assert sorted(shipped) == sorted(f"shapes_{s.seed}.png" for s in scenes)
    for scene in scenes:
        np.testing.assert_array_equal(shipped[f"shapes_{scene.seed}.png"], scene.image)


@pytest.mark.parametrize(
    ("module", "flags", "install"),
    [
        ("cv2", ["--format", "png,yolo"], "pip install 'diffsegmenter[yolo]' (or pip install opencv-python-headless)"),
        ("pycocotools", ["--format", "coco"], "pip install 'diffsegmenter[rle]' (or pip install pycocotools)"),
        ("pycocotools", ["--format", "rle"], "pip install 'diffsegmenter[rle]'"),
        ("ray", ["--ray"], "pip install 'diffsegmenter[ray]' (or pip install 'ray[data]')"),
    ],
)
def test_a_missing_extra_is_named_before_the_model_loads(tmp_path: Path, capsys, monkeypatch, module, flags, install):
    """It was found after the model had loaded and every image was segmented (each then 'skipped'), and the hint
    named cv2, which pip cannot install."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    image = _save_random(tmp_path / "x.png", (16, 16), 0)
    argv = ["segment", str(image), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    code, _, stderr = _run([*argv, "--classes", "a", *flags], capsys)
    assert code == 2 and install in stderr and "not installed" in stderr
    assert not (tmp_path / "out").exists()


def test_settings_an_older_version_did_not_record_are_not_compared() -> None:
    """A setting added to SegmenterConfig by an upgrade made every older folder 'other settings' with an empty list
    of changes; the per-image check follows check_run_fingerprint's rule instead."""
    from diffsegmenter.batch.runner import changed_settings, same_request

    older = {"model": "m", "config": {"tau": 0.4}}
    assert changed_settings(older, {"model": "m", "config": {"tau": 0.4, "new_setting": 1}}) == []
    assert same_request(older, {"model": "m", "config": {"tau": 0.4, "new_setting": 1}, "added": True})
    assert changed_settings(older, {"model": "m", "config": {"tau": 0.3}}) == ["config.tau: 0.4 -> 0.3"]
    assert not same_request(None, {"model": "m"})


def test_a_resume_may_change_what_leaves_the_results_as_they_are(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """A smaller batch after running out of memory, a higher pixel limit: the images done are kept, not refused."""
    _save_random(tmp_path / "in" / "img0.png", (24, 32), 5)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run([*argv, "--quiet"], capsys)[0] == 0
    before = _files(out)
    code, stdout, stderr = _run([*argv, "--batch-size", "1", "--max-pixels", "100000"], capsys)
    assert code == 0 and "0 segmented, 1 already done" in stdout, stderr
    assert _files(out) == before


def test_the_library_batch_names_a_missing_extra_before_any_image(monkeypatch) -> None:
    from diffsegmenter.batch import ImageTask

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"--format yolo needs cv2.*diffsegmenter\[yolo\]"):
        ImageTask(None, ["png", "yolo"])


def test_ray_flags_without_ray_are_refused(tmp_path: Path, capsys) -> None:
    # `--ray-address head:6379 --workers 3` without --ray ran the job in this process, silently
    image = _save_random(tmp_path / "in" / "x.png")
    argv = ["segment", str(image), "--out", str(tmp_path / "o"), "--classes", "a", "--offline"]
    code, _, err = _run(argv + ["--ray-address", "127.0.0.1:1", "--workers", "3"], capsys)
    assert code == 2 and "--ray-address and --workers set(s) how a --ray run goes; add --ray" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("x.*"))


def test_another_file_under_a_name_already_done_is_refused_not_taken_as_done(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    # a/img.png, then b/img.png (another image) into the same --out: "1 already done", and the Label Studio and
    # COCO files then paired b's path with a's masks (of another size); given as files in the other order, two
    # same-named inputs swapped their masks the same way
    first = _save_random(tmp_path / "a" / "img.png", (24, 32), 1)
    other = _save_random(tmp_path / "b" / "img.png", (32, 24), 2)
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b", "--format", "png,coco"]
    assert _run(["segment", str(first), *base], capsys)[0] == 0
    made = _files(out)
    code, _, err = _run(["segment", str(other), *base], capsys)
    assert code == 2 and "from another file under the same name" in err and f"{str(first)!r}'s" in err, err
    assert _files(out) == made  # nothing replaced
    assert "0 segmented, 1 already done" in _run(["segment", str(first), *base], capsys)[1]  # its own: done
    # a resume compares size and modification time first: an unchanged input is not read again
    import diffsegmenter.io.sidecar as sidecar_module

    read = sidecar_module.source_digest
    sidecar_module.source_digest = lambda path: pytest.fail(f"read {path} on a resume")
    try:
        assert "0 segmented, 1 already done" in _run(["segment", str(first), *base], capsys)[1]
    finally:
        sidecar_module.source_digest = read
    first.write_bytes(other.read_bytes())  # the input itself changed since (same path): redone, not refused
    code, stdout, _ = _run(["segment", str(first), *base], capsys)
    assert code == 0 and "1 segmented" in stdout
    coco = json.loads((out / "coco_instances.json").read_text())
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(24, 32)]
    sidecar = json.loads((out / "img.json").read_text())
    del sidecar["source_digest"]  # a sidecar of an older version: judged by the file name, as before
    (out / "img.json").write_text(json.dumps(sidecar))
    assert "0 segmented, 1 already done" in _run(["segment", str(first), *base], capsys)[1]


def test_a_damaged_per_image_part_is_written_again_not_a_traceback(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    # a truncated a.coco.json (or [] in a .ls.json) made the run's last step fail with a traceback, no summary and
    # no run files after coco; the image counted as done, so the part was never written again
    for i, name in enumerate(("a", "b")):
        _save_random(tmp_path / "in" / f"{name}.png", (24, 32), i)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b"]
    argv += ["--format", "png,coco,labelstudio"]
    assert _run(argv, capsys)[0] == 0
    whole = (out / "a.coco.json").read_text()
    (out / "a.coco.json").write_text(whole[: len(whole) // 2])
    (out / "b.ls.json").write_text("[]")
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0 and "2 image(s): 2 segmented, 0 already done" in stdout, stderr
    assert (out / "a.coco.json").read_text() == whole
    assert len(json.loads((out / "labelstudio_tasks.json").read_text())) == 2
    (out / "a.coco.json").write_text('{"note": "x"}')  # JSON, but not what the COCO writer reads
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0 and "2 image(s): 1 segmented, 1 already done" in stdout, stderr
    assert (out / "a.coco.json").read_text() == whole


def test_an_interrupted_overwrite_run_resumes_where_it_stopped(
    tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    # rerunning an interrupted --overwrite run redid every image (and without --overwrite it was refused), so a long
    # relabelling that was stopped always started over
    from diffsegmenter.batch.images import ImageTask

    for i in range(4):
        _save_random(tmp_path / "in" / f"{i}.png", (24, 32), i)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_model_dir), "--format", "png,coco"]
    assert _run([*base, "--classes", "a,b"], capsys)[0] == 0
    write, written = ImageTask.write, []

    def stop_after_two(self, job, item, result):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(job.stem)
        return write(self, job, item, result)

    monkeypatch.setattr(ImageTask, "write", stop_after_two)
    code, _, err = _run([*base, "--classes", "c,d", "--overwrite"], capsys)
    assert code == 130 and "rerun the same command to resume" in err, err
    # the run files gather what finished before the interrupt (they were missing until a rerun)
    coco = json.loads((out / "coco_instances.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == [f"{stem}.png" for stem in sorted(written)]
    monkeypatch.setattr(ImageTask, "write", write)
    times = _files(out)
    code, stdout, _ = _run([*base, "--classes", "c,d", "--overwrite"], capsys)
    assert code == 0 and "4 image(s): 2 segmented, 2 already done" in stdout, stdout
    assert all(_files(out)[f"{stem}.json"] == times[f"{stem}.json"] for stem in written)  # kept, not redone
    assert not (out / ".diffsegmenter-overwrite.json").exists()  # the pass completed
    # a record of an interrupted pass by another version of the package does not count (the code changed since)
    (out / ".diffsegmenter-overwrite.json").write_text(
        json.dumps({"request": json.loads((out / "0.json").read_text())["request"], "version": "0.0", "since": 0.0})
    )
    code, stdout, _ = _run([*base, "--classes", "c,d", "--overwrite"], capsys)
    assert code == 0 and "4 segmented" in stdout
    code, stdout, _ = _run([*base, "--classes", "c,d", "--overwrite"], capsys)
    assert code == 0 and "4 segmented" in stdout  # a new --overwrite run redoes everything, as asked


def test_run_files_written_for_part_of_a_folder_say_what_they_leave_out(
    tmp_path: Path, tiny_model_dir: Path, capsys, caplog
) -> None:
    # a rerun on one image of a finished folder rewrote coco_instances.json with that image only, without a word
    for i, name in enumerate(("a", "b")):
        _save_random(tmp_path / "in" / f"{name}.png", (24, 32), i)
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b", "--format", "png,coco"]
    assert _run(["segment", str(tmp_path / "in"), *base], capsys)[0] == 0
    assert "other result" not in caplog.text
    assert _run(["segment", str(tmp_path / "in" / "a.png"), *base], capsys)[0] == 0
    assert "coco_instances.json list(s) the 1 finished image(s) of this run; 1 other result(s)" in caplog.text
    assert "b.json" in caplog.text
    assert len(json.loads((out / "coco_instances.json").read_text())["images"]) == 1


def test_a_name_given_beside_a_sibling_stays_when_the_sibling_leaves(tmp_path: Path, tiny_model_dir: Path, capsys):
    # x.jpg took x.*, x.png x.png.*; with x.jpg moved away the rerun named x.png "x" and was refused as writing over
    # x.jpg's results: x.png's finished results were never found
    src = tmp_path / "in"
    _save_random(src / "x.png", (24, 32), 1)
    Image.open(_save_random(tmp_path / "b.png", (24, 32), 2)).save(src / "x.jpg")
    argv = ["segment", str(src), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--classes", "a,b"]
    assert _run([*argv, "--format", "png"], capsys)[0] == 0
    assert (tmp_path / "out" / "x.png.json").is_file()
    (src / "x.jpg").rename(tmp_path / "x.jpg")
    code, stdout, stderr = _run([*argv, "--format", "png"], capsys)
    assert code == 0 and "0 segmented, 1 already done" in stdout, stderr


def test_one_model_folder_spelt_two_ways_is_one_setting(tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch):
    # --model tiny, then --model ./tiny (or its absolute path): refused as "model: 'tiny' -> './tiny'"
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    _save_random(tmp_path / "in" / "x.png", (24, 32), 1)
    argv = ["segment", "in", "--out", "out", "--classes", "a,b", "--format", "png"]
    assert _run([*argv, "--model", "tiny"], capsys)[0] == 0
    sidecar = json.loads((tmp_path / "out" / "x.json").read_text())
    assert sidecar["request"]["model"] == str(tmp_path / "tiny")  # recorded by its absolute path
    for spelling in ("./tiny", str(tmp_path / "tiny")):
        code, stdout, stderr = _run([*argv, "--model", spelling], capsys)
        assert code == 0 and "0 segmented, 1 already done" in stdout, stderr
    sidecar["request"]["model"] = "tiny"  # as the previous version recorded it: the text given
    (tmp_path / "out" / "x.json").write_text(json.dumps(sidecar))
    code, stdout, stderr = _run([*argv, "--model", "./tiny"], capsys)
    assert code == 0 and "0 segmented, 1 already done" in stdout, stderr


def test_a_full_name_stays_for_a_file_given_beside_one_of_the_same_name(tmp_path: Path, tiny_model_dir: Path, capsys):
    # segment a/x.png b/x.png (b written as x.png.*), then b/x.png alone: it took "x" and was refused as writing
    # over a/x.png's results
    a = _save_random(tmp_path / "a" / "x.png", (24, 32), 1)
    b = _save_random(tmp_path / "b" / "x.png", (24, 32), 2)
    base = ["--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--classes", "a,b", "--format", "png"]
    assert _run(["segment", str(a), str(b), *base], capsys)[0] == 0
    code, stdout, stderr = _run(["segment", str(b), *base], capsys)
    assert code == 0 and "0 segmented, 1 already done" in stdout, stderr
