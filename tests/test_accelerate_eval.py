"""``eval`` on 2 CPU processes (torchrun, as ``accelerate launch`` starts them on several GPUs): each process
predicts its share, a resume shares out what is left, and the predictions equal a single-process run's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from research.shapes.world import export_voc

pytest.importorskip("accelerate")


@pytest.mark.slow
def test_eval_on_two_processes_equals_one(tmp_path: Path) -> None:
    root = export_voc(tmp_path / "shapes", {"train": 0, "val": 0, "test": 4}, workers=1)
    flags = ["eval", "--dataset", "shapes", "--root", str(root), "--protocol", "oracle", "--set", "resolution=64"]
    flags += ["--set", "flip=false"]  # the plumbing under test, at the cost it had before the shapes model took flip
    flags += ["--offline", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "diffsegmenter", *flags, "--out", str(one)]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher, no MPI), so the
    # split was never exercised; torchrun starts two, and the harness needs PartialState(cpu=True) to see them
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "diffsegmenter", *flags]
    # a fresh run of the first two images: each process predicts one
    done = subprocess.run([*launch, "--limit", "2", "--out", str(two)], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shares = sorted(int(n) for n in re.findall(r"shapes: (\d+) images predicted", done.stderr))
    assert shares == [1, 1], done.stderr[-3000:]  # each process its half (each predicted all of them once)
    # then all four, resumed. Each process split the whole list, so the first found its half done and waited at the
    # final barrier for the other's whole half (past the process group's 30-minute time-out on a real benchmark);
    # now the processes split what is left
    done = subprocess.run([*launch, "--out", str(two)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    shares = sorted(int(n) for n in re.findall(r"shapes: (\d+) images predicted", done.stderr))
    assert shares == [1, 1], done.stderr[-3000:]
    counts = json.loads((two / "metrics.json").read_text())
    assert (counts["computed"], counts["reused"]) == (2, 2)  # every process's work (the main one's only before)
    assert "once every shard has run" not in done.stdout  # the other process told the user to run --score-only
    predictions = sorted(p.name for p in (one / "predictions").rglob("*.png"))
    assert len(predictions) == 4
    assert predictions == sorted(p.name for p in (two / "predictions").rglob("*.png"))
    for name in predictions:
        (a,) = (one / "predictions").rglob(name)
        (b,) = (two / "predictions").rglob(name)
        assert a.read_bytes() == b.read_bytes(), name
    assert (two / "metrics.json").is_file()
