"""The BLIP+CLIP category filter and the released candidate-JSON format, on tiny random CLIP and BLIP models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsegmenter.captioner import BlipCaptioner
from diffsegmenter.filters import (
    CategoryFilter,
    ClipBlipFilter,
    image_key,
    load_candidates,
    save_candidates,
    validate_vocabulary,
)
from diffsegmenter.filters.clip import _clip_image_processor_class, caption_words, singularize
from diffsegmenter.hub import ModelNotFoundError
from tests.test_captioner import build_tiny_blip

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall

CLIP_TOKENIZER = Path(__file__).parent / "fixtures" / "clip_tokenizer"
VOCAB = ["cat", "dog", "table", "potted plant", "traffic light", "bus", "man", "sofa"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build_tiny_clip(tmp_path_factory: pytest.TempPathFactory | None = None, seed: int = 0):
    """A random CLIPModel (2 layers, width 32, 32x32 images), its tokenizer and a PIL image processor."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    if CLIP_TOKENIZER.is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)
    else:  # the shared fixture is missing: build a word-level tokenizer instead
        from research.shapes.tokenizer import save_tokenizer

        assert tmp_path_factory is not None
        words = " ".join(VOCAB).split() + ["a", "photo", "of", "picture", "sitting", "on", "near"]
        tokenizer = CLIPTokenizer.from_pretrained(save_tokenizer(words, tmp_path_factory.mktemp("clip_tok")))
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    text = dict(
        layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(layers, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = _clip_image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, tokenizer, image_processor


class FixedCaptioner:
    """Returns fixed captions, so that text-similarity tests know exactly which words the captions hold."""

    def __init__(self, captions: list[str]) -> None:
        self.captions = captions
        self.calls = 0

    def caption(self, image: np.ndarray, prompts: list[str]) -> list[str]:
        self.calls += 1
        assert list(prompts) == ["", "a picture of"]
        return list(self.captions)


CAPTIONS = ["a cat sitting on a couch", "a picture of two dogs near a traffic light"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_clip(tmp_path_factory)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


def count_text_encoder_calls(model) -> list[int]:
    calls = [0]
    model.text_model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# -- the recipe -------------------------------------------------------------------------------------------------


def test_argmax_class_always_kept(clip, image) -> None:
    f = ClipBlipFilter(*clip)  # no captioner: image similarity only
    assert isinstance(f, CategoryFilter)
    for seed in range(3):
        img = np.random.default_rng(seed).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
        d = f.explain(img, VOCAB)
        best = max(VOCAB, key=d.image_logits.__getitem__)
        assert best in f.predict(img, VOCAB)
        assert d.image_scores[best] == 1.0
        assert d.kept == d.image_kept and d.text_kept == [] and d.captions == []


def test_scores_are_ratios_in_unit_interval(clip, image) -> None:
    f = ClipBlipFilter(*clip)
    d = f.explain(image, VOCAB)
    scores = f.scores(image, VOCAB)
    assert list(scores) == VOCAB
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    best = max(d.image_logits.values())
    if best > 0:  # the paper's logit / max logit
        for c in VOCAB:
            assert scores[c] == pytest.approx(max(d.image_logits[c], 0.0) / best, abs=1e-5)
    assert d.kept == [c for c in VOCAB if scores[c] >= 0.97]


def test_thresholds(clip, image) -> None:
    model, tokenizer, processor = clip
    assert ClipBlipFilter(model, tokenizer, processor, img_rel_threshold=0.0).predict(image, VOCAB) == VOCAB
    assert ClipBlipFilter(model, tokenizer, processor, img_rel_threshold=1.0001).predict(image, VOCAB) == []
    # Above 1 nothing passes by image similarity; only exact caption matches pass by text similarity.
    f = ClipBlipFilter(
        model, tokenizer, processor, FixedCaptioner(CAPTIONS), img_rel_threshold=1.0001, text_threshold=0.9999
    )
    d = f.explain(image, VOCAB)
    assert d.image_kept == []
    assert d.kept == d.text_kept == ["cat", "dog", "traffic light"]
    assert d.best_words["cat"] == "cat" and d.best_words["dog"] == "dog"
    assert all(f.scores(image, VOCAB)[c] == 1.0 for c in d.kept)
    assert ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS), text_threshold=None).explain(image, VOCAB).text_kept == []


def test_caption_words_matching_a_class_are_kept_by_text(clip, image) -> None:
    f = ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS))  # paper thresholds
    d = f.explain(image, VOCAB)
    assert d.captions == CAPTIONS
    assert {"cat", "dog", "traffic light"} <= set(d.text_kept)
    assert all(d.text_scores[c] == pytest.approx(1.0, abs=1e-5) for c in ("cat", "dog", "traffic light"))
    assert "picture" not in d.words  # prompt words are not evidence (words_from_prompts=False)
    assert d.kept == [c for c in VOCAB if c in set(d.image_kept) | set(d.text_kept)]
    assert d.sources() == {"image_similarity": d.image_kept, "text_similarity": d.text_kept}
    assert f.predict(image, VOCAB) == d.kept and f.scores(image, VOCAB) == d.scores
    calls = f.captioner.calls
    decision = f.select(image, VOCAB)  # the segmenter's one call: kept classes and scores from one run
    assert decision.kept == d.kept and decision.scores == d.scores
    assert f.captioner.calls == calls + 1  # the recipe ran once, and nothing of the last image is remembered
    f.explain(image, VOCAB).kept.append("mutated")
    assert f.predict(image, VOCAB) == d.kept  # the memo is not shared with callers
    f.img_rel_threshold = 0.0  # changed settings are not served from the memo
    assert f.predict(image, VOCAB) == VOCAB
    with_prompt = ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS), words_from_prompts=True).explain(image, VOCAB)
    assert "picture" in with_prompt.words


def test_class_embeddings_are_cached(clip, image) -> None:
    model, tokenizer, processor = build_tiny_clip(seed=1)
    calls = count_text_encoder_calls(model)
    f = ClipBlipFilter(model, tokenizer, processor, FixedCaptioner(CAPTIONS))
    first = f.predict(image, VOCAB)
    assert calls[0] > 0
    before = calls[0]
    assert f.predict(image, VOCAB) == first
    assert f.scores(np.flipud(image).copy(), VOCAB)
    assert calls[0] == before  # same vocabulary, same caption words: nothing re-encoded
    f.predict(image, VOCAB[::-1])  # a different vocabulary is a different cache entry
    assert calls[0] > before
    f.clear_cache()
    before = calls[0]
    f.predict(image, VOCAB)
    assert calls[0] > before


def test_a_new_word_max_length_is_not_hidden_by_the_word_cache(clip, image) -> None:
    # the word cache was keyed by the word alone: after word_max_length changed, the class names' embeddings were
    # the old truncation's, and the scores those of the old setting
    f = ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS))
    before = f.explain(image, VOCAB).text_scores
    f.word_max_length = 3
    fresh = ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS), word_max_length=3).explain(image, VOCAB).text_scores
    assert fresh["potted plant"] != pytest.approx(before["potted plant"], abs=1e-3)  # the setting matters here
    assert f.explain(image, VOCAB).text_scores == pytest.approx(fresh, abs=1e-6)


def test_with_tiny_blip_captioner(clip, image) -> None:
    captioner = BlipCaptioner(*build_tiny_blip())
    f = ClipBlipFilter(*clip, captioner)
    d = f.explain(image, VOCAB)
    assert d.captions == captioner.caption(image, ["", "a picture of"])
    assert d.kept and set(d.kept) <= set(VOCAB)
    assert all(isinstance(w, str) and w for w in d.words)


def test_bad_arguments(clip, image) -> None:
    f = ClipBlipFilter(*clip)
    with pytest.raises(ValueError, match="duplicate"):
        f.predict(image, ["cat", "cat"])
    with pytest.raises(ValueError, match="empty"):
        f.predict(image, [])
    with pytest.raises(ValueError, match="single string"):
        f.predict(image, "cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        f.predict(image.astype(np.float64), VOCAB)
    with pytest.raises(ValueError, match="class_template"):
        ClipBlipFilter(*clip, class_template="A photo of a")
    with pytest.raises(ValueError, match="caption"):
        ClipBlipFilter(*clip, object())
    assert validate_vocabulary(("a", "b")) == ["a", "b"]


def test_from_pretrained_reuses_captioner(clip, image, tmp_path: Path) -> None:
    model, tokenizer, processor = clip
    folder = tmp_path / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    captioner = FixedCaptioner(CAPTIONS)
    f = ClipBlipFilter.from_pretrained(clip=str(folder), captioner=captioner, text_threshold=0.9)
    assert f.captioner is captioner and f.text_threshold == 0.9
    reference = ClipBlipFilter(model, tokenizer, processor, captioner, text_threshold=0.9)
    assert f.scores(image, VOCAB) == pytest.approx(reference.scores(image, VOCAB), abs=1e-6)
    with pytest.raises(ModelNotFoundError, match="no-clip-here"):
        ClipBlipFilter.from_pretrained(clip=str(tmp_path / "no-clip-here"), blip=None)


# -- caption words --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "singular"),
    [("dogs", "dog"), ("puppies", "puppy"), ("buses", "bus"), ("boxes", "box"), ("men", "man"), ("glass", "glass")]
    # these came out "hous", "sho", "to", "cano", "specy", "sery", "len"
    + [("houses", "house"), ("shoes", "shoe"), ("toes", "toe"), ("canoes", "canoe"), ("species", "species")]
    + [("series", "series"), ("lens", "lens"), ("potatoes", "potato"), ("blouses", "blouse"), ("benches", "bench")],
)
def test_singularize(word: str, singular: str) -> None:
    assert singularize(word) == singular


def test_caption_words() -> None:
    words = caption_words(["Two dogs sitting near the traffic lights", "a red bus"], phrases=["traffic light"])
    assert words == ["dogs", "dog", "traffic", "lights", "light", "traffic light", "bus"]
    assert "light" not in caption_words(["a light"], non_nouns={"light"})
    assert "light" in caption_words(["a light"], non_nouns={"light"}, keep=["light"])
    # a hyphenated name written verbatim in a caption was never matched (only names with spaces were phrases)
    from diffsegmenter.filters.words import is_phrase

    assert is_phrase("t-shirt") and is_phrase("floor-wood") and is_phrase("traffic light") and not is_phrase("cat")
    words = caption_words(["a man in a t-shirt on a floor-wood"], phrases=["t-shirt", "floor-wood"])
    assert "t-shirt" in words and "floor-wood" in words
    assert "t-shirt" in caption_words(["two t shirts"], phrases=["t-shirt"])


# -- candidate JSON -------------------------------------------------------------------------------------------------


def test_image_key() -> None:
    assert image_key("/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg") == "2007_000033"
    assert image_key("2007_000033.jpg") == "2007_000033"
    assert image_key("2007_000033") == "2007_000033"
    assert image_key(r"C:\data\COCO_val2014_000000182611.jpg") == "COCO_val2014_000000182611"


def test_candidates_round_trip(tmp_path: Path) -> None:
    per_image = {
        "2007_000033": {"image_similarity": ["plane"], "text_similarity": ["plane", "people"]},
        "2007_000042": {"image_similarity": ["train"], "text_similarity": [], "synonym_matching": ["train"]},
    }
    path = save_candidates(tmp_path / "sub" / "predict.json", per_image)
    raw = json.loads(path.read_text())
    assert list(raw) == ["image_similarity", "text_similarity", "synonym_matching"]
    assert raw["synonym_matching"]["2007_000033"] == []
    assert load_candidates(path) == {"2007_000033": ["plane", "people"], "2007_000042": ["train"]}
    for choice in ("image_similarity", "text_similarity", "synonym_matching"):
        assert load_candidates(path, choice=[choice]) == {k: v.get(choice, []) for k, v in per_image.items()}


def test_candidates_absolute_keys_union_and_order(tmp_path: Path) -> None:
    root = "/root/autodl-tmp/dataset/VOCdevkit/VOC2012/JPEGImages/"
    data = {
        "image_similarity": {root + "2007_000033.jpg": ["plane", "buses"], root + "2007_000129.jpg": ["bicycle"]},
        "text_similarity": {root + "2007_000033.jpg": ["people", "plane"], root + "2007_000129.jpg": []},
        "synonym_matching": {root + "2007_000033.jpg": ["car"]},
    }
    path = tmp_path / "predict_syn_txt_0.8_img_0.97.json"
    path.write_text(json.dumps(data))
    assert load_candidates(path) == {"2007_000033": ["plane", "buses", "people"], "2007_000129": ["bicycle"]}
    vocab = ["plane", "bicycle", "bird", "boat", "bottle", "buses", "car", "people"]
    assert load_candidates(path, vocabulary=vocab)["2007_000033"] == ["plane", "buses", "people"]
    three = load_candidates(path, choice=("image_similarity", "text_similarity", "synonym_matching"), vocabulary=vocab)
    assert three["2007_000033"] == ["plane", "buses", "car", "people"]
    with pytest.raises(ValueError, match="not in the given vocabulary"):
        load_candidates(path, vocabulary=["plane"])
    with pytest.raises(ValueError, match="lacks"):
        load_candidates(path, choice=["nope"])


def test_candidates_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_candidates(tmp_path / "missing.json")
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"image_similarity": {"/a/x.jpg": ["cat"], "/b/x.jpg": ["dog"]}}))
    with pytest.raises(ValueError, match="normalise to image id 'x'"):
        load_candidates(clash, choice=["image_similarity"])
    one = tmp_path / "one.json"  # one of the two default sources: read from it (was refused, and the CLI cannot
    one.write_text(json.dumps({"image_similarity": {"x.jpg": ["cat"]}}))  # choose sources)
    assert load_candidates(one) == {"x": ["cat"]}
    with pytest.raises(ValueError, match="lacks"):
        load_candidates(one, choice=["image_similarity", "text_similarity"])  # an explicit choice stays strict
    none = tmp_path / "none.json"
    none.write_text(json.dumps({"synonym_matching": {"x.jpg": ["cat"]}}))
    with pytest.raises(ValueError, match="lacks"):
        load_candidates(none)
    with pytest.raises(ValueError, match="map source names"):
        save_candidates(tmp_path / "bad.json", {"x": ["cat"]})  # type: ignore[dict-item]


def test_filter_decision_writes_candidates(clip, image, tmp_path: Path) -> None:
    f = ClipBlipFilter(*clip, FixedCaptioner(CAPTIONS))
    d = f.explain(image, VOCAB)
    path = save_candidates(tmp_path / "out.json", {"img_0001.jpg": d.sources()})
    assert load_candidates(path, vocabulary=VOCAB) == {"img_0001": d.kept}


_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def test_real_clip_vit_l14_preprocessor_config_resizes_the_short_side_and_crops(tmp_path: Path) -> None:
    # openai/clip-vit-large-patch14's preprocessor_config.json is the legacy feature-extractor one: "size": 224 as a
    # bare int, which must mean the SHORT side (then a 224 center crop), not a 224x224 squash. Already right.
    from PIL import Image

    config = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": _CLIP_MEAN.tolist(),
        "image_std": _CLIP_STD.tolist(), "resample": 3, "size": 224,
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = _clip_image_processor_class().from_pretrained(tmp_path)
    array = np.random.default_rng(0).integers(0, 256, size=(300, 600, 3), dtype=np.uint8)
    got = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    resized = np.asarray(Image.fromarray(array).resize((448, 224), Image.BICUBIC))[:, 112:336] / 255.0
    expected = torch.tensor(((resized - _CLIP_MEAN) / _CLIP_STD).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_command_line_loads_the_clip_filter_from_local_folders(clip, tiny_model_dir, tmp_path, capsys) -> None:
    """``--filter clip`` could only load CLIP and BLIP by their Hub ids (the error said to pass a path, with no flag
    to pass it); ``--clip`` and ``--blip`` name them."""
    from PIL import Image

    from diffsegmenter import cli

    model, tokenizer, processor = clip
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    base = ["segment", str(tmp_path / "x.png"), "--model", str(tiny_model_dir), "--classes", "cat,dog"]
    out = tmp_path / "out"
    assert cli.main([*base, "--out", str(out), "--filter", "clip", "--clip", str(folder), "--blip", "none"]) == 0
    sidecar = json.loads((out / "x.json").read_text())
    assert set(sidecar["candidates"]) == {"cat", "dog"} and sidecar["classes"]
    capsys.readouterr()
    # the filter's models are settings of the results: a rerun with another CLIP is refused, not mixed in
    import shutil

    shutil.copytree(folder, tmp_path / "clip2")
    assert (
        cli.main([*base, "--out", str(out), "--filter", "clip", "--clip", str(tmp_path / "clip2"), "--blip", "none"])
        == 2
    )
    assert "filter_models" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "o2"), "--clip", str(folder)]) == 2  # without --filter clip
    assert "--clip set(s) the models of --filter clip" in capsys.readouterr().err
    missing = tmp_path / "no-clip"
    assert cli.main([*base, "--out", str(tmp_path / "o3"), "--filter", "clip", "--clip", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--filter clip: " in err and "(its models: --clip MODEL and --blip MODEL" in err


def test_run_records_name_the_clip_filters_models(clip, tmp_path) -> None:
    """eval's run_config.json recorded a CLIP filter object as "ClipBlipFilter", so a resume with another --clip was
    not refused."""
    from diffsegmenter.evaluation.harness import _filter_id

    model, tokenizer, processor = clip
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    f = ClipBlipFilter.from_pretrained(clip=str(folder), blip=None, text_threshold=0.9)
    assert _filter_id(f) == {"filter": "clip", "clip": str(folder), "blip": None, "text_threshold": 0.9}
    assert _filter_id(ClipBlipFilter(*clip)) == "ClipBlipFilter" and _filter_id("clip") == "clip"
