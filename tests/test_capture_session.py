"""Capture sessions: processors installed once per run, switched per pass, restored on exit; same maps as without."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from diffsegmenter import DiffSegmenter, SegmenterConfig
from diffsegmenter.attention import AttentionStore, capture_attention
from diffsegmenter.capture_session import SwitchableCaptureProcessor, capture_session, open_session


def _image(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _segmenter(components, **overrides) -> DiffSegmenter:
    c = components
    cfg = SegmenterConfig().replace(**overrides)
    return DiffSegmenter(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], cfg)


def _processors(unet) -> dict[str, object]:
    return dict(unet.attn_processors)


@pytest.fixture()
def count_installs(monkeypatch):
    """Counts Attention.set_processor calls (one per layer changed)."""
    calls = []
    original = Attention.set_processor

    def counting(self, processor):
        calls.append(type(processor).__name__)
        return original(self, processor)

    monkeypatch.setattr(Attention, "set_processor", counting)
    return calls


def test_session_installs_once_and_gives_the_same_maps(tiny_components, count_installs):
    seg = _segmenter(tiny_components)
    before = _processors(seg.unet)
    plain = [seg.segment(_image(seed=s), classes=["cat", "sofa"]) for s in (0, 1, 2)]
    per_call = len(count_installs)
    assert per_call > 0  # without a session each call installs and restores
    count_installs.clear()
    with seg.session():
        in_session = [seg.segment(_image(seed=s), classes=["cat", "sofa"]) for s in (0, 1, 2)]
        installed = _processors(seg.unet)
        switches = [p for p in installed.values() if isinstance(p, SwitchableCaptureProcessor)]
        assert switches and all(sw.capture.store is None for sw in switches)  # capture off between passes
    # installed on the first pass only, restored once on exit: one install + one restore per captured layer
    assert len(count_installs) == 2 * len(switches) < 3 * per_call
    assert _processors(seg.unet) == before
    for a, b in zip(plain, in_session):
        assert np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)


def test_switched_off_layers_compute_what_the_original_processors_compute(tiny_components):
    unet = tiny_components["unet"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        ref = unet(x, 10, encoder_hidden_states=text).sample
        with capture_session(unet) as session:
            with session.bind(AttentionStore(latent_size=(16, 16))):
                unet(x, 10, encoder_hidden_states=text)
            off = unet(x, 10, encoder_hidden_states=text).sample  # switches installed, capture off
            assert any(isinstance(p, SwitchableCaptureProcessor) for p in unet.attn_processors.values())
    assert torch.equal(off, ref)


def test_session_restores_after_an_exception_and_reuses_its_processors(tiny_components):
    unet = tiny_components["unet"]
    before = _processors(unet)
    store = AttentionStore(latent_size=(16, 16))
    with pytest.raises(RuntimeError, match="boom"), capture_session(unet) as session, session.bind(store):
        raise RuntimeError("boom")
    assert _processors(unet) == before and open_session(unet) is None
    assert all(sw.capture.store is None for sw in _switches_of(unet))
    # a second session installs the very same processor objects (a compiled UNet keeps its graphs)
    with capture_session(unet) as s1, s1.bind(store):
        first = {k: id(p) for k, p in unet.attn_processors.items()}
    with capture_session(unet) as s2, s2.bind(store):
        second = {k: id(p) for k, p in unet.attn_processors.items()}
    assert first == second
    assert _processors(unet) == before


def _switches_of(unet):
    from diffsegmenter import capture_session as module

    return [sw for key, value in module._CACHE[unet].items() if key != "layers" for sw in value.values()]


def test_nested_passes_with_another_plan_capture_into_their_own_store(tiny_components):
    unet = tiny_components["unet"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    outer, inner, alone = (AttentionStore(latent_size=(16, 16)) for _ in range(3))
    with torch.no_grad():
        with capture_attention(unet, alone, self_factor=1):
            unet(x, 10, encoder_hidden_states=text)
        with capture_session(unet) as session, session.bind(outer, self_factor=1):
            with capture_attention(unet, inner, self_factor=2):  # nested, other plan
                unet(x, 10, encoder_hidden_states=text)
            unet(x, 10, encoder_hidden_states=text)  # the outer pass captures again
    assert [q.shape[2] for q, _, _ in inner.self_qk] == [64] * len(inner.self_qk)  # 8x8 level
    assert len(outer.self_qk) == len(alone.self_qk) and outer.self_qk[0][0].shape[2] == 256
    for f in alone.cross_sum:
        assert torch.equal(outer.cross_sum[f], alone.cross_sum[f])


def test_plan_errors_are_the_same_inside_a_session(tiny_components):
    unet = tiny_components["unet"]
    with (
        pytest.raises(ValueError, match="no self-attention layers at downsampling factor 4"),
        capture_attention(unet, AttentionStore(latent_size=(16, 16)), self_factor=4),
    ):
        pass
    assert not any(isinstance(p, SwitchableCaptureProcessor) for p in unet.attn_processors.values())


def test_batch_run_enters_the_segmenter_session_once(tmp_path):
    from diffsegmenter.batch.runner import BatchRunner, BatchTask

    entered = []

    class Task(BatchTask):
        def load(self, job):
            return job

        def segment(self, jobs, inputs):
            return list(inputs)

        def write(self, job, item, result):
            return result

        def session(self):
            from contextlib import contextmanager

            @contextmanager
            def ctx():
                entered.append("in")
                yield
                entered.append("out")

            return ctx()

    report = BatchRunner(batch_size=2, progress=False).run(list(range(5)), Task())
    assert entered == ["in", "out"] and [r for _, r in report.segmented] == [0, 1, 2, 3, 4]


def test_processors_set_from_outside_during_a_session_are_called_and_kept(tiny_components):
    from diffusers.models.attention_processor import AttnProcessor

    seg = _segmenter(tiny_components)
    before = _processors(seg.unet)
    reference = seg.segment(_image(), classes=["cat", "sofa"])
    try:
        with seg.session():
            seg.segment(_image(), classes=["cat", "sofa"])
            seg.unet.set_attn_processor(AttnProcessor())  # other diffusers code, or the user, swaps them
            # the next pass installed nothing (the session thought its switches still sat there): nothing captured
            again = seg.segment(_image(), classes=["cat", "sofa"])
        np.testing.assert_allclose(again.scores, reference.scores, atol=1e-3)  # AttnProcessor rounds otherwise
        # the processors set during the session are the layers' own now: they stay, none of the session's comes back
        assert {type(p).__name__ for p in _processors(seg.unet).values()} == {"AttnProcessor"}
    finally:
        seg.unet.set_attn_processor(before)  # the UNet is the whole test session's (other tests' float rounding)


def test_an_interrupt_while_installing_leaves_no_switch_behind(tiny_components, monkeypatch):
    seg = _segmenter(tiny_components)
    before = _processors(seg.unet)
    original = Attention.set_processor
    count = []

    def interrupted(self, processor):
        original(self, processor)
        count.append(1)
        if isinstance(processor, SwitchableCaptureProcessor) and len(count) == 2:
            raise KeyboardInterrupt  # Ctrl-C right after the second switch was set

    monkeypatch.setattr(Attention, "set_processor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seg.segment(_image(), classes=["cat"])
    monkeypatch.setattr(Attention, "set_processor", original)
    # the switch set but not yet recorded stayed on its layer; the next session took it for the layer's own
    # processor and put it back on exit, a switch calling itself: every plain forward then recursed
    assert _processors(seg.unet) == before
    seg.segment(_image(), classes=["cat"])
    assert _processors(seg.unet) == before
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, seg.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        seg.unet(x, 10, encoder_hidden_states=text)
