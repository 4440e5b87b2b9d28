"""Model folders that a download or a copy left damaged, and folders of models diffsegmenter does not read: each is
refused before weights are read (or at the component that fails), with a message naming the file or the class and
the way out; none loads as a model that silently segments wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsegmenter import loading
from diffsegmenter.hub import ModelNotFoundError, load_component
from diffsegmenter.loading import load_backbone

FIXTURES = Path(__file__).parent / "fixtures"
SD_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "vae": ["diffusers", "AutoencoderKL"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture()
def sd_folder(tiny_model_dir, tmp_path) -> Path:
    folder = _copy(tiny_model_dir, tmp_path / "sd")
    (folder / "model_index.json").write_text(json.dumps(SD_INDEX))
    return folder


@pytest.fixture()
def loads(monkeypatch) -> list[str]:
    """The components loaded, in order (a spy on the loader every family uses)."""
    seen: list[str] = []
    real = loading.load_component

    def spy(cls, src, *, subfolder=None, **kw):
        seen.append(subfolder)
        return real(cls, src, subfolder=subfolder, **kw)

    monkeypatch.setattr(loading, "load_component", spy)
    return seen


@pytest.mark.parametrize("family", ["pixart", "flux", "sd"])
def test_a_tokenizer_without_its_vocabulary_is_refused_before_any_weights(
    family, family_folders, sd_folder, tmp_path, loads
):
    # A tokenizer folder holding only tokenizer_config.json loaded as a tokenizer that knows its special tokens
    # only: on PixArt (T5) "cat" and "dog" got identical maps, with no error; FLUX's T5 places the class tokens.
    src = sd_folder if family == "sd" else family_folders[family]
    folder = _copy(src, tmp_path / "damaged")
    tok = "tokenizer_2" if family == "flux" else "tokenizer"
    for f in (folder / tok).iterdir():
        if f.name != "tokenizer_config.json":
            f.unlink()
    with pytest.raises(ModelNotFoundError, match=rf"{tok}/ .*holds no vocabulary.*same map.*again"):
        load_backbone(folder)
    assert loads == []


def test_a_t5_vocabulary_sentencepiece_must_read_is_told_before_any_weights(family_folders, tmp_path, loads):
    # PixArt's tokenizer folder ships spiece.model only: without sentencepiece transformers fell back to tiktoken
    # and failed with "`tiktoken` is required to read a `tiktoken` file", after the check had passed it
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here: the folder would load")
    folder = _copy(family_folders["pixart"], tmp_path / "spiece")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "spiece.model").write_bytes(b"\x00" * 16)
    with pytest.raises(
        ModelNotFoundError, match=r"tokenizer/ holds its vocabulary as spiece.model only.*sentencepiece"
    ):
        load_backbone(folder)
    assert loads == []


def test_a_t5_vocabulary_downloaded_now_names_sentencepiece(tmp_path):
    # a hub id not yet cached passes no folder check: transformers' own failure is translated
    import importlib.util

    from diffsegmenter.hub import load_component

    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here")

    class T5Like:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise ValueError(
                "`tiktoken` is required to read a `tiktoken` file. Install it with `pip install tiktoken`."
            )

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(ModelNotFoundError, match=r"needs sentencepiece.*diffsegmenter\[sentencepiece\]"):
        load_component(T5Like, tmp_path, subfolder="tokenizer")


def test_a_tokenizer_loaded_without_a_vocabulary_is_refused(tmp_path):
    # the same check on the loaded object: a Hub download that lacks the files gives such a tokenizer too
    from transformers import CLIPTokenizer

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="knows 2 token.*all special.*vocabulary files"):
        load_component(CLIPTokenizer, tmp_path, subfolder="tokenizer")


def test_a_clip_tokenizer_missing_merges_names_the_file(sd_folder, loads):
    # what `hf download ... --include "*.json" "*.safetensors"` leaves of SD1.5's, SDXL's or FLUX's CLIP tokenizer
    shutil.rmtree(sd_folder / "tokenizer")
    shutil.copytree(FIXTURES / "clip_tokenizer", sd_folder / "tokenizer", ignore=shutil.ignore_patterns("merges.txt"))
    with pytest.raises(ModelNotFoundError, match=r"tokenizer/ lacks merges.txt"):
        load_backbone(sd_folder)
    assert loads == []


@pytest.mark.parametrize(
    "class_name", ["KandinskyV22Pipeline", "StableDiffusionControlNetPipeline", "StableDiffusionUpscalePipeline"]
)
def test_a_pipeline_of_no_supported_family_is_refused(sd_folder, class_name, loads):
    # any _class_name fell back to the SD1 loader, which loaded whatever it found as SD1 parts
    _edit_json(sd_folder / "model_index.json", _class_name=class_name)
    with pytest.raises(ValueError, match=rf"{class_name}.*does not segment with.*StableDiffusionPipeline"):
        load_backbone(sd_folder)
    assert loads == []


def test_sd_components_of_other_classes_are_refused(sd_folder, family_folders, tmp_path, loads):
    _edit_json(sd_folder / "model_index.json", unet=["my_module", "MyUNet"])
    with pytest.raises(ValueError, match=r"'unet' as my_module.MyUNet.*diffusers.UNet2DConditionModel"):
        load_backbone(sd_folder)
    _edit_json(sd_folder / "model_index.json", unet=SD_INDEX["unet"], text_encoder=["diffusers", "RobertaSeries"])
    with pytest.raises(ValueError, match=r"'text_encoder' as diffusers.RobertaSeries"):
        load_backbone(sd_folder)
    sdxl = _copy(family_folders["sdxl"], tmp_path / "sdxl")  # an SDXL folder renamed: its second encoder was dropped
    _edit_json(sdxl / "model_index.json", _class_name="StableDiffusionPipeline")
    with pytest.raises(ValueError, match="lists a 'text_encoder_2'"):
        load_backbone(sdxl)
    assert loads == []


@pytest.mark.parametrize("family, named", [("flux", "StableDiffusion3Pipeline"), ("sd3", "FluxPipeline")])
def test_a_pipeline_name_that_contradicts_its_transformer_is_refused(family, named, family_folders, tmp_path, loads):
    # it was refused as "a conditioned model" (the channel count differed), which sent users to another checkpoint
    folder = _copy(family_folders[family], tmp_path / "f")
    _edit_json(folder / "model_index.json", _class_name=named)
    with pytest.raises(ValueError, match=rf"names a {named} .* but lists a \w+Transformer2DModel \({family}\)"):
        load_backbone(folder)
    assert loads == []
    from diffsegmenter.loading import model_family

    for entry in (["diffusers"], {"a": 1}, None):  # a damaged entry names no class (it raised IndexError, KeyError)
        assert model_family({"_class_name": "StableDiffusionPipeline", "transformer": entry}) == "sd"


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_missing_component_is_found_before_any_weights_load(family, family_folders, tmp_path, loads):
    # FLUX without scheduler/ loaded the VAE, the transformer and both text encoders (33 GB for FLUX.1-dev) first
    folder = _copy(family_folders[family], tmp_path / "f")
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ModelNotFoundError, match="no 'scheduler' subfolder"):
        load_backbone(folder)
    assert loads == []


def test_tokenizers_and_scheduler_load_before_the_models(family_folders, loads):
    load_backbone(family_folders["flux"])
    assert set(loads[:3]) == {"tokenizer", "scheduler", "tokenizer_2"}
    assert loads.index("transformer") > 2


def test_a_text_encoder_config_with_a_layer_its_weights_lack_is_refused(sd_folder):
    # transformers filled the extra layer at random and logged it; the model then segmented with a random layer
    cfg = sd_folder / "text_encoder" / "config.json"
    _edit_json(cfg, num_hidden_layers=json.loads(cfg.read_text())["num_hidden_layers"] + 1)
    with pytest.raises(ModelNotFoundError, match=r"'text_encoder'.*leave \d+ of the model's parameters unset"):
        load_backbone(sd_folder)


def test_a_transformer_config_that_does_not_match_its_weights_is_a_model_error(family_folders, tmp_path):
    # it ended in "NotImplementedError: Cannot copy out of meta tensor", a traceback from the CLI
    folder = _copy(family_folders["flux"], tmp_path / "flux")
    cfg = folder / "transformer" / "config.json"
    _edit_json(cfg, num_layers=json.loads(cfg.read_text())["num_layers"] + 1)
    with pytest.raises(ModelNotFoundError, match=r"'transformer'.*leave \d+ of the model's parameters unset"):
        load_backbone(folder)


@pytest.mark.parametrize(
    ("family", "scheduler"), [("sd", "FlowMatchEulerDiscreteScheduler"), ("flux", "DDIMScheduler")]
)
def test_a_scheduler_of_the_other_objective_is_refused(family, scheduler, sd_folder, family_folders, tmp_path, loads):
    # SD1 read a flow-matching config as DDIM with linear betas (alphas_cumprod[500] 0.078, not 0.276)
    folder = sd_folder if family == "sd" else _copy(family_folders[family], tmp_path / "f")
    _edit_json(folder / "model_index.json", scheduler=["diffusers", scheduler])
    _edit_json(folder / "scheduler" / "scheduler_config.json", _class_name=scheduler)
    with pytest.raises(ValueError, match=rf"its scheduler is {scheduler}"):
        load_backbone(folder)
    assert loads == []


def test_a_missing_shard_is_named(sd_folder):
    # it was reported as "no .safetensors weights ... convert a checkpoint", though only a shard was missing
    unet = sd_folder / "unet"
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(unet).save_pretrained(unet, max_shard_size="20KB")
    shards = sorted(unet.glob("*-of-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(
        ModelNotFoundError, match=rf"unet/.*{len(shards) - 0} weight shard.*1 are missing.*{shards[1].name}"
    ):
        load_backbone(sd_folder)


def test_only_pickle_weights_are_refused_by_name(sd_folder):
    (sd_folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (sd_folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match=r"vae/ holds only pickle weights \(diffusion_pytorch_model.bin\)"):
        load_backbone(sd_folder)


def test_two_weight_variants_read_the_one_the_dtype_names(sd_folder):
    # a folder holding fp16 and bf16 files (no plain ones) was refused as having "no .safetensors weights"
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    (sd_folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.to(torch.float16).save_pretrained(sd_folder / "unet", variant="fp16")
    unet.to(torch.bfloat16).save_pretrained(sd_folder / "unet", variant="bf16")
    bb, _ = load_backbone(sd_folder, dtype=torch.bfloat16)
    assert bb.unet.dtype == torch.bfloat16
    with pytest.raises(ModelNotFoundError, match=r"only as the variants bf16, fp16.*\(torch.float32\)"):
        load_backbone(sd_folder)


def test_a_single_checkpoint_file_and_a_mistyped_path_say_what_they_are(sd_folder, tmp_path, monkeypatch):
    weights = sd_folder / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelNotFoundError, match=r"is a single file.*from_single_file\(path\).save_pretrained"):
        load_backbone(weights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"No local folder 'sd/typo' exists either"):
        load_backbone("sd/typo")


def test_sd3_without_t5_loads_from_the_hub_cache_offline(family_folders, tmp_path):
    # `hf download <sd3> --exclude "text_encoder_3/*"` into the cache: a local folder so made loaded without T5,
    # the same files in the cache were refused as "not in the local Hugging Face cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--sd3-not5"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(family_folders["sd3"], repo / "snapshots" / commit)
    shutil.rmtree(repo / "snapshots" / commit / "text_encoder_3")
    script = """
from diffsegmenter.loading import load_backbone
bb, _ = load_backbone("org/sd3-not5")
print("LOADED", bb.text_encoder_3 is None)
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    env.update(
        HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(loading.__file__).parents[1])
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED True" in done.stdout


def test_every_tiny_family_still_loads_and_segments(segmenters):
    # the checks refuse none of the folders save_pretrained writes
    image = np.zeros((32, 32, 3), np.uint8)
    for name, seg in segmenters.items():
        assert seg.segment(image, classes=["cat", "dog"]).labels.shape == (32, 32), name


def test_a_unet_config_wider_than_its_weights_is_a_model_error(sd_folder):
    # diffusers' ValueError ("Cannot load  because conv_in.bias expected shape ...", advising an argument the user
    # cannot pass) reached the CLI as a traceback
    cfg = sd_folder / "unet" / "config.json"
    _edit_json(cfg, block_out_channels=[2 * c for c in json.loads(cfg.read_text())["block_out_channels"]])
    with pytest.raises(
        ModelNotFoundError, match=r"'unet'.*files do not fit together \(ValueError: .*download or copy"
    ):
        load_backbone(sd_folder)


def test_an_fp16_only_download_of_a_sharded_component_loads(sd_folder):
    # `hf download ... --include "*.fp16*" "*.json"` keeps the plain index beside the fp16 shards (SD3's T5): the
    # first check refused the folder for the plain index's missing shards, though the loader reads the fp16 ones
    from diffusers import UNet2DConditionModel

    unet = sd_folder / "unet"
    model = UNet2DConditionModel.from_pretrained(unet)
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    model.to(torch.float16).save_pretrained(unet, variant="fp16", max_shard_size="20KB")
    (fp16_index,) = unet.glob("*.index.fp16.json")
    index = json.loads(fp16_index.read_text())
    index["weight_map"] = {k: v.replace(".fp16", "") for k, v in index["weight_map"].items()}
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert not [f for f in unet.glob("*-of-*.safetensors") if ".fp16" not in f.name]  # no plain shard is there
    bb, _ = load_backbone(sd_folder, dtype=torch.float16)
    assert bb.unet.dtype == torch.float16


def test_only_config_weight_mismatches_are_reported_as_damaged_files(tmp_path):
    # every ValueError/RuntimeError became "its files do not fit together ... download again": out of memory and a
    # missing tokenizer dependency too, with the real cause cut to one line
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "config.json").write_text("{}")

    class Failing:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        load_component(Failing, tmp_path, subfolder="part")


def test_sd_weights_missing_a_tensor_are_refused(sd_folder):
    # the SD1/SD2 path loaded its UNet and VAE leniently: a VAE missing a tensor got a random one, with a log line
    from safetensors.torch import load_file, save_file

    path = sd_folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, path)
    with pytest.raises(ModelNotFoundError, match=r"'vae'.*leave 1 of the model's parameters unset"):
        load_backbone(sd_folder)
