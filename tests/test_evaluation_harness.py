import argparse
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from diffsegmenter.cli import evaluate as eval_command
from diffsegmenter.cli.evaluate import add_eval_arguments, run_eval
from diffsegmenter.evaluation import harness
from diffsegmenter.evaluation.datasets import VOC_CLASSES, load_dataset
from diffsegmenter.evaluation.harness import (
    NO_BACKGROUND_TAU,
    SWEEP_TAUS,
    evaluate,
    parse_shard,
    score_predictions,
    shard_bounds,
)
from diffsegmenter.io.palette import VOC_PALETTE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H, W = 6, 8
# image id -> foreground VOC class ids painted in it (left block, right block); [] = background only
IMAGES = {
    "2007_000001": [15, 12],  # person, dog
    "2007_000002": [1],  # aeroplane
    "2007_000003": [],
    "2007_000004": [20, 15],  # tvmonitor, person
    "2007_000005": [7],  # car
}


class FakeSegmenter:
    """Deterministic stand-in for DiffSegmenter: class k scores 0.9 where the red channel equals 10 * its VOC id
    (how the fake images are painted), 0.1 elsewhere; labels = argmax over [tau, scores] as the real one."""

    def __init__(self, tau: float = 0.4):
        self.config = SimpleNamespace(tau=tau, seed=0)
        self.calls: list[dict] = []

    def segment(self, image, classes, **kwargs):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (H, W, 3)
        self.calls.append({"classes": list(classes), **kwargs})
        tau = kwargs.get("tau", self.config.tau)
        names = [c.lower() for c in VOC_CLASSES]
        ids = [names.index(c) for c in classes]
        red = image[..., 0].astype(int)
        scores = np.stack([np.where(red == 10 * i, 0.9, 0.1) for i in ids]).astype(np.float32)
        labels = np.concatenate([np.full((1, H, W), tau, np.float32), scores]).argmax(0)
        return SimpleNamespace(labels=labels.astype(np.int32), scores=scores, classes=list(classes), tau=tau)


def make_voc(tmp: Path, images=IMAGES, split="val") -> Path:
    """Fake VOC2012 in the exact layout (PNG images so that pixel values survive), GT with an ignored first row."""
    root = tmp / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(images) + "\n")
    for image_id, classes in images.items():
        gt = np.zeros((H, W), np.uint8)
        for k, c in enumerate(classes):
            gt[2:, k * 4 : k * 4 + 3] = c
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[..., 0] = gt * 10
        gt[0] = 255
        (root / "JPEGImages").mkdir(exist_ok=True)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.png")
        label = Image.fromarray(gt)
        label.putpalette(VOC_PALETTE.reshape(-1).tolist())  # was voc_colormap()
        label.save(root / "SegmentationClass" / f"{image_id}.png")
    return tmp


@pytest.fixture
def voc(tmp_path):
    return load_dataset("voc21", make_voc(tmp_path / "data"))


def gt_names(image_id):
    return [VOC_CLASSES[c] for c in sorted(IMAGES[image_id])]


def test_oracle_end_to_end_and_outputs(voc, tmp_path):
    seg = FakeSegmenter()
    out = tmp_path / "out"
    report = evaluate(seg, voc, out, protocol="oracle", progress=False)
    # oracle passes exactly the GT classes of each image, in class-id order; no filter, no tau override
    assert [c["classes"] for c in seg.calls] == [gt_names(i) for i in IMAGES if IMAGES[i]]
    assert all(set(c) == {"classes"} for c in seg.calls)
    assert report["mIoU"] == 100.0 and report["aAcc"] == 100.0
    assert report["per_class_iou"]["person"] == 100.0 and report["per_class_iou"]["cat"] is None
    assert report["protocol"] == "oracle" and report["tau"] == 0.4 and report["dataset"] == "voc21"
    assert report["num_images"] == 5 and report["missing_predictions"] == []
    assert json.loads((out / "metrics.json").read_text()) == report
    md = (out / "metrics.md").read_text()
    assert "| person | 100.00 |" in md and "mIoU" in md
    pred = Image.open(out / "predictions" / "2007_000001.png")
    assert pred.mode == "P" and pred.getpalette()[3:6] == [128, 0, 0]
    assert np.array(pred)[3, 0] == 15 and np.array(pred)[3, 4] == 12
    # the background-only image was not sent to the segmenter but still has a prediction
    assert (out / "predictions" / "2007_000003.png").is_file()
    assert not list((out / "predictions").glob("*.tmp")) and not list((out / "predictions").glob(".*"))


def test_resume_recomputes_nothing(voc, tmp_path):
    first = FakeSegmenter()
    report1 = evaluate(first, voc, tmp_path / "out", protocol="full-vocabulary", progress=False)
    assert len(first.calls) == 5 and all(len(c["classes"]) == 20 for c in first.calls)
    second = FakeSegmenter()
    report2 = evaluate(second, voc, tmp_path / "out", protocol="full-vocabulary", progress=False)
    assert second.calls == []
    assert report2["reused"] == 5 and report2["computed"] == 0
    assert report2["mIoU"] == report1["mIoU"]


def test_shards_cover_every_image_once_then_full_run_scores(voc, tmp_path):
    out = tmp_path / "out"
    seen = []
    for i in range(3):
        seg = FakeSegmenter()
        summary = evaluate(seg, voc, out, protocol="full-vocabulary", shard=(i, 3), progress=False)
        assert summary["metrics_computed"] is False
        seen += [p.stem for p in (out / "predictions").glob("*.png") if p.stem not in seen]
        assert len(seg.calls) == summary["num_images_in_shard"]
    assert sorted(seen) == sorted(IMAGES)
    assert not (out / "metrics.json").exists()
    final = FakeSegmenter()
    report = evaluate(final, voc, out, protocol="full-vocabulary", progress=False)
    assert final.calls == [] and report["mIoU"] == 100.0


@pytest.mark.parametrize("num_items", [0, 1, 5, 7, 100])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shard_bounds_partition_like_accelerate(num_items, count):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from accelerate import PartialState

    split = PartialState.split_between_processes.__wrapped__  # the generator behind the context manager
    items = list(range(num_items))
    covered = []
    for index in range(count):
        start, end = shard_bounds(num_items, index, count)
        covered += items[start:end]
        if count > 1 and index < num_items:  # past the last item accelerate < 1.14 repeats it; ours stay empty
            fake_state = SimpleNamespace(num_processes=count, process_index=index)
            assert next(split(fake_state, items)) == items[start:end]
        elif count > 1:
            assert start == end
    assert covered == items


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad, match in (("4/4", "0-based, use 0/4 .. 3/4"), ("x", "look like i/n"), ("0/0", "at least 1")):
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            parse_shard(bad)


def test_missing_and_unreadable_predictions_count_as_background_and_are_listed(voc, tmp_path):
    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, protocol="oracle", shard=(0, 2), progress=False)  # images 1-3 only
    (out / "predictions" / "2007_000002.png").write_bytes(b"not a png")
    report = score_predictions(voc, out, progress=False)
    assert report["missing_predictions"] == ["2007_000002", "2007_000004", "2007_000005"]
    assert "unreadable" in report["missing_prediction_reasons"]["2007_000002"]
    assert report["missing_prediction_reasons"]["2007_000004"] == "missing"
    assert report["num_images"] == 5 and report["protocol"] == "oracle"  # settings read back from run_config.json
    # scored as background: the classes only in missing images get IoU 0, background loses precision
    assert report["per_class_iou"]["aeroplane"] == 0.0 and report["per_class_iou"]["car"] == 0.0
    assert report["per_class_iou"]["dog"] == 100.0 and report["per_class_iou"]["background"] < 100.0
    assert "2007_000004" in (out / "metrics.md").read_text()


def test_a_damaged_prediction_is_predicted_again_on_resume_and_listed_when_only_scored(voc, tmp_path):
    # it used to count as done, so a rerun (the advice printed) never replaced it and it was scored as background
    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, protocol="oracle", progress=False)
    good = (out / "predictions" / "2007_000002.png").read_bytes()
    Image.new("L", (3, 3)).save(out / "predictions" / "2007_000001.png")  # wrong size
    (out / "predictions" / "2007_000002.png").write_bytes(good[:40])  # truncated
    report = score_predictions(voc, out, progress=False)  # --score-only: listed with the reason, not hidden
    assert report["missing_predictions"] == ["2007_000001", "2007_000002"]
    assert "shape" in report["missing_prediction_reasons"]["2007_000001"]
    assert "(shape" in (out / "metrics.md").read_text() and report["mIoU"] < 100.0
    seg = FakeSegmenter()
    report = evaluate(seg, voc, out, protocol="oracle", progress=False)
    assert len(seg.calls) == 2 and report["computed"] == 2 and report["reused"] == 3
    assert report["missing_predictions"] == [] and report["mIoU"] == 100.0
    assert (out / "predictions" / "2007_000002.png").read_bytes() == good


def test_paper_protocol_candidate_json_absolute_keys_matched_by_basename(voc, tmp_path):
    prefix = "/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages/"
    candidates = {
        "image_similarity": {f"{prefix}2007_000001.jpg": ["people"], f"{prefix}2007_000002.jpg": ["plane"]},
        "text_similarity": {f"{prefix}2007_000001.jpg": ["dog", "people"], f"{prefix}2007_000002.jpg": []},
        "synonym_matching": {f"{prefix}2007_000001.jpg": ["cat"]},  # ignored, as in the released code
    }
    path = tmp_path / "predict_syn_txt_0.8_img_0.97.json"
    path.write_text(json.dumps(candidates))
    seg = FakeSegmenter()
    report = evaluate(seg, voc, tmp_path / "out", candidates_json=path, limit=3, progress=False)
    assert [c["classes"] for c in seg.calls] == [["dog", "person"], ["aeroplane"]]  # union, class-id order
    assert report["protocol"] == "paper" and report["num_images"] == 3
    assert report["images_without_candidates"] == ["2007_000003"]
    assert report["mIoU"] == 100.0


def test_files_saved_on_windows_are_read_and_resume_the_run(tmp_path):
    # Notepad's byte-order mark and CRLF: the split list's first id was "\ufeff2007_000001" (reported missing), the
    # candidate file was "not valid JSON", and the same candidates with LF endings (a git checkout) refused a resume
    root = make_voc(tmp_path / "data")
    split = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes().replace(b"\n", b"\r\n"))
    voc = load_dataset("voc21", root)
    assert voc.samples[0].image_id == "2007_000001"
    text = json.dumps({"image_similarity": {"2007_000001.jpg": ["dog"]}, "text_similarity": {}}, indent=1)
    windows, unix = tmp_path / "windows.json", tmp_path / "unix.json"
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    unix.write_text(text.replace('"dog"]', '"dog" ]'))
    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, candidates_json=windows, limit=2, progress=False)
    again = FakeSegmenter()
    report = evaluate(again, voc, out, candidates_json=unix, progress=False)
    assert report["reused"] == 2 and report["computed"] == 3 and len(again.calls) == 0  # no candidates: not sent
    assert score_predictions(voc, out, candidates_json=unix, progress=False)["mIoU"] == report["mIoU"]
    other = tmp_path / "other.json"
    other.write_text(text.replace("dog", "cat"))
    with pytest.raises(ValueError, match="other settings"):
        evaluate(FakeSegmenter(), voc, out, candidates_json=other, progress=False)


def test_a_folder_of_an_older_version_still_checks_its_candidate_file(voc, tmp_path):
    from diffsegmenter.evaluation.scoring import file_sha256

    first, other = tmp_path / "first.json", tmp_path / "other.json"
    first.write_text(json.dumps({"image_similarity": {"2007_000001.jpg": ["dog"]}, "text_similarity": {}}))
    other.write_text(json.dumps({"image_similarity": {"2007_000001.jpg": ["cat"]}, "text_similarity": {}}))
    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, candidates_json=first, limit=2, progress=False)
    record = json.loads((out / "run_config.json").read_text())  # as the version before recorded it: the bytes
    record["candidates_sha256"] = file_sha256(first)
    del record["candidates_content_sha256"]
    (out / "run_config.json").write_text(json.dumps(record))
    # the new key was missing from the old record, so nothing was compared: other candidates mixed in
    with pytest.raises(ValueError, match="candidates_sha256"):
        evaluate(FakeSegmenter(), voc, out, candidates_json=other, progress=False)
    assert evaluate(FakeSegmenter(), voc, out, candidates_json=first, progress=False)["reused"] == 2


def test_paper_protocol_with_filter_sends_vocabulary_and_filter(voc, tmp_path):
    seg = FakeSegmenter()
    evaluate(seg, voc, tmp_path / "out", filter="clip", limit=1, progress=False)
    assert seg.calls[0]["filter"] == "clip" and seg.calls[0]["classes"] == list(VOC_CLASSES[1:])


def test_tau_is_forwarded_only_when_given(voc, tmp_path):
    seg = FakeSegmenter()
    report = evaluate(seg, voc, tmp_path / "out", protocol="oracle", tau=0.95, progress=False)
    assert all(c["tau"] == 0.95 for c in seg.calls)
    assert report["tau"] == 0.95
    assert report["per_class_iou"]["person"] == 0.0  # 0.9 < tau: everything is background


def test_report_says_where_tau_and_settings_came_from(voc, tmp_path):
    # the note said "fixed, not tuned on this split" for any tau, also the shapes model's, chosen on the split read
    seg = FakeSegmenter()
    seg.config.resolution, seg.config.flip = 64, True
    seg.resolution = 64
    seg.model_settings = SimpleNamespace(provenance="chosen on 150 val scenes")
    report = evaluate(seg, voc, tmp_path / "own", protocol="oracle", progress=False)
    assert report["tau_source"] == "segmenter config" and "not tuned" not in report["tau_note"]
    assert "settings_provenance" in report["tau_note"]
    assert report["settings_provenance"] == "chosen on 150 val scenes"
    # the settings that made the numbers are in the report (two runs at other resolutions read the same before)
    assert report["segmenter_config"]["resolution"] == 64 and report["segmenter_config"]["flip"] is True
    assert report["input_protocol"].startswith("whole image resized to 64x64")
    md = (tmp_path / "own" / "metrics.md").read_text()
    assert "resolution=64, flip=True" in md and "| settings chosen | chosen on 150 val scenes |" in md
    assert "no sliding window" in md
    given = evaluate(FakeSegmenter(), voc, tmp_path / "given", protocol="oracle", tau=0.5, progress=False)
    assert given["tau_source"] == "given" and "(--tau)" in given["tau_note"]
    assert given["settings_provenance"] is None and given["input_protocol"] is None
    # --score-only reads them back from run_info.json
    again = score_predictions(voc, tmp_path / "own", progress=False)
    assert again["tau_note"] == report["tau_note"] and again["segmenter_config"] == report["segmenter_config"]


def test_settings_set_for_the_run_are_told_from_the_folders(voc, tmp_path):
    # --set tau=0.3 was reported as "the segmenter's configured tau", beside the folder's provenance
    from diffsegmenter import SegmenterConfig
    from diffsegmenter.settings import ModelSettings

    seg = FakeSegmenter(tau=0.3)
    seg.model_settings = ModelSettings(segmenter={"tau": 0.5}, provenance="chosen on val")
    seg.backbone = SimpleNamespace(family_defaults=lambda: {"timestep": 50})
    seg.config = SegmenterConfig(tau=0.5, timestep=50)
    report = evaluate(seg, voc, tmp_path / "folder", protocol="oracle", limit=1, progress=False)
    assert report["settings_overridden"] == [] and report["tau_source"] == "segmenter config"
    assert "| settings chosen | chosen on val |" in (tmp_path / "folder" / "metrics.md").read_text()
    seg.config = SegmenterConfig(tau=0.3, timestep=50, flip=True)
    report = evaluate(seg, voc, tmp_path / "set", protocol="oracle", limit=1, progress=False)
    assert report["settings_overridden"] == ["flip", "tau"] and report["tau_source"] == "set on the segmenter"
    assert "not its model folder's" in report["tau_note"]
    md = (tmp_path / "set" / "metrics.md").read_text()
    assert (
        "| settings chosen | chosen on val (except flip, tau: set for this run, by its flags or its protocol) |" in md
    )


def test_dataset_without_background_uses_tau_minus_one(tmp_path):
    voc20 = load_dataset("voc20", make_voc(tmp_path / "data"))
    seg = FakeSegmenter()
    report = evaluate(seg, voc20, tmp_path / "out", protocol="oracle", progress=False)
    assert all(c["tau"] == NO_BACKGROUND_TAU for c in seg.calls)
    assert report["tau"] == NO_BACKGROUND_TAU and "never wins" in report["tau_note"]
    # every pixel of image 2 gets aeroplane (id 0 in voc20); its GT background pixels are ignored
    pred = np.array(Image.open(tmp_path / "out" / "predictions" / "2007_000002.png"))
    assert (pred == 0).all()
    # background-only image: no class to segment -> "no prediction" (255), which only GT-ignored pixels hold
    assert (np.array(Image.open(tmp_path / "out" / "predictions" / "2007_000003.png")) == 255).all()
    assert report["mIoU"] == 100.0
    with pytest.raises(ValueError, match="no background class"):
        evaluate(FakeSegmenter(), voc20, tmp_path / "out2", protocol="oracle", tau=0.4)


def test_tau_sweep_is_optional_and_labelled_optimistic(voc, tmp_path):
    out = tmp_path / "out"
    report = evaluate(FakeSegmenter(), voc, out, protocol="oracle", sweep_tau=True, progress=False)
    sweep = report["tau_sweep_optimistic"]
    assert sweep["note"] == "tau tuned on this split (optimistic)"
    assert len(sweep["mIoU_by_tau"]) == len(SWEEP_TAUS) == 45
    assert list(sweep["mIoU_by_tau"])[0] == "0.30" and list(sweep["mIoU_by_tau"])[-1] == "0.74"
    assert sweep["best_mIoU"] == 100.0 and report["mIoU"] == 100.0
    with np.load(out / "scores" / "2007_000001.npz") as data:  # each pixel's best score and class, float32
        assert data["best_score"].dtype == np.float32 and data["best_score"].shape == (H, W)
        assert set(np.unique(data["best_class"]).tolist()) <= {12, 15}
    plain = evaluate(FakeSegmenter(), voc, tmp_path / "plain", protocol="oracle", progress=False)
    assert "tau_sweep_optimistic" not in plain and not (tmp_path / "plain" / "scores").exists()


def test_changed_settings_refuse_to_mix_predictions(voc, tmp_path):
    seg = FakeSegmenter()
    seg.unet = SimpleNamespace(config={"_name_or_path": "org/model-a"})
    report = evaluate(seg, voc, tmp_path / "out", protocol="oracle", limit=1, progress=False)
    assert report["model"] == "org/model-a"
    with pytest.raises(ValueError, match="protocol: 'oracle' -> 'full-vocabulary'"):
        evaluate(seg, voc, tmp_path / "out", protocol="full-vocabulary", limit=1, progress=False)
    seg.unet.config["_name_or_path"] = "org/model-b"
    with pytest.raises(ValueError, match="model-a"):
        evaluate(seg, voc, tmp_path / "out", protocol="oracle", limit=1, progress=False)
    seg.unet.config["_name_or_path"] = "org/model-a"
    seg.config.seed = 1
    with pytest.raises(ValueError, match=r"settings \(segmenter_config.seed: 0 -> 1\)\. Resuming"):
        evaluate(seg, voc, tmp_path / "out", protocol="oracle", limit=1, progress=False)  # that setting, not the dicts
    seg.config.seed = 0
    seg.config.batch_size = 4  # a smaller batch after running out of memory (as `segment` allows): the same results
    assert evaluate(seg, voc, tmp_path / "out", protocol="oracle", limit=1, progress=False)["reused"] == 1


def test_a_run_with_other_settings_is_refused_while_another_uses_the_folder(voc, tmp_path):
    # the second of two runs started together (shards started with `&`) replaced the first's run_config.json
    # while no prediction was written yet, and both went on: predictions of both settings, recorded as one
    import fcntl

    from diffsegmenter.batch.folder import SHARED_LOCK_FILE
    from diffsegmenter.batch.runner import check_run_fingerprint

    out = tmp_path / "out"
    evaluate(FakeSegmenter(tau=0.5), voc, out, protocol="oracle", limit=1, progress=False)
    first = harness._fingerprint(FakeSegmenter(tau=0.4), voc, "oracle", 0.4, None, None)
    (out / "predictions").rename(tmp_path / "kept")  # the other run has recorded its settings, not predicted yet
    check_run_fingerprint(out, first)
    fd = os.open(out / SHARED_LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # ... and is running
    try:
        with pytest.raises(ValueError, match=r"another run with other settings \(tau: 0.4 -> 0.5\) is writing"):
            evaluate(FakeSegmenter(tau=0.5), voc, out, protocol="oracle", limit=1, progress=False)
        assert json.loads((out / "run_config.json").read_text())["tau"] == 0.4
        report = evaluate(FakeSegmenter(tau=0.4), voc, out, protocol="oracle", limit=1, progress=False)
        assert report["computed"] == 1  # a run with the same settings joins it
    finally:
        os.close(fd)
    shutil.rmtree(out / "predictions")  # when no run holds the folder, a run that predicted nothing is replaced
    assert evaluate(FakeSegmenter(tau=0.5), voc, out, protocol="oracle", limit=1, progress=False)["computed"] == 1


@pytest.mark.parametrize(
    ("record", "content", "match"),
    [
        ("run_config.json", "{bad", "run_config.json is not a readable run record \\(Expecting property name"),
        ("run_config.json", "[1, 2]", "run_config.json is not a readable run record \\(it holds a JSON list"),
        ("run_info.json", "{bad", "run_info.json is not a readable run record"),
    ],
)
def test_a_damaged_run_record_is_named_with_the_way_out(voc, tmp_path, record, content, match):
    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, protocol="oracle", limit=1, progress=False)
    (out / record).write_text(content)
    way_out = "delete it together with .*predictions" if record == "run_config.json" else "delete it \\(the next"
    with pytest.raises(ValueError, match=f"{match}.*{way_out}"):  # was a bare JSON error, or an AttributeError
        if record == "run_info.json":
            harness.score_predictions(voc, out, limit=1, progress=False)  # --score-only
        else:
            evaluate(FakeSegmenter(), voc, out, protocol="oracle", limit=1, progress=False)


def test_a_file_where_the_predictions_go_is_named(voc, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions").write_text("")
    with pytest.raises(ValueError, match="predictions is a file, where the run keeps its predictions: move it"):
        evaluate(FakeSegmenter(), voc, tmp_path / "out", protocol="oracle", limit=1, progress=False)


def test_a_shard_under_a_launcher_is_refused(voc, tmp_path, monkeypatch):
    # every process of the launch predicted the same shard (and with 0/1, each scored and wrote metrics.json)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="shard 0/2 in process 1 of a launch of 2: the processes would not cover"):
        evaluate(FakeSegmenter(), voc, tmp_path / "out", protocol="oracle", shard=(0, 2), progress=False)
    assert not (tmp_path / "out").exists()
    report = evaluate(FakeSegmenter(), voc, tmp_path / "out", protocol="oracle", shard=(1, 2), progress=False)
    assert report["metrics_computed"] is False  # --shard $RANK/$WORLD_SIZE: each process its own shard


def test_a_process_of_the_launch_that_died_is_reported_in_one_line():
    def closed():
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    with pytest.raises(
        harness.PeerProcessError,
        match="most likely because another process stopped .*here: \\[.*Connection closed by peer\\).* resume",
    ):
        harness._collective(closed)
    assert harness._collective(lambda: 3) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"protocol": "paper"}, "needs per-image candidate classes"),
        ({"protocol": "oracle", "filter": "clip"}, "apply to protocol 'paper' only"),
        ({"protocol": "bogus"}, "protocol must be one of"),
        ({"protocol": "oracle", "limit": 0}, "limit"),
        ({"protocol": "oracle", "shard": (3, 3)}, "0-based"),
    ],
)
def test_invalid_arguments(voc, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(FakeSegmenter(), voc, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()  # rejected before anything is written


def test_bad_candidate_json(voc, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"foo": {}}))
    with pytest.raises(ValueError, match="image_similarity"):  # not in the released format
        evaluate(FakeSegmenter(), voc, tmp_path / "out", candidates_json=path, progress=False)
    path.write_text(json.dumps({"image_similarity": {"2007_000001.jpg": ["unicorn"]}, "text_similarity": {}}))
    with pytest.raises(ValueError, match="unicorn"):
        evaluate(FakeSegmenter(), voc, tmp_path / "out2", candidates_json=path, progress=False)


def test_cli_glue_forwards_only_given_flags(tmp_path):
    root = make_voc(tmp_path / "data")
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out")])
    optional = {k: v for k, v in vars(args).items() if k not in ("dataset", "root", "out")}
    assert optional and all(v is None for v in optional.values())

    captured = {}

    def fake_evaluate(segmenter, dataset, out_dir, **kwargs):
        captured.update(kwargs)
        return {}

    original = harness.evaluate
    harness.evaluate = fake_evaluate
    try:
        run_eval(args, segmenter=FakeSegmenter())
        assert captured == {}
        args = parser.parse_args(
            ["--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out"), "--protocol", "oracle",
             "--shard", "1/2", "--limit", "3", "--sweep-tau", "--no-progress", "--tau", "0.5"]
        )  # fmt: skip
        run_eval(args, segmenter=FakeSegmenter())
        assert captured == {
            "protocol": "oracle", "shard": (1, 2), "limit": 3, "sweep_tau": True, "progress": False, "tau": 0.5
        }  # fmt: skip
    finally:
        harness.evaluate = original


def test_cli_end_to_end_and_score_only(tmp_path):
    root = make_voc(tmp_path / "data")
    parser = add_eval_arguments(argparse.ArgumentParser())
    base = ["--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    report = run_eval(parser.parse_args([*base, "--protocol", "oracle"]), segmenter=FakeSegmenter())
    assert report["mIoU"] == 100.0

    def no_model(_args):
        raise AssertionError("--score-only must not load a model")

    again = run_eval(parser.parse_args([*base, "--score-only"]), load_segmenter=no_model)
    assert again["mIoU"] == 100.0 and again["protocol"] == "oracle"


def test_score_only_with_missing_predictions_exits_1(tmp_path, capsys):
    # `eval --score-only` before every shard ran printed a benchmark-looking mIoU (missing images scored as all
    # background) and exited 0; it still prints and writes the report, but says so and exits 1
    from diffsegmenter import cli

    root = make_voc(tmp_path / "data")
    base = ["eval", "--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main([*base, "--score-only"]) == 1
    captured = capsys.readouterr()
    assert (
        "mIoU" in captured.out
        and "have no usable prediction" in captured.err
        and "not the benchmark's number" in captured.err
    )
    parser = add_eval_arguments(argparse.ArgumentParser())
    run_eval(parser.parse_args([*base[1:], "--protocol", "oracle"]), segmenter=FakeSegmenter())
    assert cli.main([*base, "--score-only"]) == 0
    captured = capsys.readouterr()
    assert "have no usable prediction" not in captured.err
    # the printed number says what produced it
    assert "mIoU 100.00 on 5 image(s) of voc21 val (oracle protocol, tau 0.4)" in captured.out
    (tmp_path / "afile").write_text("")
    assert cli.main([*base[:-2], str(tmp_path / "afile"), "--no-progress", "--score-only"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_main_eval_returns_1_when_predictions_are_missing(tmp_path):
    # main_eval (the command for scripts) returned 0 where the command exits 1: a script trusting it took an mIoU
    # with the missing images scored as all background
    from diffsegmenter.cli.evaluate import main_eval

    root = make_voc(tmp_path / "data")
    base = ["--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main_eval([*base, "--score-only"]) == 1
    parser = add_eval_arguments(argparse.ArgumentParser())
    run_eval(parser.parse_args([*base, "--protocol", "oracle"]), segmenter=FakeSegmenter())
    assert main_eval([*base, "--score-only"]) == 0


def test_report_names_the_ground_truth_folder_scored(tmp_path):
    # VOC's SegmentationClass and SegmentationClassAug give different numbers; the one read was recorded nowhere
    root = make_voc(tmp_path / "data")
    voc_root = root / "VOCdevkit" / "VOC2012"
    (voc_root / "SegmentationClass").rename(voc_root / "SegmentationClassAug")
    out = tmp_path / "out"
    report = evaluate(FakeSegmenter(), load_dataset("voc21", root), out, protocol="oracle", progress=False)
    assert report["ground_truth"] == {"root": str(voc_root), "labels": "SegmentationClassAug"}
    assert "| ground truth | `SegmentationClassAug` under" in (out / "metrics.md").read_text()


def test_sixteen_bit_images_are_read_as_segment_reads_them(tmp_path):
    # the harness converted a 16-bit grayscale PNG with PIL's convert("RGB"), which clips it to white
    from diffsegmenter.images import load_image

    path = tmp_path / "wide.png"
    values = np.linspace(0, 65535, 12).reshape(3, 4).astype(np.uint16)
    Image.fromarray(values).save(path)
    pixels = harness._read_rgb(path)
    np.testing.assert_array_equal(pixels, load_image(path))
    assert pixels.shape == (3, 4, 3) and len(np.unique(pixels)) == 12


def test_default_model_loader_forwards_only_given_flags(tmp_path, monkeypatch):
    import diffsegmenter

    loaded = []

    class FakeDiffSegmenter:
        @classmethod
        def from_pretrained(cls, model, **kwargs):
            loaded.append((model, kwargs))
            return FakeSegmenter()

    # setitem, not setattr: reading the old attribute would trigger the package's lazy import of the real model code
    monkeypatch.setitem(vars(diffsegmenter), "DiffSegmenter", FakeDiffSegmenter)
    root = make_voc(tmp_path / "data")
    parser = add_eval_arguments(argparse.ArgumentParser())
    base = ["--dataset", "voc21", "--root", str(root), "--protocol", "oracle", "--no-progress", "--limit", "1"]
    run_eval(parser.parse_args([*base, "--out", str(tmp_path / "a")]))
    run_eval(
        parser.parse_args(
            [*base, "--out", str(tmp_path / "b"), "--model", "my/sd", "--device", "cuda:1",
             "--set", "token_rule=last", "--set", "ing_heuristic=true", "--set", "template=a photography of {}"]
        )
    )  # fmt: skip
    assert loaded == [
        (harness.DEFAULT_MODEL, {}),
        (
            "my/sd",
            {"device": "cuda:1", "token_rule": "last", "ing_heuristic": True, "template": "a photography of {}"},
        ),
    ]
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--out", "x", "--set", "novalue"])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg", "2007_000033"),
        ("2008_000002.jpg", "2008_000002"),
        ("COCO_val2014_000000182611.jpg", "000000182611"),
        ("C:\\data\\val2017\\000000000139.jpg", "000000000139"),
        ("frankfurt_000000_000294", "frankfurt_000000_000294"),
        ("scene.v1.jpg", "scene.v1"),  # an id with a dot keeps it
    ],
)
def test_candidate_keys_match_image_ids(key, expected):
    from diffsegmenter.io.paths import image_key

    # the candidate file's reader cuts a key to its image id; the harness then matches ids without the COCO prefix
    assert harness._sample_key(image_key(key)) == expected
    assert harness._sample_key(expected) == expected  # a dataset's own image id is left as it is


def test_paper_protocol_applies_each_datasets_released_script_rule(tmp_path, monkeypatch):
    import diffsegmenter
    from diffsegmenter.config import RELEASED_SCRIPT_RULES, SegmenterConfig

    loaded = []

    class FakeDiffSegmenter:
        @classmethod
        def from_pretrained(cls, model, **kwargs):
            loaded.append(kwargs)
            return FakeSegmenter()

    monkeypatch.setitem(vars(diffsegmenter), "DiffSegmenter", FakeDiffSegmenter)
    parser = add_eval_arguments(argparse.ArgumentParser())
    for dataset, script in [("voc21", "voc12"), ("pc60", "context"), ("context", "context"), ("object", "coco")]:
        loaded.clear()
        args = parser.parse_args(["--dataset", dataset, "--root", "r", "--out", "o", "--candidates", "c.json"])
        eval_command.load_eval_segmenter(args)
        assert loaded == [RELEASED_SCRIPT_RULES[script]], dataset
    # the user's --set wins; other protocols and datasets without a released script keep the model's config
    args = parser.parse_args(["--dataset", "object", "--root", "r", "--out", "o", "--set", "ing_offset=1"])
    eval_command.load_eval_segmenter(args)
    assert loaded[-1] == {**RELEASED_SCRIPT_RULES["coco"], "ing_offset": 1}
    for extra in (["--dataset", "voc21", "--protocol", "oracle"], ["--dataset", "ade"]):
        eval_command.load_eval_segmenter(parser.parse_args([*extra, "--root", "r", "--out", "o"]))
        assert loaded[-1] == {}
    # the run record names the rule the segmenter used
    assert harness.prompt_rule_of(SegmenterConfig()).startswith("released voc12 script")
    assert harness.prompt_rule_of(SegmenterConfig(**RELEASED_SCRIPT_RULES["coco"])).startswith("released coco")
    assert harness.prompt_rule_of(SegmenterConfig(token_rule="mean")).startswith("own")
    root = make_voc(tmp_path / "data")
    seg = FakeSegmenter()
    seg.config = SegmenterConfig(**RELEASED_SCRIPT_RULES["context"])
    args = parser.parse_args(["--dataset", "voc21", "--root", str(root), "--out", str(tmp_path / "out"),
                              "--protocol", "oracle", "--no-progress"])  # fmt: skip
    report = run_eval(args, segmenter=seg)
    assert report["prompt_rule"].startswith("released context script")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["prompt_rule"] == report["prompt_rule"]


def test_accelerate_processes_past_the_last_image_predict_nothing():
    """Under ``accelerate launch`` each process takes :func:`shard_bounds` of its index, not accelerate's own split,
    which before accelerate 1.14 hands processes past the last image that image again (predicted twice)."""
    from diffsegmenter.evaluation.harness import _my_part

    samples = ["a", "b"]
    parts = [_my_part(samples, None, SimpleNamespace(num_processes=4, process_index=i)) for i in range(4)]
    assert parts == [["a"], ["b"], [], []]
    assert _my_part(samples, (1, 2), None) == ["b"] and _my_part(samples, None, None) == samples


# ------------------------------------------------------------------ faults found by a harness fault hunt (session 14)
class NearTauSegmenter(FakeSegmenter):
    """Class scores 2e-5 above tau where the class is: float16 maps put them at or below tau."""

    def segment(self, image, classes, **kwargs):
        result = super().segment(image, classes, **kwargs)
        result.scores = np.where(result.scores > 0.5, np.float32(0.40002), np.float32(0.1)).astype(np.float32)
        return result


def test_the_sweep_at_the_runs_tau_is_the_headline_and_has_no_best_with_a_score_map_missing(voc, tmp_path, capsys):
    from diffsegmenter import cli

    out = tmp_path / "out"
    report = evaluate(NearTauSegmenter(), voc, out, protocol="oracle", sweep_tau=True, progress=False)
    sweep = report["tau_sweep_optimistic"]
    assert sweep["mIoU_by_tau"]["0.40"] == report["mIoU"] == 100.0  # float16 maps gave background there
    (out / "scores" / "2007_000001.npz").unlink()  # e.g. shards run without --sweep-tau
    argv = ["eval", "--dataset", "voc21", "--root", str(voc.root.parent.parent), "--out", str(out), "--no-progress"]
    assert cli.main([*argv, "--protocol", "oracle", "--score-only", "--sweep-tau"]) == 1
    assert "the tau sweep has no best value" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())["tau_sweep_optimistic"]
    assert metrics["best_mIoU"] is None and metrics["best_tau"] is None  # all background would win the sweep
    assert metrics["missing_score_maps"] == ["2007_000001"] and "no best value" in (out / "metrics.md").read_text()


def test_the_captioner_dtype_and_oracle_label_folder_are_part_of_the_fingerprint(voc, tmp_path):
    import torch

    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, protocol="oracle", limit=2, progress=False)
    captioned = FakeSegmenter()
    captioned.captioner = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(_name_or_path="org/blip")))
    with pytest.raises(ValueError, match=r"captioner: None -> 'SimpleNamespace\(org/blip\)'"):
        evaluate(captioned, voc, out, protocol="oracle", progress=False)
    half = FakeSegmenter()
    half.dtype = torch.float16
    with pytest.raises(ValueError, match="dtype: None -> 'torch.float16'"):
        evaluate(half, voc, out, protocol="oracle", progress=False)
    import shutil

    shutil.copytree(voc.root / "SegmentationClass", voc.root / "SegmentationClassAug")
    aug = load_dataset("voc21", voc.root.parent.parent, label_dir="SegmentationClassAug")
    with pytest.raises(ValueError, match="labels: 'SegmentationClass' -> 'SegmentationClassAug'"):
        evaluate(FakeSegmenter(), aug, out, protocol="oracle", progress=False)


def test_score_only_refuses_another_dataset_and_keeps_the_runs_candidate_report(voc, tmp_path):
    candidates = tmp_path / "c.json"
    candidates.write_text(
        json.dumps({"image_similarity": {"2007_000001.jpg": ["dog"], "2007_000002.jpg": []}, "text_similarity": {}})
    )
    out = tmp_path / "out"
    for i in range(2):
        evaluate(FakeSegmenter(), voc, out, protocol="paper", candidates_json=candidates, shard=(i, 2), progress=False)
    report = score_predictions(voc, out, progress=False)
    # an empty list is listed as an image without candidates, and --score-only keeps what the runs recorded
    assert report["images_without_candidates"] == ["2007_000002", "2007_000003", "2007_000004", "2007_000005"]
    assert report["candidates_json"] == str(candidates) and report["protocol"] == "paper"
    voc20 = load_dataset("voc20", voc.root.parent.parent)
    with pytest.raises(ValueError, match="were made for voc21 val .* not for voc20 val"):
        score_predictions(voc20, out, progress=False)


def test_candidate_lists_of_dotted_image_ids_stay_apart(tmp_path):
    images = {"scene.v1": [15], "scene.v2": [12]}
    dataset = load_dataset("voc21", make_voc(tmp_path / "data", images=images))
    candidates = tmp_path / "c.json"
    candidates.write_text(
        json.dumps({"image_similarity": {"scene.v1.jpg": ["person"], "scene.v2.jpg": ["dog"]}, "text_similarity": {}})
    )
    seg = FakeSegmenter()
    report = evaluate(seg, dataset, tmp_path / "out", candidates_json=candidates, progress=False)
    assert [c["classes"] for c in seg.calls] == [["person"], ["dog"]]  # was the union for both
    assert report["mIoU"] == 100.0


def test_a_run_that_wrote_no_prediction_does_not_block_the_corrected_command(voc, tmp_path):
    out = tmp_path / "out"

    class Broken(FakeSegmenter):
        def segment(self, image, classes, **kwargs):
            raise RuntimeError("a setting that fails on the first image")

    with pytest.raises(RuntimeError):
        evaluate(Broken(tau=0.3), voc, out, protocol="oracle", progress=False)
    report = evaluate(FakeSegmenter(tau=0.4), voc, out, protocol="oracle", progress=False)  # was refused: tau changed
    assert report["mIoU"] == 100.0 and json.loads((out / "run_config.json").read_text())["tau"] == 0.4
    with pytest.raises(ValueError, match="other settings"):  # with predictions made, still refused
        evaluate(FakeSegmenter(tau=0.3), voc, out, protocol="oracle", progress=False)


def test_score_only_refuses_a_tau_the_predictions_were_not_made_with(voc, tmp_path, capsys):
    from diffsegmenter import cli

    out = tmp_path / "out"
    evaluate(FakeSegmenter(), voc, out, protocol="oracle", progress=False)
    argv = ["eval", "--dataset", "voc21", "--root", str(voc.root.parent.parent), "--out", str(out), "--no-progress"]
    assert cli.main([*argv, "--protocol", "oracle", "--score-only", "--tau", "0.4"]) == 0  # the same: fine
    assert cli.main([*argv, "--protocol", "oracle", "--score-only", "--tau", "0.6"]) == 2
    assert "were made with tau 0.4" in capsys.readouterr().err


def test_eval_options_are_checked_before_the_model_loads(tmp_path, capsys):
    from diffsegmenter import cli

    root = make_voc(tmp_path / "data")
    argv = ["eval", "--dataset", "voc20", "--root", str(root), "--out", str(tmp_path / "o"), "--protocol", "oracle"]
    assert cli.main([*argv, "--tau", "0.5", "--model", str(tmp_path / "no-such-model"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "voc20 has no background class" in err and "no-such-model" not in err


def test_each_process_of_a_several_gpu_run_loads_its_model_on_its_own_gpu(tmp_path, monkeypatch):
    # under torchrun / accelerate launch, "--device cuda" put every process's model on GPU 0
    import diffsegmenter
    from diffsegmenter.cli.evaluate import load_eval_segmenter

    loaded = []

    class FakeDiffSegmenter:
        @classmethod
        def from_pretrained(cls, model, **kwargs):
            loaded.append(kwargs.get("device"))
            return FakeSegmenter()

    monkeypatch.setitem(vars(diffsegmenter), "DiffSegmenter", FakeDiffSegmenter)
    monkeypatch.setattr("diffsegmenter.cli.parser._resolve_device", lambda text: text)  # no GPU here to check
    parser = add_eval_arguments(argparse.ArgumentParser())
    for device in ("cuda", "cuda:0", "cpu"):
        args = parser.parse_args(["--dataset", "voc21", "--root", "r", "--out", "o", "--device", device])
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("LOCAL_RANK", "3")
        load_eval_segmenter(args)
        monkeypatch.setenv("WORLD_SIZE", "1")
        load_eval_segmenter(args)
    assert loaded == ["cuda:3", "cuda", "cuda:0", "cuda:0", "cpu", "cpu"]  # an explicit index is the user's


def test_a_background_candidate_is_dropped_on_datasets_without_one(tmp_path):
    # on voc21 it is dropped (background is the threshold); on voc20 it raised "not a class"
    root = make_voc(tmp_path / "data")
    candidates = tmp_path / "c.json"
    candidates.write_text(json.dumps({"image_similarity": {"2007_000001.jpg": ["background", "dog"]}}))
    for name in ("voc21", "voc20"):
        dataset = load_dataset(name, root)
        assert harness.load_candidates(candidates, dataset)["2007_000001"] == [dataset.class_index("dog")]
