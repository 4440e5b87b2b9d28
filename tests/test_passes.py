"""One attention pass and the batcher: what each pass computes, batching and out-of-memory halving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffsegmenter.passes as passes
from diffsegmenter.passes import ClassMaps, PassSpec, attention_pass, run_batched


def _image(h=24, w=40, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def _work(seg, classes):
    latents = seg.encode_images([_image()], seed=0)
    return latents, [(0, p) for p in seg.build_prompts(_image(), classes)]


def _run(seg, latents, work, spec, **kwargs):
    kwargs.setdefault("batch_size", None)
    return run_batched(
        seg.backbone, work, latents, spec, encode=seg.encode_prompt, token_rule=seg.config.token_rule, **kwargs
    )


def test_attention_maps_takes_the_content_masks_of_the_rescaled_readout(tiny_segmenter):
    """The public one-pass method ran only the read-outs that need no content masks (the shipped model's 'rescaled'
    could not be called at all)."""
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.readouts import content_token_mask

    base = tiny_segmenter
    seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout="rescaled"))
    latents, work = _work(seg, ["cat", "sofa"])
    text = torch.stack([seg.encode_prompt(p) for _, p in work])
    groups = [[p.class_tokens[0]] for _, p in work]
    content = [
        content_token_mask(seg.backbone.tokenizer, p.input_ids, keep=[i for t in p.class_tokens for i in t])
        for _, p in work
    ]
    latents = latents.expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match="content_token_mask"):
        seg.attention_maps(latents, text, groups)
    rescaled = seg.attention_maps(latents, text, groups, content=content)
    assert rescaled.shape == (2, 1, 16, 16) and rescaled.min() >= 0 and rescaled.max() <= 1
    # its where maps are the paper's (the rescaled maps decide which class: PassSpec's which_weights)
    assert torch.allclose(rescaled, base.attention_maps(latents, text, groups), atol=1e-6)


def test_pass_computes_only_what_it_is_asked(tiny_segmenter):
    seg = tiny_segmenter
    latents, work = _work(seg, ["cat", "sofa"])
    text = torch.stack([seg.encode_prompt(p) for _, p in work])
    groups = [[p.class_tokens[0][:1]] for _, p in work]
    latents = latents.expand(2, -1, -1, -1)
    weights = {2: 1.0, 1: 0.0}
    both = attention_pass(seg.backbone, latents, text, groups, PassSpec.from_config(seg.config, which_weights=weights))
    assert both.where.shape == both.which.shape == (2, 1, 16, 16)
    assert torch.equal(both.where, seg.attention_maps(latents, text, groups))
    where_only = attention_pass(seg.backbone, latents, text, groups, PassSpec.from_config(seg.config))
    assert where_only.which is None and torch.equal(where_only.where, both.where)
    spec = PassSpec.from_config(seg.config, where=False, which_weights=weights)
    which_only = attention_pass(seg.backbone, latents, text, groups, spec)
    assert which_only.where is None and torch.equal(which_only.which, both.which)


def test_batcher_returns_each_class_map_whatever_the_batch_size(tiny_segmenter):
    seg = tiny_segmenter
    latents, work = _work(seg, ["cat", "sofa", "plant"])
    spec = PassSpec.from_config(seg.config)
    whole = _run(seg, latents, work, spec)
    assert isinstance(whole, ClassMaps) and sorted(whole.where) == [(0, 0), (0, 1), (0, 2)] and not whole.which
    ones = _run(seg, latents, work, spec, batch_size=1)
    for key, value in whole.where.items():
        assert value.shape == (16, 16) and torch.allclose(value, ones.where[key], atol=1e-5)


def test_out_of_memory_halves_the_batch_and_retries(tiny_segmenter, monkeypatch):
    seg = tiny_segmenter
    latents, work = _work(seg, ["cat", "sofa", "plant", "dog"])
    spec = PassSpec.from_config(seg.config)
    full = _run(seg, latents, work, spec)
    sizes = []
    original = passes.attention_pass

    def small_memory(backbone, lat, *args, **kwargs):
        sizes.append(lat.shape[0])
        if lat.shape[0] > 1:
            raise torch.OutOfMemoryError("out of memory")
        return original(backbone, lat, *args, **kwargs)

    monkeypatch.setattr(passes, "attention_pass", small_memory)
    halved = _run(seg, latents, work, spec, batch_size=4)
    assert sizes == [4, 2, 1, 1, 1, 1]
    for key, value in full.where.items():
        assert torch.allclose(value, halved.where[key], atol=1e-5)
    sizes.clear()
    monkeypatch.setattr(passes, "attention_pass", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    with pytest.raises(torch.OutOfMemoryError):
        _run(seg, latents, work[:1], spec, batch_size=1)  # one sample that does not fit: nothing left to halve


def test_cpu_batch_limit_follows_the_backbone_estimate(tiny_segmenter, monkeypatch):
    bb = tiny_segmenter.backbone
    latents = torch.zeros(1, 4, 16, 16)
    per_sample = bb.sample_bytes((16, 16))
    assert per_sample == 8 * 16 * 16 * (16 + 32) * 4
    monkeypatch.setattr(passes, "_free_ram_bytes", lambda: 10 * per_sample)
    assert passes.cpu_batch_limit(bb, latents) == 5  # half the free RAM
    monkeypatch.setattr(passes, "_free_ram_bytes", lambda: None)  # unknown free RAM: the fixed budget alone
    assert passes.cpu_batch_limit(bb, latents) == passes.CPU_BATCH_BYTES // per_sample
