"""BLIP captioner (batched prefix continuation, prefix stripping) and hub loading errors, on a tiny random BLIP."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsegmenter.captioner import BlipCaptioner, Captioner, normalized_words, strip_prefix
from diffsegmenter.hub import ModelNotFoundError, load_component, looks_like_local_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall

FIXTURE = Path(__file__).parent / "fixtures" / "bert_tokenizer"
PREFIXES = [
    "a photograph of cat",
    "a photograph of potted plant",
    "A Photograph of TV-monitor",  # upper case and a hyphen: BLIP lower-cases and re-spaces it
    "",
    "a photograph of dining table near the red car",  # longer prefix: left padding of the others
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build_tiny_blip(seed: int = 0):
    """A random BlipForConditionalGeneration (2 layers, width 32, 32x32 images) and its processor from FIXTURE."""
    from transformers import AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    from diffsegmenter.captioner import _blip_image_processor_class

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    image_processor = _blip_image_processor_class().from_pretrained(FIXTURE)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        encoder_hidden_size=32,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=4)
    vision["intermediate_size"] = 37
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def blip():
    return build_tiny_blip()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)


# -- strip_prefix on strings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "prefix", "expected"),
    [
        ("a photograph of cat sitting on a couch", "a photograph of cat", "sitting on a couch"),
        ("a photograph of cat sitting on a couch", "A Photograph of  Cat", "sitting on a couch"),  # case, spaces
        ("a photo of a t - shirt on a bed", "a photo of a T-shirt", "on a bed"),  # BLIP re-spaces punctuation
        ("a photo of a cafe table", "a photo of a café", "table"),  # uncased BERT strips accents
        ("a photograph of cats sitting", "a photograph of cat", "sitting"),  # word piece appended to the last word
        ("a photograph of cat", "a photograph of cat", ""),  # nothing generated
        ("A Dog On Grass", "", "a dog on grass"),  # empty prefix: whole caption
        ("a dog on the grass", "a photograph of cat", None),  # not echoed
        ("a photograph", "a photograph of cat", None),  # shorter than the prefix
        ("a photograph of category", "a photograph of cat sat", None),
    ],
)
def test_strip_prefix(caption: str, prefix: str, expected: str | None) -> None:
    assert strip_prefix(caption, prefix) == expected


def test_strip_prefix_is_not_character_count() -> None:
    # The released code's s[len(p0):] would cut "sitting" in the middle here.
    caption = "a photograph of tv - monitor sitting on a desk"
    prefix = "a photograph of TV-monitor"
    assert caption[len(prefix) :] != "sitting on a desk"
    assert strip_prefix(caption, prefix) == "sitting on a desk"


def test_normalized_words() -> None:
    assert normalized_words("A T-shirt,  Café!") == ["a", "t", "-", "shirt", ",", "cafe", "!"]


# -- BlipCaptioner ------------------------------------------------------------------------------------------------


def test_protocol_and_output_types(blip, image) -> None:
    captioner = BlipCaptioner(*blip)
    assert isinstance(captioner, Captioner)
    out = captioner.continue_captions(image, PREFIXES)
    assert isinstance(out, list) and len(out) == len(PREFIXES)
    assert all(isinstance(s, str) and s == s.strip().lower() for s in out)
    assert captioner.continue_captions(image, []) == []


def test_batched_equals_per_prefix(blip, image) -> None:
    captioner = BlipCaptioner(*blip)
    batched = captioner.continue_captions(image, PREFIXES)
    single = [captioner.continue_captions(image, [p])[0] for p in PREFIXES]
    assert batched == single
    assert captioner.caption(image, PREFIXES) == [captioner.caption(image, [p])[0] for p in PREFIXES]


def test_matches_transformers_generate(blip, image) -> None:
    """Same tokens as the released code's per-prefix ``model.generate(**processor(image, prefix))``, max_length 20."""
    model, processor = blip
    captioner = BlipCaptioner(model, processor)
    captions = captioner.caption(image, PREFIXES)
    continuations = captioner.continue_captions(image, PREFIXES)
    for prefix, caption, continuation in zip(PREFIXES, captions, continuations):
        inputs = processor(images=image, text=prefix, return_tensors="pt")
        reference = model.generate(**inputs, max_length=20, do_sample=False, num_beams=1)
        assert reference.shape[1] <= 20
        decoded = processor.tokenizer.decode(reference[0], skip_special_tokens=True)
        assert caption == decoded.strip().lower()
        echoed = processor.tokenizer.decode(processor.tokenizer(prefix)["input_ids"], skip_special_tokens=True)
        assert continuation == strip_prefix(decoded, echoed)


def test_default_caption_prompts(blip, image) -> None:
    captions = BlipCaptioner(*blip).caption(image)
    assert len(captions) == 2
    assert strip_prefix(captions[1], "a picture of") is not None


def test_max_length_budget(blip, image, caplog: pytest.LogCaptureFixture) -> None:
    model, processor = blip
    captioner = BlipCaptioner(model, processor, max_length=8)
    gens = captioner._generate(image, ["a photograph of cat", "a"])
    assert [len(g.prompt_ids) + len(g.new_ids) <= 8 for g in gens] == [True, True]
    long_prefix = " ".join(["cat"] * 10)
    with caplog.at_level(logging.WARNING, logger="diffsegmenter.captioner"):
        assert captioner.continue_captions(image, [long_prefix, "a"])[0] == ""
    assert "fills max_length" in caplog.text


def test_bad_inputs(blip, image) -> None:
    captioner = BlipCaptioner(*blip)
    with pytest.raises(ValueError, match="uint8"):
        captioner.continue_captions(image.astype(np.float32), ["a"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        captioner.continue_captions(image[..., 0], ["a"])
    with pytest.raises(ValueError, match="list of strings"):
        captioner.continue_captions(image, "a photograph of cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        BlipCaptioner(*blip, max_length=1)
    with pytest.raises(
        ValueError, match=r"max_length 65 is more tokens than this BLIP's decoder has positions \(64\)"
    ):
        BlipCaptioner(*blip, max_length=65)  # every image failed with an IndexError
    BlipCaptioner(*blip, max_length=64)


def test_a_16_bit_pil_image_is_read_as_segment_reads_it(blip) -> None:
    # PIL's convert("RGB") clips I;16 values over 255: the captioner (and the CLIP filter) saw a near-white image
    from PIL import Image

    from diffsegmenter.captioner import _as_image_array
    from diffsegmenter.images import load_image

    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    pil = Image.fromarray(ramp)
    assert pil.mode.startswith("I;16")
    got = _as_image_array(pil)
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
    np.testing.assert_array_equal(got, load_image(pil))
    assert 100 < got.mean() < 155  # the ramp's middle grey, not white


def test_from_pretrained_local_folder(blip, image, tmp_path: Path) -> None:
    model, processor = blip
    folder = tmp_path / "tiny-blip"
    model.save_pretrained(folder, safe_serialization=True)
    for f in FIXTURE.iterdir():
        if f.suffix in {".txt", ".json"}:
            shutil.copy(f, folder / f.name)
    loaded = BlipCaptioner.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    assert loaded.continue_captions(image, PREFIXES) == BlipCaptioner(model, processor).continue_captions(
        image, PREFIXES
    )
    # SegmenterConfig.caption_max_tokens reaches the captioner from_pretrained loads by name (it did nothing)
    from diffsegmenter import DiffSegmenter

    seg = DiffSegmenter.from_pretrained(
        "shapes", captioner=str(folder), caption_max_tokens=7, prompt_mode="per_class"
    )  # the shapes model's own prompt mode, "single", would not use a captioner
    assert seg.captioner.max_length == 7


# -- hub.load_component -------------------------------------------------------------------------------------------


def test_missing_local_folder_raises(tmp_path: Path) -> None:
    from transformers import BlipForConditionalGeneration

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model") as info:
        load_component(BlipForConditionalGeneration, str(missing))
    assert "does not exist" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        BlipCaptioner.from_pretrained(missing)


def test_unknown_hub_id_offline_raises() -> None:
    from transformers import CLIPModel

    name = "diffsegmenter-tests/does-not-exist"
    with pytest.raises(ModelNotFoundError) as info:
        load_component(CLIPModel, name)
    message = str(info.value)
    assert name in message
    assert "HF_HUB_OFFLINE" in message
    assert f"hf download {name}" in message
    assert "local" in message  # where it looked / the local-folder alternative


def test_folder_without_safetensors_raises(blip, tmp_path: Path) -> None:
    from transformers import BlipForConditionalGeneration

    model, _ = blip
    folder = tmp_path / "pickle-only"
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle checkpoint is never loaded
    with pytest.raises(ModelNotFoundError, match="pickle-only") as info:
        load_component(BlipForConditionalGeneration, folder)
    assert "safetensors" in str(info.value)


def test_looks_like_local_path() -> None:
    assert not looks_like_local_path("Salesforce/blip-image-captioning-large")
    assert not looks_like_local_path("gpt2")
    assert looks_like_local_path("/models/blip")
    assert looks_like_local_path("./blip")
    assert looks_like_local_path("models/blip/large")
    assert looks_like_local_path(Path("blip"))


def test_real_blip_large_preprocessor_config_gives_384_squares(tmp_path: Path) -> None:
    # Salesforce/blip-image-captioning-large's preprocessor_config.json: "size": 384 as a bare int (a 384x384 bicubic
    # resize, no crop, as BLIP was trained) and CLIP's normalisation; no "resample" key (bicubic by default). Already
    # right with the PIL processor this package loads.
    import json

    from PIL import Image

    from diffsegmenter.captioner import _blip_image_processor_class

    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    config = {
        "do_normalize": True, "do_resize": True, "image_mean": mean.tolist(), "image_std": std.tolist(),
        "image_processor_type": "BlipImageProcessor", "processor_class": "BlipProcessor", "size": 384,
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = _blip_image_processor_class().from_pretrained(tmp_path)
    array = np.random.default_rng(0).integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    got = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    resized = np.asarray(Image.fromarray(array).resize((384, 384), Image.BICUBIC)) / 255.0
    expected = torch.tensor(((resized - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
