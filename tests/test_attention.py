"""Attention capture: processors restored, outputs unchanged, levels derived from the hidden states."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from diffsegmenter.attention import AttentionStore, capture_attention, layer_downsampling_factor


def _inputs(unet, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 16, 16, generator=g)
    text = torch.randn(b, 77, unet.config.cross_attention_dim, generator=g)
    return x, text


def test_processors_restored_after_success_and_exception(tiny_components):
    unet = tiny_components["unet"]
    before = dict(unet.attn_processors)
    x, text = _inputs(unet)
    with capture_attention(unet, AttentionStore(latent_size=(16, 16))):
        assert any(type(p).__name__.endswith("CaptureProcessor") for p in unet.attn_processors.values())
        unet(x, 10, encoder_hidden_states=text)
    assert unet.attn_processors == before
    with pytest.raises(RuntimeError, match="boom"), capture_attention(unet, AttentionStore(latent_size=(16, 16))):
        raise RuntimeError("boom")
    assert unet.attn_processors == before


def test_capture_does_not_change_unet_output(tiny_components):
    unet = tiny_components["unet"]
    x, text = _inputs(unet)
    with torch.no_grad():
        ref = unet(x, 10, encoder_hidden_states=text).sample
        unet.set_attn_processor(AttnProcessor())  # the eager reference processor everywhere
        eager = unet(x, 10, encoder_hidden_states=text).sample
        unet.set_attn_processor(dict(zip(unet.attn_processors, [type(p)() for p in unet.attn_processors.values()])))
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())
        store = AttentionStore(latent_size=(16, 16))
        with capture_attention(unet, store):
            cap = unet(x, 10, encoder_hidden_states=text).sample
    assert torch.allclose(cap, ref, atol=1e-5)
    assert torch.allclose(cap, eager, atol=1e-5)


def test_store_levels_and_shapes(tiny_components):
    unet = tiny_components["unet"]
    x, text = _inputs(unet, b=3)
    store = AttentionStore(latent_size=(16, 16))
    with torch.no_grad(), capture_attention(unet, store):
        unet(x, 10, encoder_hidden_states=text)
    maps = store.cross_maps()
    # the tiny UNet has cross-attention at 16x16 (factor 1) and 8x8 (factor 2)
    assert sorted(maps) == [1, 2]
    assert maps[1].shape == (3, 77, 16, 16) and maps[2].shape == (3, 77, 8, 8)
    assert torch.allclose(maps[1].sum(dim=1), torch.ones(3, 16, 16), atol=1e-5)  # rows of probabilities
    # self-attention kept at the finest level only: down_blocks.0 (1 layer) and up_blocks.1 (2 layers)
    assert len(store.self_qk) == 3
    assert all(q.shape[0] == 3 and q.shape[2] == 256 for q, _, _ in store.self_qk)


def test_keep_batch_keeps_only_conditional_half(tiny_components):
    unet = tiny_components["unet"]
    x, text = _inputs(unet, b=4)
    store = AttentionStore(latent_size=(16, 16), keep_batch=slice(2, 4))
    with torch.no_grad(), capture_attention(unet, store):
        unet(x, 10, encoder_hidden_states=text)
    assert store.cross_maps()[1].shape[0] == 2
    assert all(q.shape[0] == 2 for q, _, _ in store.self_qk)


def test_layer_factor_from_names():
    assert layer_downsampling_factor("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", 4, 4) == 1
    assert layer_downsampling_factor("down_blocks.2.attentions.1.transformer_blocks.0.attn2.processor", 4, 4) == 4
    assert layer_downsampling_factor("mid_block.attentions.0.transformer_blocks.0.attn2.processor", 4, 4) == 8
    assert layer_downsampling_factor("up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor", 4, 4) == 4
    assert layer_downsampling_factor("up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor", 4, 4) == 1


def test_level_of_places_every_power_of_two_level_of_every_latent_size():
    # rounding sqrt(h*w/n) put the 4 x 4 level of a 13 x 13 latent at factor 3 and the 2 x 2 level of a 5 x 5
    # latent at factor 2: resolution 26, 34 or 400 crashed in the fusion ("no fusion weight for factor [3]")
    import math

    for h in range(1, 70):
        for w in (h, h + 3):
            store = AttentionStore(latent_size=(h, w))
            seen: dict[int, int] = {}
            for f in (1, 2, 4, 8):
                n = math.ceil(h / f) * math.ceil(w / f)
                if n in seen:  # two levels of one token (h, w <= f): the first holds it
                    continue
                seen[n] = f
                assert store.level_of(n) == (f, (math.ceil(h / f), math.ceil(w / f))), (h, w, f)


def test_odd_latent_sizes_segment(tmp_path):
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.cli import example_images

    seg = DiffSegmenter.from_pretrained("shapes")
    with example_images() as scenes:
        for resolution in (10, 26, 34):
            seg.config = seg.config.replace(resolution=resolution)
            result = seg.segment(scenes[0], ["circle", "square"])
            assert result.labels.shape == (64, 64), resolution


def test_level_of_rejects_unplaceable_layer():
    with pytest.raises(ValueError, match="cannot place"):
        AttentionStore(latent_size=(16, 16)).level_of(100)


def test_self_attention_level_can_be_chosen(tiny_components):
    unet = tiny_components["unet"]
    x, text = _inputs(unet)
    store = AttentionStore(latent_size=(16, 16))
    with torch.no_grad(), capture_attention(unet, store, self_factor=2):
        unet(x, 10, encoder_hidden_states=text)
    assert store.self_qk and all(q.shape[2] == 64 for q, _, _ in store.self_qk)
    store = AttentionStore(latent_size=(16, 16))
    with (
        pytest.raises(ValueError, match="no self-attention layers at downsampling factor 4"),
        capture_attention(unet, store, self_factor=4),
    ):
        pass
