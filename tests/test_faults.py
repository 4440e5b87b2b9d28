"""Issue 14: the batch job and the API under bad input and faults. One section per case of the issue:

1. output-name collisions, and a previous run's outputs inside the input folder;
2. symbolic link loops (given and inside a folder);
3. a full disk (a small tmpfs where the machine allows);
4. memory: the pixel limit, class chunks, npz size;
5. ranges (tau and the other numeric settings);
6. one class rule for API and CLI (an empty list);
7. GIFs, folders named like images, animations;
8. failing fast without network;
9. one run per output folder (an OS lock that a kill -9 releases);
10. class names the tokenizer cannot place, reported once, up front.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsegmenter import cli
from diffsegmenter.io import is_done, load_npz, save_npz

from .test_cli import _run, _save_random

SRC = str(Path(cli.__file__).resolve().parents[2])  # the package under test, for subprocesses


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("diffsegmenter: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **extra)
    return env


# ------------------------------------------------------------------------------------------------ 1. collisions


def test_output_name_collisions_are_refused_before_any_work(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    src = tmp_path / "in"
    for name in ("x.png", "x.overlay.png", "x.rle.png"):
        _save_random(src / name)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a"]
    code, _, stderr = _run(argv + ["--format", "png,overlay,rle"], capsys)
    line = _error_line(stderr)
    assert code == 2 and "x.overlay.png" in line and str(src / "x.png") in line and "would both write" in line
    assert not [p for p in out.rglob("*") if p.name != cli.LOCK_FILE]  # refused before any work

    # without the overlay format nothing collides: all three are segmented, under their own names
    code, _, stderr = _run(argv + ["--format", "png", "--quiet"], capsys)
    assert code == 0, stderr
    assert all(is_done(out, stem, ["png"]) for stem in ("x", "x.overlay", "x.rle"))


def test_collisions_with_folders_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _save_random(src / "x.jpg")
    _save_random(src / "x.png" / "inside.png")  # a folder named x.png: its outputs go to out/x.png/
    with pytest.raises(cli.CliError, match="would both write"):
        cli.collect_jobs([str(src)], tmp_path / "out", ["png"])
    src2 = tmp_path / "in2"
    _save_random(src2 / "x.png")
    _save_random(src2 / "x.heatmaps" / "a.png")  # would land in x.png's heat-map folder, which x.png prunes
    with pytest.raises(cli.CliError, match="heat-map folder"):
        cli.collect_jobs([str(src2)], tmp_path / "out2", ["heatmaps"])
    assert len(cli.collect_jobs([str(src2)], tmp_path / "out2", ["png"])) == 2
    _save_random(src2 / "skipped.png")  # its sidecar must not be the run's skipped.json
    stems = {job.stem for job in cli.collect_jobs([str(src2)], tmp_path / "out2", ["png"])}
    assert "skipped" not in stems and "skipped.png" in stems


def test_inputs_whose_output_names_are_too_long_are_skipped_before_any_work(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "L" * 251 + ".png", "M" * 246 + ".png", "é" * 121 + ".png"):
        _save_random(src / name)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a"]
    # a 251-character name failed the whole run with a traceback (its sidecar name in is_done); a 246-character
    # one was segmented, then failed at its overlay, leaving its label map without a sidecar
    code, stdout, stderr = _run(argv + ["--format", "png,overlay"], capsys)
    assert code == 1 and "Traceback" not in stderr, stderr
    reasons = {Path(item["path"]).name[:1]: item["reason"] for item in json.loads((out / "skipped.json").read_text())}
    assert set(reasons) == {"L", "M"}  # 121 two-byte letters + ".overlay.png" fit in 255 bytes
    assert "'<name>.overlay.png' would be 263 bytes" in reasons["L"] and "at most 243 bytes" in reasons["M"]
    assert "4 image(s): 2 segmented, 0 already done, 2 skipped" in stdout
    assert sorted(p.name[:1] for p in out.iterdir() if p.suffix == ".json" and p.name != "skipped.json") == ["a", "é"]
    assert not [p for p in out.iterdir() if p.name[:1] in "LM"]  # nothing half-written
    # edit checks its own names: x.mask.png is longer than x.png
    long_mask = tmp_path / "edit" / ("N" * 247 + ".png")
    _save_random(long_mask)
    assert cli.collect_jobs([str(long_mask)], tmp_path / "e", ["png"])[0].problem is None
    masked = cli.collect_jobs([str(long_mask)], tmp_path / "e", ["png"], extra=lambda job: [f"{job.stem}.mask.png"])
    assert "'<name>.mask.png' would be 256 bytes" in masked[0].problem


def test_results_from_other_systems_are_recognised_as_done(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    import unicodedata

    src = tmp_path / "in"
    decomposed = unicodedata.normalize("NFD", "café")
    _save_random(src / "a.png")
    _save_random(src / f"{decomposed}.png", seed=1)  # as macOS writes it: e + combining accent
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a", "--quiet"]
    assert _run(argv, capsys)[0] == 0
    # a.json as a run on Windows recorded it: a backslashed source ("another file under the same name" before)
    sidecar = out / "a.json"
    record = json.loads(sidecar.read_text())
    record["source"] = str(src / "a.png").replace("/", "\\")
    sidecar.write_bytes(json.dumps(record).replace("\n", "\r\n").encode())
    # the image renamed to the composed é by a copy (rsync, unzip): it was done again beside its orphaned results
    (src / f"{decomposed}.png").rename(src / f"{unicodedata.normalize('NFC', 'café')}.png")
    code, stdout, stderr = _run(argv[:-1], capsys)
    assert code == 0, stderr
    assert "2 image(s): 0 segmented, 2 already done" in stdout
    assert sorted(p.name for p in out.glob("*.json")) == sorted(["a.json", f"{decomposed}.json"])
    # on Linux both spellings can be two images: a second café.png beside the first gets its own results (it was
    # refused as taking over the first's)
    two = tmp_path / "two"
    _save_random(two / f"{decomposed}.png", seed=1)
    flags = ["--out", str(tmp_path / "out2"), *argv[4:-1]]
    assert _run(["segment", str(two), *flags], capsys)[0] == 0
    composed = _save_random(two / f"{unicodedata.normalize('NFC', 'café')}.png", seed=2)
    code, stdout, stderr = _run(["segment", str(composed), str(two / f"{decomposed}.png"), *flags], capsys)
    assert code == 0, stderr
    assert "2 image(s): 1 segmented, 1 already done" in stdout
    assert len(list((tmp_path / "out2").glob("caf*.json"))) == 2


def test_inputs_given_with_a_tilde_and_missing_inputs(
    tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _save_random(tmp_path / "imgs" / "a.png")
    base = ["--model", str(tiny_model_dir), "--classes", "a", "--quiet"]
    # '~' quoted (or from a shell that does not expand it) was expanded in --out but not in the inputs
    code, _, stderr = _run(["segment", "~/imgs", "--out", "~/out", *base], capsys)
    assert code == 0, stderr
    assert is_done(tmp_path / "out", "a", cli.DEFAULT_FORMATS)
    # a missing input is refused before the output folder is made (it was left behind, holding its lock file)
    code, _, stderr = _run(["segment", "~/missing", "--out", "~/nope", *base], capsys)
    assert code == 2 and "does not exist" in stderr and not (tmp_path / "nope").exists()
    code, _, stderr = _run(["segment", "~/imgs/*.jpg", "--out", "~/nope", *base], capsys)
    assert code == 2 and "matched no image files" in stderr and not (tmp_path / "nope").exists()
    code, _, stderr = _run(["edit", "~/missing", "--out", "~/nope", "--target", "a", "--prompt", "b", *base], capsys)
    assert code == 2 and "does not exist" in stderr and not (tmp_path / "nope").exists()


def test_a_backslash_name_and_another_image_recorded_on_windows(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    src = tmp_path / "in"
    _save_random(src / "a.png")
    _save_random(src / "scan\\001.png")  # a Linux name; a folder separator on Windows
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a"]
    code, stdout, stderr = _run(argv, capsys)  # it ended the whole run with a traceback
    assert code == 1 and "Traceback" not in stderr and "2 image(s): 1 segmented, 0 already done, 1 skipped" in stdout
    assert "holds a backslash" in json.loads((out / "skipped.json").read_text())[0]["reason"]
    # a.json as a run on Windows recorded it, and another image of that name now: its results are kept (a path
    # from another system cannot tell the same file), the way out named
    record = json.loads((out / "a.json").read_text())
    record["source"] = "C:\\photos\\a.png"
    (out / "a.json").write_text(json.dumps(record))
    _save_random(src / "a.png", seed=5)
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2 and "pass --overwrite" in stderr
    assert json.loads((out / "a.json").read_text())["source"] == "C:\\photos\\a.png"


def test_a_previous_runs_outputs_in_the_input_folder_are_left_out(
    tmp_path: Path, tiny_model_dir: Path, capsys, caplog
) -> None:
    src = tmp_path / "in"
    _save_random(src / "x.png", seed=1)
    _save_random(src / "y.png", seed=2)
    base = [
        "segment",
        str(src),
        "--model",
        str(tiny_model_dir),
        "--classes",
        "a,b",
        "--format",
        "png,overlay,heatmaps",
    ]
    assert _run(base + ["--out", str(src / "masks")], capsys)[0] == 0
    code, stdout, stderr = _run(base + ["--out", str(src / "masks2")], capsys)
    assert code == 0, stderr
    assert "2 image(s): 2 segmented" in stdout  # the label maps, overlays and heat maps in masks/ are not inputs
    assert "earlier diffsegmenter run" in caplog.text and "masks" in caplog.text
    before = {p: p.read_bytes() for p in (src / "masks2").rglob("*") if p.is_file()}
    code, stdout, _ = _run(base + ["--out", str(src / "masks2")], capsys)
    assert code == 0 and "0 segmented, 2 already done" in stdout
    assert {p: p.read_bytes() for p in (src / "masks2").rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------- 2 and 7. what cannot be used


def test_every_unusable_input_is_listed_with_its_reason(tmp_path: Path, tiny_model_dir: Path, capsys, caplog) -> None:
    src = tmp_path / "in"
    _save_random(src / "good.png")
    Image.new("RGB", (12, 10), (200, 10, 10)).save(src / "still.gif")
    frames = [Image.new("RGB", (12, 10), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    (src / "folder.png").mkdir()
    (src / "photo.heic").write_bytes(b"\x00" * 16)
    (src / "notes.txt").write_text("not an image")
    os.symlink("loop.png", src / "loop.png")  # a link to itself
    os.symlink("missing.jpg", src / "broken.jpg")
    explicit_loop = tmp_path / "self.png"
    os.symlink(explicit_loop.name, explicit_loop)
    out = tmp_path / "out"
    argv = ["segment", str(src), str(explicit_loop), str(src / "anim.gif"), "--out", str(out)]
    code, stdout, stderr = _run(argv + ["--model", str(tiny_model_dir), "--classes", "a"], capsys)
    assert code == 1 and "Traceback" not in stderr
    reasons = {Path(item["path"]).name: item["reason"] for item in json.loads((out / "skipped.json").read_text())}
    assert set(reasons) == {"anim.gif", "folder.png", "photo.heic", "loop.png", "broken.jpg", "self.png"}
    assert "3 frames" in reasons["anim.gif"] and "folder" in reasons["folder.png"]
    assert "unsupported image type .heic" in reasons["photo.heic"]
    assert "loop" in reasons["loop.png"] and "loop" in reasons["self.png"] and "broken" in reasons["broken.jpg"]
    for name in reasons:
        assert name in stderr  # on the console too
    assert "not images (.txt)" in caplog.text
    assert "8 image(s): 2 segmented, 0 already done, 6 skipped" in stdout
    assert is_done(out, "good", cli.DEFAULT_FORMATS) and is_done(out, "still", cli.DEFAULT_FORMATS)


def test_api_refuses_an_animation_instead_of_using_its_first_frame(tmp_path: Path, tiny_segmenter) -> None:
    from diffsegmenter.images import ImageLoadError

    frames = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageLoadError, match="2 frames"):
        tiny_segmenter.segment(tmp_path / "anim.gif", classes=["cat"])


# ------------------------------------------------------------------------------------------------ 3. disk full


@dataclasses.dataclass
class _Result:
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float = 0.4


class _Blank:
    config = None

    def segment(self, images, classes=None, filter=None):
        return [
            _Result(np.zeros(im.shape[:2], np.int32), np.zeros((1, *im.shape[:2]), np.float32), ["a"], ["p"])
            for im in images
        ]


def test_a_write_error_stops_the_run_and_keeps_the_report(tmp_path: Path, monkeypatch) -> None:
    import diffsegmenter.io.results as outputs  # where the image task looks write_result up

    real, calls = outputs.write_result, []

    def second_fails(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "write_result", second_fails)
    jobs = [cli.ImageJob(_save_random(tmp_path / f"{i}.png", seed=i), tmp_path / "out", str(i)) for i in range(4)]
    report = cli.run_batch(_Blank(), jobs, formats=["png"], progress=False)
    assert calls == ["0", "1"]  # nothing computed after the failure
    assert [job.stem for job, _ in report.segmented] == ["0"]
    assert [(job.stem, reason) for job, reason in report.skipped] == [
        ("1", "could not write its outputs: No space left on device")
    ]
    assert report.not_started == 2 and "No space left" in report.stopped
    assert "2 not started" in report.summary()


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a small tmpfs on `folder`; the reason it cannot be done, or None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux to mount a small tmpfs"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"


def test_a_full_disk_stops_cleanly_with_summary_and_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    disk = tmp_path / "disk"
    reason = _mount_tmpfs(disk, "96k")
    if reason:
        pytest.skip(reason)
    try:
        src = tmp_path / "in"
        for i in range(6):
            _save_random(src / f"img{i}.png", (64, 64), seed=i)
        out = disk / "out"
        argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a,b,c"]
        argv += ["--format", "png,overlay,heatmaps,npz"]
        done = subprocess.run(
            [sys.executable, "-m", "diffsegmenter", *argv], capture_output=True, text=True, env=_env(), timeout=300
        )
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr
        assert "not started (the run stopped)" in done.stdout  # the summary
        assert "No space left on device" in done.stderr and "the run stopped" in done.stderr  # the skipped list
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
        for sidecar in out.glob("img?.json"):  # a sidecar only ever marks a complete image
            assert is_done(out, sidecar.stem, ["png", "overlay", "heatmaps", "npz"])
        if (out / "skipped.json").exists():
            assert json.loads((out / "skipped.json").read_text())
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------------------------ 4. memory


def test_images_over_the_pixel_limit_are_refused_before_decoding(
    tmp_path: Path, tiny_segmenter, tiny_model_dir: Path, capsys
) -> None:
    from diffsegmenter.config import DEFAULT_MAX_IMAGE_PIXELS
    from diffsegmenter.images import ImageTooLargeError, load_image

    assert DEFAULT_MAX_IMAGE_PIXELS < 11000 * 11000 / 2
    big = tmp_path / "big.png"
    Image.new("1", (8000, 5001)).save(big)  # 40 000 008 pixels, a small file
    with pytest.raises(ImageTooLargeError, match="max-pixels"):
        load_image(big, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    tiny_segmenter.config = tiny_segmenter.config.replace(max_image_pixels=100)
    with pytest.raises(ImageTooLargeError, match="max_image_pixels"):
        tiny_segmenter.segment(np.zeros((11, 10, 3), np.uint8), classes=["cat"])
    assert tiny_segmenter.segment(np.zeros((10, 10, 3), np.uint8), classes=["cat"]).labels.shape == (10, 10)

    argv = ["segment", str(big), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--classes", "a"]
    code, _, stderr = _run(argv, capsys)  # the default limit
    assert code == 1 and "too large" in stderr and "--max-pixels" in stderr
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--max-pixels", "0"])
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_large_vocabularies_run_in_bounded_chunks(tiny_segmenter, monkeypatch) -> None:
    import diffsegmenter.passes as passes_module

    latents = tiny_segmenter.encode_images([np.zeros((8, 8, 3), np.uint8)], 0)
    per_sample = 8 * latents.shape[-2] * latents.shape[-1] * sum(tiny_segmenter.unet.config.block_out_channels) * 4
    limit = passes_module.cpu_batch_limit(tiny_segmenter.backbone, latents)
    assert limit * per_sample <= passes_module.CPU_BATCH_BYTES
    monkeypatch.setattr(passes_module, "CPU_BATCH_BYTES", 3 * per_sample)
    sizes = []
    original = passes_module.attention_pass

    def counting(backbone, latents, *args, **kwargs):
        sizes.append(latents.shape[0])
        return original(backbone, latents, *args, **kwargs)

    monkeypatch.setattr(passes_module, "attention_pass", counting)
    res = tiny_segmenter.segment(np.zeros((8, 8, 3), np.uint8), classes=[f"cat{i}" for i in range(8)])
    assert res.scores.shape == (8, 8, 8) and sizes == [3, 3, 2]


def test_calls_that_cannot_fit_in_memory_are_refused_up_front() -> None:
    from diffsegmenter.result import check_full_size_memory

    photo = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (5000, 8000, 3))  # 40 MP, no memory used
    check_full_size_memory([photo.shape[:2]], [["cat", "sofa"]])
    with pytest.raises(MemoryError, match="1000 classes on a 8000x5000 image"):
        check_full_size_memory([photo.shape[:2]], [[f"c{i}" for i in range(1000)]])


def test_a_list_that_cannot_fit_in_memory_together_is_refused_up_front() -> None:
    # each image alone fits, but a call keeps every image's results until it returns: 40 photos of 40 MP with 10
    # classes keep about 70 GB, and the check looked at one image at a time
    import psutil

    from diffsegmenter.result import check_full_size_memory

    total = psutil.virtual_memory().total
    classes = [f"c{i}" for i in range(10)]
    side = int((total * 0.6 / (28 * 10 + 64)) ** 0.5)  # one image's work: 60% of this machine's memory
    check_full_size_memory([(side, side)], [classes])
    check_full_size_memory([(side // 8, side // 8)] * 10, [classes] * 10)  # small images together: fine
    with pytest.raises(MemoryError, match="10 images in one call"):
        check_full_size_memory([(side, side)] * 10, [classes] * 10)


def test_npz_scores_stay_bounded_for_large_images(tmp_path: Path) -> None:
    from diffsegmenter.io import NPZ_SCORES_MAX_SIDE

    h, w = 1100, 2 * NPZ_SCORES_MAX_SIDE
    scores = np.tile(np.linspace(0, 1, w, dtype=np.float32), (2, h, 1))
    labels = (scores[0] > 0.5).astype(np.int32)
    save_npz(tmp_path / "x.npz", scores, ["a", "b"], labels)
    data = load_npz(tmp_path / "x.npz")
    assert data["labels"].shape == (h, w) and data["labels"].dtype == np.int32
    np.testing.assert_array_equal(data["labels"], labels)
    assert data["scores"].shape == (2, 550, NPZ_SCORES_MAX_SIDE)
    np.testing.assert_allclose(data["scores"][0, 0, :: NPZ_SCORES_MAX_SIDE // 4], scores[0, 0, ::512], atol=1e-3)
    assert (tmp_path / "x.npz").stat().st_size < scores.nbytes / 2  # at most a quarter of the maps' pixels


# ------------------------------------------------------------------------------------------------ 5. ranges


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tau", 5),
        ("tau", -1),
        ("tau", float("nan")),
        ("tau", "high"),
        ("seed", -1),
        ("seed", 1.5),
        ("timestep", 0),
        ("emphasis", 0),
        ("caption_max_tokens", 1),  # the captioner refused it with its own name for it
        ("resolution", 3),
        ("vae_sample", "yes"),
        ("level_weights", {8: -1.0}),
        ("level_weights", {8: 0.0}),
        ("level_weights", {"fine": 1.0}),
        ("max_image_pixels", 0),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_field(field, value) -> None:
    from diffsegmenter import SegmenterConfig

    with pytest.raises(ValueError, match=field):
        SegmenterConfig().replace(**{field: value})


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--tau", "5"], "tau"),
        (["--tau", "-1"], "tau"),
        (["--set", "emphasis=0"], "emphasis"),
        (["--seed", "-3"], "seed"),
    ],
)
def test_cli_ranges_exit_2_before_loading_anything(tmp_path: Path, capsys, argv, field) -> None:
    image = _save_random(tmp_path / "img.png")
    model = str(tmp_path / "no-model")  # never reached: the value is checked first
    code, _, stderr = _run(["segment", str(image), "--out", str(tmp_path / "o"), "--model", model, *argv], capsys)
    line = _error_line(stderr)
    assert code == 2 and line.startswith(f"diffsegmenter: error: {field} must be")


def test_api_tau_is_checked_and_negative_means_no_background(tiny_segmenter) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 1\]"):
        tiny_segmenter.segment(image, classes=["cat"], tau=5)
    res = tiny_segmenter.segment(image, classes=["cat"], tau=-1.0)  # the eval harness's "no background"
    assert (res.labels == 1).all()
    with pytest.raises(ValueError, match="tau"):
        res.relabel(1.5)


def test_eval_tau_out_of_range_exits_2(tmp_path: Path, capsys) -> None:
    from research.shapes import world

    root = world.export_voc(tmp_path / "voc", {"val": 1}, workers=1)
    argv = ["eval", "--dataset", "shapes", "--root", str(root), "--split", "val", "--protocol", "oracle"]
    code, _, stderr = _run([*argv, "--tau", "5", "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "tau must be a number in [0, 1]" in stderr
    assert not (tmp_path / "ev" / "predictions").exists()


# ------------------------------------------------------------------------------------------------ 6. one class rule


def test_api_and_cli_share_the_class_rule(tmp_path: Path, tiny_segmenter, capsys) -> None:
    from diffsegmenter.classes import ClassListError

    image = np.zeros((8, 8, 3), np.uint8)
    for bad in ([], [[]]):
        with pytest.raises(ClassListError, match="class list is empty"):
            tiny_segmenter.segment(image, classes=bad)
    for text in (" , ", ""):
        with pytest.raises(cli.CliError, match="empty"):
            cli.parse_classes(text)
    with pytest.raises(ClassListError, match="duplicate"):
        tiny_segmenter.segment(image, classes=["cat", " CAT "])
    with pytest.raises(cli.CliError, match="duplicate"):
        cli.parse_classes("cat, CAT ")
    # a class file saved with a byte-order mark (Windows Notepad): its first line, a comment, became a class
    listed = tmp_path / "classes.txt"
    listed.write_bytes("# my classes\ncat\nsofa\n".encode("utf-8-sig"))
    assert cli.parse_classes(f"@{listed}") == ["cat", "sofa"]


# ------------------------------------------------------------------------------------------------ 8. offline


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_fails_fast_with_the_current_download_advice(tmp_path: Path) -> None:
    image = _save_random(tmp_path / "img.png")
    argv = ["segment", str(image), "--out", str(tmp_path / "o"), "--model", "no-org/no-model", "--classes", "a"]
    env = _env(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "diffsegmenter", *argv], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    assert done.returncode == 2 and elapsed < 90, (elapsed, done.stderr)
    assert "Retrying" not in done.stderr  # no rounds of huggingface_hub retries
    line = _error_line(done.stderr)
    assert "could not be reached" in line and "hf download no-org/no-model --local-dir" in line
    assert "HF_HUB_OFFLINE" not in line and "huggingface-cli" not in line


def test_offline_error_names_the_variable_only_when_set(monkeypatch) -> None:
    from diffsegmenter.hub import ModelNotFoundError
    from diffsegmenter.loading import load_components

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_components("no-org/no-model")
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "unset HF_HUB_OFFLINE" in message
    assert "hf download no-org/no-model --local-dir" in message and "huggingface-cli" not in message


def test_hub_probe_gives_up_after_its_timeout(monkeypatch) -> None:
    from huggingface_hub import constants

    from diffsegmenter import hub

    with socket.socket() as server:  # accepts connections and never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        assert hub.hub_reachable(timeout=0.5) is False
        assert time.monotonic() - start < 3


# ------------------------------------------------------------------------------------------------ 9. lock


def test_a_second_run_on_one_output_folder_stops(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    image = _save_random(tmp_path / "img.png")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["segment", str(image), "--out", str(out), "--model", str(tiny_model_dir), "--classes", "a", "--quiet"]
    with cli.output_lock(out):
        code, _, stderr = _run(argv, capsys)
    line = _error_line(stderr)
    assert code == 2 and f"process {os.getpid()}" in line and "another diffsegmenter run" in line
    assert not is_done(out, "img", cli.DEFAULT_FORMATS)

    # a holder killed with -9 leaves no stale lock
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys,time; from pathlib import Path; from diffsegmenter.cli import output_lock\n"
         f"with output_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _run(argv, capsys)[0] == 2
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    code, _, stderr = _run(argv, capsys)
    assert code == 0, stderr
    assert is_done(out, "img", cli.DEFAULT_FORMATS)


def test_the_lock_is_exclusive_across_threads_of_one_process(tmp_path: Path) -> None:
    results = []

    def try_lock() -> None:
        try:
            with cli.output_lock(tmp_path):
                results.append("locked")
        except cli.CliError:
            results.append("refused")

    with cli.output_lock(tmp_path):
        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()
    try_lock()
    assert results == ["refused", "locked"]


# ------------------------------------------------------------------------------------------------ 10. tokenizer


def test_names_the_tokenizer_cannot_place_are_reported_once_up_front(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    src = tmp_path / "in"
    for i in range(3):
        _save_random(src / f"img{i}.png", seed=i)
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--model", str(tiny_model_dir)]
    code, _, stderr = _run(argv + ["--classes", "cat,™"], capsys)
    line = _error_line(stderr)
    assert code == 2 and "'™'" in line and "cannot read class name" in line
    assert not list(out.glob("img*"))  # no image was read

    long_name = " ".join(["cat"] * 80)
    for mode in ("per_class", "single"):
        code, _, stderr = _run(argv + ["--classes", f"dog,{long_name}", "--prompt-mode", mode], capsys)
        line = _error_line(stderr)
        assert code == 2 and "cat cat cat" in line and "exceeds" in line
        assert "class1" not in line and "prompt_mode" not in line and "Token indices" not in stderr


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("cuda:x", "is not a device name"),
        ("tpu", "is not a device name"),
        ("", "is not a device name"),
        ("xpu", "backend is not available here"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path: Path, capsys, device, match) -> None:
    # `--device cuda` on a CPU-only torch build, or a malformed name, ended in a traceback (exit 1) from deep inside
    # the model loading; now one line, exit 2, before anything loads (the model named here does not even exist)
    image = _save_random(tmp_path / "img.png")
    argv = ["segment", str(image), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nothing")]
    code, _, err = _run([*argv, "--classes", "a", "--device", device], capsys)
    assert code == 2 and match in _error_line(err) and "use 'cpu'" in err


def test_check_device_knows_this_machine() -> None:
    import torch

    from diffsegmenter.transfer import check_device

    assert check_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="install the CUDA build of torch"):
            check_device("cuda")
    else:  # a GPU machine: one past the last visible GPU is refused
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_a_dtype_name_loads_one_precision_or_is_refused(caplog) -> None:
    # dtype="float16" gave a float16 text encoder beside a float32 UNet and VAE; "fp16" transformers' error
    import torch

    from diffsegmenter import DiffSegmenter
    from diffsegmenter.transfer import check_dtype

    assert check_dtype("fp16") is check_dtype("float16") is check_dtype("torch.float16") is torch.float16
    assert check_dtype(torch.bfloat16) is torch.bfloat16 and check_dtype("bf16") is torch.bfloat16
    with caplog.at_level("WARNING", logger="diffsegmenter.segmenter"):
        seg = DiffSegmenter.from_pretrained("shapes", dtype="float16")
    assert {seg.unet.dtype, seg.vae.dtype, seg.text_encoder.dtype} == {torch.float16}
    assert "float16 on the CPU is slower than float32" in caplog.text  # it ran, slowly, without a word
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffsegmenter.segmenter"):
        DiffSegmenter.from_pretrained("shapes", dtype="bfloat16")
    assert "slower" not in caplog.text
    for bad in ("int8", torch.int8, 16, "fp8"):
        with pytest.raises(ValueError, match="dtype must be torch.float32"):
            DiffSegmenter.from_pretrained("shapes", dtype=bad)


def _shapes_copy(tmp_path: Path) -> Path:
    import shutil

    from diffsegmenter.loading import resolve_model

    folder = tmp_path / "model"
    shutil.copytree(resolve_model("shapes"), folder)
    return folder


def test_a_damaged_weights_file_is_called_damaged_not_missing(tmp_path: Path) -> None:
    # a truncated download was told "no .safetensors weights were found ... convert a checkpoint you trust"
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.hub import ModelNotFoundError

    folder = _shapes_copy(tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelNotFoundError, match="cannot be read, so it is incomplete or damaged.*again") as info:
        DiffSegmenter.from_pretrained(folder)
    assert "convert a checkpoint" not in str(info.value)


@pytest.mark.parametrize(
    "file, text, match",
    [
        ("model_index.json", "{bad", "model_index.json is not valid JSON"),  # json's bare "Expecting property name"
        ("model_index.json", "[1, 2]", "model_index.json holds a JSON list"),  # 'list' object has no attribute 'get'
        ("segmenter_config.json", "{bad", "segmenter_config.json is not valid JSON"),
    ],
)
def test_a_damaged_model_folder_file_is_named(tmp_path: Path, file, text, match) -> None:
    from diffsegmenter import DiffSegmenter

    folder = _shapes_copy(tmp_path)
    (folder / file).write_text(text)
    with pytest.raises(ValueError, match=match):
        DiffSegmenter.from_pretrained(folder)


def test_a_component_class_this_library_lacks_is_named(tmp_path: Path) -> None:
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.hub import ModelNotFoundError

    from .family_builders import build_sd3

    folder = tmp_path / "sd3"
    build_sd3(folder, with_t5=False)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "NoSuchTransformer"]  # AttributeError: module diffusers has no attribute
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match="lists 'transformer' as diffusers.NoSuchTransformer"):
        DiffSegmenter.from_pretrained(folder)


def test_sd3_loads_without_its_t5_folder(tmp_path: Path) -> None:
    # the official repo lists text_encoder_3; a download without it was refused ("no 'text_encoder_3' subfolder")
    import shutil

    from diffsegmenter import DiffSegmenter

    from .family_builders import build_sd3

    with_t5, without = tmp_path / "with", tmp_path / "without"
    build_sd3(with_t5, with_t5=True)
    shutil.copytree(with_t5, without)
    shutil.rmtree(without / "text_encoder_3")
    shutil.rmtree(without / "tokenizer_3")
    assert json.loads((without / "model_index.json").read_text())["text_encoder_3"][1]  # still listed
    seg = DiffSegmenter.from_pretrained(without)
    assert seg.backbone.text_encoder_3 is None
    assert seg.segment(np.zeros((32, 32, 3), np.uint8), ["cat"]).labels.shape == (32, 32)
