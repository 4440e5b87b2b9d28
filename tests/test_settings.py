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


def test_settings_are_checked_before_any_weight_loads(tmp_path, monkeypatch):
    # a typo in an override, or a bad value in a folder's segmenter_config.json, was reported only after the weights
    # had loaded (for a hub model: after gigabytes), and the file's errors did not name the file
    from diffsegmenter import DiffSegmenter, loading

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the settings were checked")

    monkeypatch.setattr(loading, "load_backbone", no_loading)
    with pytest.raises(ValueError, match="unknown SegmenterConfig field"):
        DiffSegmenter.from_pretrained("shapes", tauu=0.3)
    with pytest.raises(ValueError, match="tau"):
        DiffSegmenter.from_pretrained("shapes", tau=4)
    with pytest.raises(ValueError, match="readout_block only applies"):
        DiffSegmenter.from_pretrained("shapes", config=SegmenterConfig(), readout_block=2)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "segmenter_config.json").write_text(json.dumps({"tau": 2}))
    with pytest.raises(ValueError, match=r"segmenter_config.json: tau must"):
        DiffSegmenter.from_pretrained(folder)
    (folder / "segmenter_config.json").write_text(json.dumps({"future_field": 1}))
    with pytest.raises(ValueError, match=r"segmenter_config.json: unknown SegmenterConfig field.*newer diffsegmenter"):
        DiffSegmenter.from_pretrained(folder)


def test_a_full_config_says_which_recommendations_it_leaves_out(caplog):
    # from_pretrained(model, config=SegmenterConfig(tau=0.5)) silently dropped the folder's tuned settings (and on
    # SDXL the family's level weights): a user who meant "tau on top" got other maps with no word
    with caplog.at_level("WARNING", logger="diffsegmenter"):
        seg = DiffSegmenter.from_pretrained("shapes", config=SegmenterConfig(tau=0.5))
    assert seg.config.tau == 0.5 and seg.config.readout == SegmenterConfig().readout  # used as given
    recommended = ModelSettings.from_file(SHAPES_SETTINGS).segmenter
    assert "config= replaces every setting" in caplog.text and "segmenter_config.json" in caplog.text
    assert "readout=" in caplog.text and recommended["readout"] != SegmenterConfig().readout
    assert "tau" not in caplog.text.split(" keep ")[0]  # set in the config: not reported
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffsegmenter"):
        DiffSegmenter.from_pretrained("shapes", tau=0.5)
    assert "config=" not in caplog.text


@pytest.mark.parametrize(("family", "warned"), [("sdxl", True), ("sd3", False), ("flux", False), ("pixart", False)])
def test_a_full_config_warns_only_for_what_changes_the_maps(family_folders, caplog, family, warned):
    # on the transformer families every config= warned of level weights and blocks that give the same maps: None
    # blocks are the family's, and the paper's four weights on a one-level transformer are its one weight
    with caplog.at_level("WARNING", logger="diffsegmenter"):
        DiffSegmenter.from_pretrained(family_folders[family], config=SegmenterConfig(resolution=32))
    assert ("config= replaces every setting" in caplog.text) is warned, caplog.text
    assert not warned or "setting: level_weights keep" in caplog.text  # SDXL's weights do change the maps


def test_a_full_config_warns_of_a_folders_own_blocks(family_folders, tmp_path, caplog):
    # None blocks are the family's: a folder's tuned blocks left out by config= went unsaid
    import shutil

    folder = tmp_path / "sd3"
    shutil.copytree(family_folders["sd3"], folder)
    (folder / "segmenter_config.json").write_text(json.dumps({"attention_blocks": [0]}))
    with caplog.at_level("WARNING", logger="diffsegmenter"):
        DiffSegmenter.from_pretrained(folder, config=SegmenterConfig(resolution=32))
    assert "config= replaces every setting: attention_blocks keep" in caplog.text, caplog.text
