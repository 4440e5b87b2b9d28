"""The evaluation harness end to end: the real DiffSegmenter (tiny random model) on a shapes world in VOC layout."""

from __future__ import annotations

import json

from diffsegmenter import cli
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


def test_a_resume_with_another_transformer_model_is_refused(family_folders, tmp_path, capsys):
    # on SD3, FLUX and PixArt the run recorded "model": null (it read the UNet's config only), so a rerun with other
    # weights of the same settings reused the first model's predictions and reported them as the second's
    import shutil

    root = export_voc(tmp_path / "shapes", {"test": 2}, workers=1)
    other = tmp_path / "pixart-b"
    shutil.copytree(family_folders["pixart"], other)
    out = tmp_path / "out"
    base = ["--dataset", "shapes", "--root", str(root), "--split", "test", "--protocol", "oracle", "--out", str(out)]
    base += ["--set", "resolution=32", "--no-progress"]
    assert main_eval([*base, "--model", str(family_folders["pixart"])]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["model"] == str(family_folders["pixart"])
    assert report["backbone"] == "PixArtBackbone" and report["dtype"] == "torch.float32"
    capsys.readouterr()
    assert cli.main(["eval", *base, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds predictions made with other settings (model: " in err and "pixart-b" in err, err
    assert json.loads((out / "metrics.json").read_text()) == report  # nothing reused as the other model's
    # a run of the version that recorded "model": null resumes (the same weights, most likely): not a change
    record = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps({**record, "model": None}))
    assert main_eval([*base, "--model", str(family_folders["pixart"])]) == 0
