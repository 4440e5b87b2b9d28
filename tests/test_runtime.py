"""Runtime speed options (compile, channels-last) and host<->device copies: the same maps, capture still works."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from diffsegmenter import DiffSegmenter, SegmenterConfig
from diffsegmenter.runtime import optimize_backbone
from diffsegmenter.transfer import to_device, to_host


def _image(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _fresh_segmenter(**overrides) -> DiffSegmenter:
    """Its own tiny components: compiling or re-laying out modules must not touch the shared session fixture."""
    from tests.conftest import build_tiny_components

    c = build_tiny_components()
    cfg = SegmenterConfig().replace(**overrides)
    return DiffSegmenter(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], cfg)


def _dynamo_counters():
    from torch._dynamo.utils import counters

    return counters


def _segment_all(seg, images, classes):
    return [seg.segment(im, classes=classes) for im in images]


def test_transfers_on_the_cpu_are_plain_moves():
    x = torch.arange(6.0).view(2, 3)
    assert to_device(x, "cpu") is x
    assert to_device(x, "cpu", torch.float64).dtype == torch.float64
    a, b = to_host([x, x.int()])
    assert a is x and torch.equal(b, x.int())


def test_unknown_compile_mode_is_refused():
    seg = _fresh_segmenter()
    with pytest.raises(ValueError, match="compile must be"):
        seg.optimize(compile="fastest")


def test_unknown_compile_mode_is_refused_before_loading(tmp_path, monkeypatch):
    from diffsegmenter import DiffSegmenter, loading

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were read before the compile mode was checked")

    monkeypatch.setattr(loading, "load_backbone", no_loading)
    with pytest.raises(ValueError, match="compile must be"):
        DiffSegmenter.from_pretrained("shapes", compile="fastest")


def test_channels_last_gives_the_same_maps():
    plain, fast = _fresh_segmenter(), _fresh_segmenter().optimize(channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = [_image(seed=s) for s in (0, 1)]
    for a, b in zip(_segment_all(plain, images, ["cat", "sofa"]), _segment_all(fast, images, ["cat", "sofa"])):
        assert np.abs(a.scores - b.scores).max() < 1e-4
        assert (a.labels == b.labels).mean() >= 0.999


def test_compiled_denoiser_captures_the_same_maps_without_recompiling():
    """Dynamo traces the capturing processors (aot_eager: the same kernels, so the same maps bit for bit); the graph
    compiled on the first pass serves every later pass, in a session and outside one."""
    torch._dynamo.reset()
    plain = _fresh_segmenter()
    seg = _fresh_segmenter()
    optimize_backbone(seg.backbone, compile=True, compile_vae=False, backend="aot_eager")
    images = [_image(seed=s) for s in (0, 1, 2)]
    expected = _segment_all(plain, images, ["cat", "sofa", "dog"])
    counters = _dynamo_counters()
    counters.clear()
    with seg.session():
        got = _segment_all(seg, images, ["cat", "sofa", "dog"])
    got.append(seg.segment(images[0], classes=["cat", "sofa", "dog"]))  # outside the session: its own, same objects
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    for a, b in zip(expected + expected[:1], got):
        assert np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in seg.unet.attn_processors.values())


@pytest.mark.slow
def test_inductor_compiled_denoiser_gives_the_same_maps():
    """The real compiler (inductor: generated C++ kernels on the CPU). Needs a C++ compiler, and 2.5 minutes on 2
    shared cores, so it runs when asked: ``DIFFSEGMENTER_TEST_INDUCTOR=1``."""
    if not os.environ.get("DIFFSEGMENTER_TEST_INDUCTOR"):
        pytest.skip("inductor compiles for ~2.5 min on 2 CPU cores: set DIFFSEGMENTER_TEST_INDUCTOR=1 to run it")
    if shutil.which("gcc") is None and shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("no C++ compiler (gcc/g++/cc) on PATH: torch.compile's inductor backend cannot build CPU kernels")
    torch._dynamo.reset()
    plain = _fresh_segmenter()
    seg = _fresh_segmenter()
    optimize_backbone(seg.backbone, compile=True, compile_vae=False)
    images = [_image(seed=s) for s in (0, 1)]
    expected = _segment_all(plain, images, ["cat", "sofa"])
    with seg.session():
        got = _segment_all(seg, images, ["cat", "sofa"])
    for a, b in zip(expected, got):
        assert np.abs(a.scores - b.scores).max() < 1e-4
        assert (a.labels == b.labels).mean() >= 0.999


def test_sdxl_in_float16_keeps_its_vae_in_float32_and_encodes_on_the_device_path(family_folders):
    """SDXL's VAE overflows in float16 (its force_upcast): loading in float16 keeps it in float32, and the device
    path of encode_latents (keep_on_device) gives the CPU path's latents."""
    seg = DiffSegmenter.from_pretrained(family_folders["sdxl"], dtype=torch.float16, resolution=32)
    assert next(seg.backbone.unet.parameters()).dtype == torch.float16
    assert next(seg.backbone.vae.parameters()).dtype == torch.float32
    images = [_image(seed=s) for s in (0, 1)]
    host = seg.backbone.encode_latents(images, 32, sample=True, seed=3)
    kept = seg.backbone.encode_latents(images, 32, sample=True, seed=3, keep_on_device=True)
    assert host.dtype == kept.dtype == torch.float32 and torch.isfinite(kept).all()
    assert torch.equal(host, kept)
