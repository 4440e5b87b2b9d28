"""ModelSettings: what a model folder recommends, read from today's segmenter_config.json layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import diffsegmenter
from diffsegmenter import DiffSegmenter, SegmenterConfig
from diffsegmenter.filters.diffusion import DiffusionFilter
from diffsegmenter.settings import ModelSettings

SHAPES_SETTINGS = Path(diffsegmenter.__file__).parent / "models" / "shapes" / "segmenter_config.json"


def test_shipped_settings_are_read_whole():
    data = json.loads(SHAPES_SETTINGS.read_text())
    s = ModelSettings.from_file(SHAPES_SETTINGS)
    assert s.classes == ["circle", "square", "triangle", "cross"]
    assert s.diffusion_filter == data["_diffusion_filter"] and s.diffusion_filter["resolution"] == 64
    assert s.provenance.startswith("chosen by") and s.notes == {"behaviour": data["_behaviour"]}
    assert not any(k.startswith("_") for k in s.segmenter) and s.segmenter["tau"] == 0.58 and s.segmenter["flip"]
    assert s.segmenter_config() == SegmenterConfig.from_json(SHAPES_SETTINGS)
    assert s.segmenter_config(tau=0.3).tau == 0.3
    assert s.to_dict() == data and s.source == str(SHAPES_SETTINGS)


def test_bad_settings_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="_classes"):
        ModelSettings.from_dict({"_classes": "cat"})
    with pytest.raises(ValueError, match="_diffusion_filter"):
        ModelSettings.from_dict({"_diffusion_filter": [1]})
    with pytest.raises(ValueError, match="unknown SegmenterConfig field"):
        ModelSettings.from_dict({"tua": 0.3}).segmenter_config()
    assert ModelSettings.coerce(None) == ModelSettings()
    assert ModelSettings.coerce({"_note": 1}).notes == {"note": 1}


def test_segmenter_and_filter_use_the_folder_settings(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    settings = {"_classes": ["cat", "sofa"], "_diffusion_filter": {"threshold": 0.25, "noise_draws": 3}, "tau": 0.5}
    (folder / "segmenter_config.json").write_text(json.dumps(settings))
    seg = DiffSegmenter.from_pretrained(folder)
    assert isinstance(seg.model_settings, ModelSettings) and seg.model_settings.classes == ["cat", "sofa"]
    assert seg.default_classes == ["cat", "sofa"] and seg.config.tau == 0.5
    flt = DiffusionFilter(seg)
    assert flt.threshold == 0.25 and flt.noise_draws == 3 and flt.quantile == 0.95  # the rest: the filter's defaults
    seg.model_settings = {"_diffusion_filter": {"threshold": 0.5}}  # the file's layout is read as settings
    assert seg.model_settings.diffusion_filter == {"threshold": 0.5} and DiffusionFilter(seg).threshold == 0.5
