"""Smoke tests of the benchmarks: the reference pipeline (released cost structure) and the default engine agree, and
the GPU throughput script runs every case on tiny models (so it cannot rot between GPU runs).

Correctness tests on tiny random models, not timing tests: ``benchmarks/speed.py`` and
``benchmarks/gpu_throughput.py`` do the timing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmarks.reference import ReferencePipeline

from diffsegmenter import DiffSegmenter, SegmenterConfig


def _image(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _segmenter(components, captioner=None, **overrides) -> DiffSegmenter:
    c = components
    cfg = SegmenterConfig().replace(**overrides)
    return DiffSegmenter(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], cfg, captioner)


@pytest.mark.parametrize("classes", [["cat"], ["cat", "sofa", "dog"]])
def test_reference_and_engine_maps_agree(tiny_components, classes):
    seg = _segmenter(tiny_components)
    reference = ReferencePipeline(seg)
    ref = reference.segment(_image(), classes, seed=1)
    res = seg.segment(_image(), classes=classes, seed=1)
    assert ref["prompts"] == res.prompts
    assert ref["scores"].shape == res.scores.shape == (len(classes), 24, 40)
    assert np.abs(ref["scores"] - res.scores).max() < 1e-4
    # the released cost structure: one [uncond, cond] UNet batch per class
    assert reference.store.unet_batches == [2] * len(classes)
    assert not reference.store.cross and not reference.store.self_  # maps dropped after each class
    # the engine's processors are restored after the reference's forwards
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in seg.unet.attn_processors.values())


def test_reference_with_multi_token_name_and_no_emphasis(tiny_components):
    seg = _segmenter(tiny_components, emphasis=1.0, token_rule="last")
    ref = ReferencePipeline(seg).segment(_image(20, 20, seed=2), ["traffic light", "zebra"], seed=0)
    res = seg.segment(_image(20, 20, seed=2), classes=["traffic light", "zebra"], seed=0)
    assert np.abs(ref["scores"] - res.scores).max() < 1e-4


def test_reference_follows_a_coarser_self_attention_level(tiny_components):
    if "self_attention_factor" not in SegmenterConfig.__dataclass_fields__:
        pytest.skip("engine has no self_attention_factor")
    seg = _segmenter(tiny_components, self_attention_factor=2)
    ref = ReferencePipeline(seg).segment(_image(), ["cat", "sofa"], seed=0)
    res = seg.segment(_image(), classes=["cat", "sofa"], seed=0)
    assert np.abs(ref["scores"] - res.scores).max() < 1e-4


def test_reference_rejects_single_prompt_mode(tiny_components):
    with pytest.raises(ValueError, match="per_class"):
        ReferencePipeline(_segmenter(tiny_components, prompt_mode="single"))


class _RecordingCaptioner:
    """Continues every prefix with a fixed phrase and records the calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def continue_captions(self, image: np.ndarray, prefixes: list[str]) -> list[str]:
        self.calls.append(list(prefixes))
        return ["sitting on the sofa" for _ in prefixes]


def test_reference_calls_captioner_per_class_engine_once(tiny_components):
    cap = _RecordingCaptioner()
    seg = _segmenter(tiny_components, captioner=cap)
    ref = ReferencePipeline(seg).segment(_image(), ["cat", "dog"], seed=0)
    assert cap.calls == [["a photograph of cat"], ["a photograph of dog"]]
    cap.calls.clear()
    res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert cap.calls == [["a photograph of cat", "a photograph of dog"]]
    assert (
        ref["prompts"]
        == res.prompts
        == ["a photograph of cat sitting on the sofa", "a photograph of dog sitting on the sofa"]
    )
    assert np.abs(ref["scores"] - res.scores).max() < 1e-4


@pytest.mark.slow
def test_gpu_throughput_script_runs_every_case_on_tiny_models(tmp_path):
    """benchmarks/gpu_throughput.py --smoke: every section on the CPU (tiny models), JSON written, tables rendered."""
    from benchmarks import gpu_tables, gpu_throughput

    out = tmp_path / "smoke.json"
    report = gpu_throughput.main(
        ["--smoke", "--json", str(out), "--compile", "default", "--compile-backend", "aot_eager", "--no-compile-vae"]
    )
    assert report["finished"] and not report["errors"] and not report["skipped"], report["errors"]
    saved = json.loads(out.read_text())
    sd = saved["sd15"]
    for key in ("ceiling", "per_class", "single"):
        assert [c["batch"] for c in sd[key]] == [1, 2]
    assert all(c["images_per_s"] > 0 and c["latency_ms"] > 0 for c in sd["single"] + sd["per_class"])
    # the CPU path against itself: identical maps
    assert sd["check"]["per_class"]["pass"] and sd["check"]["single"]["max_abs_diff"] == 0.0
    assert {o["option"] for o in sd["options"]} == {"channels_last", "refine=pamr", "compile=default"}
    # compile runs last (it ran inside the SD1.5 section, and could eat the budget of the four families)
    cases = saved["cases"]
    assert cases.index("compile") > max(cases.index(f"family {f}") for f in ("sdxl", "sd3", "flux", "pixart"))
    assert sd["loader"]["prefetch_images_per_s"] > 0
    assert set(saved["families"]) == {"sdxl", "sd3", "flux", "pixart"}
    assert all(f["per_class"] and f["ceiling"] for f in saved["families"].values())
    tables = gpu_tables.render(saved)
    assert "| batch | ceiling, single |" in tables and "| family |" in tables
    assert [met for _, _, met in gpu_tables.done_criteria(saved)][-2:] == [True, True]  # the two map checks


def test_gpu_tables_show_goals_that_were_not_measured():
    """A map check skipped for budget or failed (None) dropped its goal rows; an SD1.5 section that failed dropped
    the goal table: the tables read as if every goal had been measured."""
    from benchmarks import gpu_tables

    for check in ({"per_class": None, "single": None}, None):
        report = {"sd15": {"size": 512, "single": [], "per_class": [], "ceiling": [], "check": check}}
        rows = gpu_tables.done_criteria(report)
        assert [r[0].split(":")[0] for r in rows[-2:]] == ["maps vs CPU fp32 (per_class)", "maps vs CPU fp32 (single)"]
        assert [met for *_, met in rows] == [None] * 6
    tables = gpu_tables.render({"sd15": {}, "errors": [{"case": "sd15", "error": "RuntimeError('x')"}]})
    assert "SD1.5 architecture: no result" in tables and tables.count("| not measured |") == 6


def test_gpu_throughput_script_stops_adding_cases_when_the_budget_is_spent(tmp_path):
    from benchmarks import gpu_throughput

    out = tmp_path / "budget.json"
    report = gpu_throughput.main(["--smoke", "--json", str(out), "--budget-s", "0", "--families", "pixart"])
    saved = json.loads(out.read_text())
    assert saved["finished"] and not saved["errors"]
    assert not saved["sd15"]["per_class"] and not saved["families"]
    skipped = [s["case"] for s in report["skipped"]]
    assert "sd15 batch 1" in skipped and "family pixart" in skipped


@pytest.mark.slow
def test_filter_cost_benchmark_times_both_filters_against_the_plain_call(tmp_path):
    """benchmarks/filter_cost.py on one val scene: every variant timed, ratios to the plain call, the shipped filter
    read from the model folder (regions) beside the previous one (quantile), JSON written."""
    from benchmarks import filter_cost

    out = tmp_path / "filter_cost.json"
    report = filter_cost.main(["--scenes", "1", "--repeats", "1", "--threads", "2", "--out", str(out)])
    assert set(report["seconds_per_scene"]) == {"present", "vocab+quantile", "vocab+regions"}
    assert report["ratio_to_present"]["present"] == 1.0
    assert all(v > 0 for v in report["seconds_per_scene"].values())
    assert report["filters"]["regions"]["scoring"] == "regions"
    assert report["filters"]["quantile"]["scoring"] == "quantile"
    assert json.loads(out.read_text())["scenes"] == 1


def test_refine_cost_benchmark_measures_both_settings(tmp_path):
    """benchmarks/refine_cost.py at one small side: both settings timed and measured, ratios and JSON written."""
    from benchmarks import refine_cost

    out = tmp_path / "refine_cost.json"
    assert refine_cost.main(["--sides", "64", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["side"] == 64 and row["seconds_none"] > 0 and row["seconds_pamr"] > 0
    assert row["time_ratio"] == round(row["seconds_pamr"] / row["seconds_none"], 2)
    assert report["refine_dilations"] == [1, 2, 4, 8, 12, 24] and report["refine_max_side"] == 512


def test_speed_plan_counts_the_cuda_warm_up_calls():
    """speed.py's warm-up call per pipeline and K (CUDA) was left out of its budget plan, which then overran
    --budget-min by about one call per pipeline per job."""
    from benchmarks.speed import Job, _remaining

    unit = {"reference": 1.0, "engine": 0.5}
    cold = [Job("default", 3, ["reference", "engine"], 2), Job("default", 10, ["reference", "engine"], 2)]
    warm = [
        Job("default", 3, ["reference", "engine"], 2, warmup=True),
        Job("default", 10, ["reference", "engine"], 2, warmup=True),
    ]
    assert cold[1].estimate(unit) == 30.0 and warm[1].estimate(unit) == 45.0  # (10 + 5) per call
    # after the current job's first repeat: its other repeat, then the next job with its warm-up
    assert _remaining(cold, unit, 0, 1) == 4.5 + 30.0 and _remaining(warm, unit, 0, 1) == 4.5 + 45.0


def test_rerun_listing_benchmark_times_the_listing_and_its_owner_check(tmp_path):
    """benchmarks/rerun_listing.py at two small sizes: both times, the share and the growth written."""
    from benchmarks import rerun_listing

    out = tmp_path / "rerun.json"
    assert rerun_listing.main(["--sizes", "10", "20", "--repeats", "1", "--json", str(out)]) == 0
    first, second = json.loads(out.read_text())["rows"]
    assert (first["images"], second["images"], second["size_ratio"]) == (10, 20, 2.0)
    assert 0 < second["owner_check_s"] <= second["collect_jobs_s"] and first["growth"] == 1.0
