"""Training and tuning never write into the installed package: they refuse an output folder inside it."""

from __future__ import annotations

import pytest

from research.shapes import ensemble, filter_tune, readouts, train_mmdit, tune, tune_dit
from research.shapes import train as T
from research.shapes.components import check_out_dir, package_folder


def test_check_out_dir_refuses_the_package_and_accepts_a_new_folder(tmp_path):
    pkg = package_folder()
    assert (pkg / "models" / "shapes" / "unet").is_dir()
    for inside in (pkg, pkg / "models" / "shapes", pkg / "models" / "shapes" / "new"):
        with pytest.raises(ValueError, match="inside the installed diffsegmenter package"):
            check_out_dir(inside)
    assert check_out_dir(tmp_path / "run") == tmp_path / "run"


@pytest.mark.parametrize("module", [tune, filter_tune, tune_dit], ids=["tune", "filter_tune", "tune_dit"])
def test_tuners_refuse_to_write_into_the_shipped_model_folder(module):
    shipped = package_folder() / "models" / "shapes"
    before = {p: p.stat().st_mtime_ns for p in shipped.rglob("*")}
    with pytest.raises(ValueError, match="--out"):  # raised before any model is loaded
        module.main(["--model", "shapes", "--out", str(shipped)])
    assert {p: p.stat().st_mtime_ns for p in shipped.rglob("*")} == before


@pytest.mark.parametrize("main", [T.main, train_mmdit.main], ids=["train", "train_mmdit"])
def test_train_refuses_an_out_folder_inside_the_package(main):
    out = package_folder() / "models" / "shapes-run"
    with pytest.raises(ValueError, match="--out"):
        main(["--out", str(out), "--tiny", "--device", "cpu", "--threads", "1"])
    assert not out.exists()


@pytest.mark.parametrize("main", [T.main, train_mmdit.main], ids=["train", "train_mmdit"])
def test_train_refuses_a_folder_that_holds_a_run_unless_resuming(main, tmp_path):
    """A second run into a finished folder overwrote its config and model, appended to its log and kept its best/
    (the other run's model, which the GPU recipe ships)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"event": "setup"}\n')
    with pytest.raises(ValueError, match=r"already holds a training run \(log.jsonl\): pass --resume"):
        main(["--out", str(out), "--tiny", "--device", "cpu", "--threads", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]
    (out / "log.jsonl").unlink()
    (out / "ckpt-40").mkdir()
    with pytest.raises(ValueError, match=r"\(ckpt-40\)"):
        main(["--out", str(out), "--tiny", "--device", "cpu", "--threads", "1"])


@pytest.mark.parametrize(
    ("main", "record"),
    [
        (tune.main, "tuning.json"),
        (tune_dit.main, "tuning.json"),
        (filter_tune.main, "filter_tuning.json"),
        (readouts.main, "readouts.json"),
        (ensemble.main, "ensemble.json"),
    ],
    ids=["tune", "tune_dit", "filter_tune", "readouts", "ensemble"],
)
def test_tuners_refuse_a_folder_holding_their_record(main, record, tmp_path):
    """They overwrote an earlier run's record without a word."""
    (tmp_path / record).write_text('{"earlier": true}\n')
    with pytest.raises(ValueError, match=f"already holds {record}, an earlier run's record"):  # before loading
        main(["--model", "shapes", "--out", str(tmp_path)])
    assert (tmp_path / record).read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize(
    ("main", "extra"),
    [(tune.main, ["--report", "r.json"]), (filter_tune.main, []), (tune_dit.main, [])],
    ids=["tune --report", "filter_tune", "tune_dit"],
)
def test_tuners_refuse_to_write_over_an_earlier_segmenter_config(main, extra, tmp_path):
    """They wrote OUT/segmenter_config.json over an earlier run's without a word (tune with --report elsewhere;
    filter_tune into tune's folder replaced its chosen settings)."""
    (tmp_path / "segmenter_config.json").write_text('{"earlier": true}\n')
    extra = [str(tmp_path / e) if e.endswith(".json") else e for e in extra]
    with pytest.raises(ValueError, match="already holds segmenter_config.json"):  # before loading
        main(["--model", "shapes", "--out", str(tmp_path), "--val", "1", "--test", "1", *extra])
    assert (tmp_path / "segmenter_config.json").read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize("main", [tune.main, filter_tune.main, tune_dit.main, ensemble.main])
def test_a_search_on_no_val_scenes_is_refused(main, tmp_path, capsys):
    # tune --val 0 scored every setting nan, "chose" one and wrote a segmenter config saying so
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "run"), "--val", "0"])
    assert stop.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_measure_refuses_parts_of_other_settings_in_one_record(tmp_path, monkeypatch):
    # the record holds one "settings" for all its parts: a part at tau 0.9 relabelled the tau 0.3 parts as 0.9
    import json

    from research.shapes import measure

    monkeypatch.setitem(measure.PARTS, "tiny", ("val", 0, 1, "present"))
    record = tmp_path / "measure.json"
    measure.measure(["tiny"], record, {"tau": 0.3, "flip": False, "resolution": 64}, threads=1)
    assert json.loads(record.read_text())["settings"]["tau"] == 0.3
    with pytest.raises(SystemExit, match="holds parts measured with other settings"):
        measure.measure(["tiny"], record, {"tau": 0.9, "flip": False, "resolution": 64}, threads=1)
    assert json.loads(record.read_text())["settings"]["tau"] == 0.3
