"""Smoke test of the benchmarks: the reference pipeline (released cost structure) and the default engine agree.

A correctness test on the tiny random model, not a timing test: ``benchmarks/speed.py`` does the timing.
"""

from __future__ import annotations

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
