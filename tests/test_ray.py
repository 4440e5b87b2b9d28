"""``segment --ray`` on the shapes model: the same files as the local run, byte for byte, and a resumed run that
recomputes nothing (2 workers at 0.5 CPU each on a 2-core machine; cheap settings: one 64 x 64 pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="ray is not installed: pip install 'diffsegmenter[ray]'")

from diffsegmenter import cli  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "diffsegmenter" / "examples"
CHEAP = ["--set", "resolution=64", "--set", "flip=false", "--format", "png,coco,yolo,labelstudio", "--quiet"]


def _files(out: Path) -> dict[str, bytes]:
    """Every result file but the run files that record paths or dates, by name."""
    skip = {"coco_instances.json", "labelstudio_tasks.json", "dataset.yaml", ".diffsegmenter.lock"}
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _without_scores(data: bytes) -> tuple:
    """A JSON export's content without its ``score`` values, and those values (compared to 1e-4)."""
    scores: list[float] = []

    def walk(value):
        if isinstance(value, dict):
            scores.extend(v for k, v in value.items() if k == "score")
            return {k: walk(v) for k, v in value.items() if k != "score"}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    content = walk(json.loads(data))
    return content, scores


@pytest.mark.slow
def test_ray_run_equals_the_local_run_and_resumes(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("shapes_30000000.png", "shapes_30000001.png"):
        (src / name).write_bytes((EXAMPLES / name).read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)  # skipped, with its reason, by both runs
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["segment", str(src), "--out", str(local), "--offline", *CHEAP]) == 1

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "diffsegmenter",
        "segment",
        str(src),
        "--out",
        str(on_ray),
        "--ray",
        "--workers",
        "2",
    ]
    done = subprocess.run(command + CHEAP[:-1], env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "2 segmented" in done.stdout and "1 skipped" in done.stdout
    ray_files, local_files = _files(on_ray), _files(local)
    assert b"broken.png" in ray_files["skipped.json"]
    assert ray_files["skipped.json"] == local_files["skipped.json"]
    label_maps = [name for name in local_files if name.endswith(".png")]
    assert len(label_maps) == 2 and ray_files.keys() == local_files.keys()
    for name in label_maps:  # the label maps byte for byte
        assert ray_files[name] == local_files[name], name
    for name in local_files:  # the exports' masks equal; scores only to float rounding (another thread count)
        if name.endswith(".txt"):
            assert ray_files[name] == local_files[name], name
        if name.endswith((".coco.json", ".ls.json")):
            (got, got_scores), (want, want_scores) = (
                _without_scores(ray_files[name]),
                _without_scores(local_files[name]),
            )
            assert got == want and got_scores == pytest.approx(want_scores, abs=1e-4), name
    got, got_scores = _without_scores((on_ray / "coco_instances.json").read_bytes())
    want, want_scores = _without_scores((local / "coco_instances.json").read_bytes())
    assert got == want and got_scores == pytest.approx(want_scores, abs=1e-4)

    stamps = {p: p.stat().st_mtime_ns for p in on_ray.rglob("*.png")}
    again = subprocess.run(command + CHEAP[:-1], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "0 segmented, 2 already done" in again.stdout  # nothing recomputed: Ray is not even started
    assert stamps == {p: p.stat().st_mtime_ns for p in on_ray.rglob("*.png")}
    assert (on_ray / "coco_instances.json").is_file()


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_nothing_answers_at_is_refused_in_seconds(tmp_path: Path, tiny_model_dir: Path, capsys, scheme):
    # `--ray-address 127.0.0.1:1` printed GCS retry lines for minutes; `ray://127.0.0.1:1` (without ray[client])
    # ended in a traceback. Now a TCP probe answers first: one line, exit 2, and the output folder keeps no results.
    import socket
    import time

    from diffsegmenter.batch.ray_runner import RAY_PROBE_TIMEOUT

    from .test_cli import _save_random

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    image = _save_random(tmp_path / "in" / "x.png")
    argv = ["segment", str(image), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir), "--classes", "a"]
    start = time.monotonic()
    code = cli.main([*argv, "--ray", "--ray-address", f"{scheme}127.0.0.1:{port}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 30 + RAY_PROBE_TIMEOUT, err
    assert f"no Ray cluster answers at '{scheme}127.0.0.1:{port}'" in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("x.*"))


def _ray_segment(args: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "diffsegmenter", "segment", *args, "--ray", *CHEAP[:4], "--format", "png"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_actors_that_cannot_load_the_model_stop_the_run_with_the_cause(tmp_path: Path) -> None:
    # --device cuda on a head without CUDA was refused before Ray started, though the docs say the driver loads
    # its checking model on the CPU (the actors, on GPU nodes, use --device); and when the actors could not load
    # the model, the run ended in screens of Ray tracebacks, exit 1, no report. 8 workers for 1 image loaded 8
    # models (the pool is now no larger than the batches).
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (the actors must fail to put the model on it)")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes((EXAMPLES / "shapes_30000000.png").read_bytes())
    done = _ray_segment([str(src), "--out", str(tmp_path / "o"), "--workers", "8", "--device", "cuda"])
    assert done.returncode == 3, done.stderr[-3000:]
    assert "the Ray workers failed: " in done.stderr and "CUDA" in done.stderr.split("the Ray workers failed: ")[1]
    assert "is set to 8, but the operator only received 1 input" not in done.stderr  # Ray's warning


@pytest.mark.slow
def test_after_a_stop_the_count_matches_the_images_written(tmp_path: Path) -> None:
    # images the actors finished after the stopping row were written (and listed in the run files) but reported as
    # "not started"; the stop message said "could not write its outputs" twice
    src, out = tmp_path / "in", tmp_path / "o"
    (src / "0 dir").mkdir(parents=True)  # sorts first: the images after it are the ones finished after the stop
    examples = sorted(EXAMPLES.glob("*.png"))
    for example, name in zip(examples, ("0 dir/b.png", "a.png", "c.png", "d.png")):
        (src / name).write_bytes(example.read_bytes())
    out.mkdir()
    (out / "0 dir").write_text("a file where the folder should go")  # b's outputs cannot be written
    done = _ray_segment([str(src), "--out", str(out), "--workers", "1"])
    assert done.returncode == 3, done.stderr[-3000:]
    written = sum((out / f"{stem}.json").is_file() for stem in ("a", "c", "d"))
    assert f"{written} segmented" in done.stdout + done.stderr
    assert done.stderr.count("could not write") == 1


def test_an_interrupted_overwrite_pass_resumes_on_ray_too(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    # the local run kept what an interrupted --overwrite pass had redone, but `--ray --overwrite` redid every image
    from diffsegmenter.batch.images import ImageTask

    from .test_cli import _save_random

    for i in range(2):
        _save_random(tmp_path / "in" / f"{i}.png", (24, 32), i)
    out = tmp_path / "out"
    base = ["segment", str(tmp_path / "in"), "--out", str(out), "--model", str(tiny_model_dir), "--format", "png"]
    assert cli.main([*base, "--classes", "a,b", "--quiet"]) == 0
    finish = ImageTask.finish

    def interrupted(self, jobs, report):
        raise KeyboardInterrupt  # after both images were redone, before the pass completed

    monkeypatch.setattr(ImageTask, "finish", interrupted)
    assert cli.main([*base, "--classes", "c,d", "--overwrite", "--quiet"]) == 130
    monkeypatch.setattr(ImageTask, "finish", finish)
    assert (out / ".diffsegmenter-overwrite.json").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("[0-9].*")}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "diffsegmenter", *base, "--classes", "c,d", "--overwrite", "--ray"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 segmented, 2 already done" in done.stdout, done.stdout  # Ray is not even started
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("[0-9].*")}
    assert not (out / ".diffsegmenter-overwrite.json").exists()  # the pass completed
