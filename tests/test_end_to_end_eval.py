"""The evaluation harness end to end: the real DiffSegmenter (tiny random model) on a shapes world in VOC layout."""

from __future__ import annotations

import json

from diffsegmenter.cli.evaluate import main_eval
from research.shapes.world import export_voc


def test_eval_oracle_on_fake_voc_with_tiny_model(tiny_model_dir, tmp_path):
    root = export_voc(tmp_path / "shapes", {"test": 4}, workers=1)
    out = tmp_path / "out"
    argv = [
        "--dataset",
        "shapes",
        "--root",
        str(root),
        "--split",
        "test",
        "--protocol",
        "oracle",
        "--out",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--no-progress",
    ]
    assert main_eval(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"] == "oracle" and report["num_images"] == 4
    assert 0.0 <= report["mIoU"] <= 100.0
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"test_{i:06d}.png" for i in range(4)]
    assert (out / "metrics.md").read_text().count("|") > 10
    # resumable: a second run finds every prediction and gives the same numbers
    assert main_eval(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == report["mIoU"]
