"""The Stable Diffusion backbone: state-free operations that match the components they wrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsegmenter import DiffSegmenter, SegmenterConfig
from diffsegmenter.backbones import DiffusionBackbone, StableDiffusionBackbone


def _image(h=24, w=40, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


@pytest.fixture()
def backbone(tiny_components):
    c = tiny_components
    return StableDiffusionBackbone(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"])


def test_is_a_diffusion_backbone_with_the_models_sizes(backbone):
    assert isinstance(backbone, DiffusionBackbone)
    assert backbone.native_resolution == 32  # UNet sample size 16 x VAE factor 2
    assert backbone.device.type == "cpu" and backbone.dtype == torch.float32
    assert backbone.default_level_weights == {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1}
    backbone.default_level_weights[8] = 0.0  # a copy: the family's weights cannot be changed by accident
    assert backbone.default_level_weights[8] == 0.3


def test_attention_layers_name_kind_and_level(backbone):
    layers = backbone.attention_layers()
    assert {kind for kind, _ in layers.values()} == {"cross", "self"}
    assert {f for kind, f in layers.values() if kind == "cross"} == {1, 2}  # the tiny UNet's two levels
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert layers[name] == ("cross", 1)


def test_encode_latents_mean_or_seeded_sample_as_the_config_asks(backbone, tiny_components):
    img = [_image()]
    mean = backbone.encode_latents(img, 32)
    assert mean.shape == (1, 4, 16, 16) and mean.dtype == torch.float32
    a = backbone.encode_latents(img, 32, sample=True, seed=3)
    b = backbone.encode_latents(img, 32, sample=True, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, mean)
    # the facade passes its config through and gets the same tensors
    c = tiny_components
    seg = DiffSegmenter(*(c[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")))
    assert torch.equal(seg.encode_latents(img, seed=3), a)  # vae_sample=True by default
    seg.config = seg.config.replace(vae_sample=False, antialias=True)
    assert torch.equal(seg.encode_latents(img, seed=3), backbone.encode_latents(img, 32, antialias=True))
    assert backbone.encode_latents(img, 64).shape == (1, 4, 32, 32)


def test_add_noise_and_denoise_are_the_scheduler_and_unet_calls(backbone, tiny_components):
    z0 = backbone.encode_latents([_image(), _image(seed=1)], 32)
    noise = backbone.noise_like(z0, seed=0)
    assert torch.equal(noise[0], noise[1])  # per image, independent of the batch
    zt = backbone.add_noise(z0, noise, 100)
    expected = tiny_components["scheduler"].add_noise(z0, noise, torch.tensor([100, 100]))
    assert torch.equal(zt, expected)
    text = backbone.empty_embedding().unsqueeze(0).expand(2, -1, -1)
    with torch.no_grad():
        pred = backbone.denoise(zt, 100, text)
        ref = tiny_components["unet"](zt, torch.tensor(100), encoder_hidden_states=text, return_dict=False)[0]
    assert torch.equal(pred, ref)


def test_encode_text_emphasis_and_cache(backbone, tiny_components):
    ids = tiny_components["tokenizer"]("a photograph of cat", padding="max_length", max_length=77)["input_ids"]
    plain = backbone.encode_text(ids)
    assert torch.equal(plain, backbone.encode_ids(ids))
    assert backbone.encode_text(ids) is plain  # cached
    assert backbone.empty_embedding() is backbone.empty_embedding()  # encoded once
    strong = backbone.encode_text(ids, emphasis=2.0, positions=[4])
    empty = backbone.empty_embedding()
    assert torch.allclose(strong[4], empty[4] + 2.0 * (plain[4] - empty[4]))
    others = [i for i in range(plain.shape[0]) if i != 4]
    assert torch.equal(strong[others], plain[others])


def test_the_text_cache_is_bounded_in_bytes_and_drops_the_least_recently_used(backbone, tiny_components):
    # it was bounded by a count (4096 prompts, then cleared whole): 17 GB of FLUX.1-dev embeddings on the GPU of a
    # server seeing new class lists, and every clear dropped the prompts in use too
    tok = tiny_components["tokenizer"]

    def ids(word):
        return tok(f"a photograph of {word}", padding="max_length", max_length=77)["input_ids"]

    first = backbone.encode_text(ids("cat"))
    size = first.numel() * first.element_size()
    backbone._text_cache.max_bytes = 3 * size
    empty = backbone.empty_embedding()
    for word in ("dog", "sofa", "plant", "cow"):
        backbone.encode_text(ids(word))
        assert backbone.encode_text(ids("cow" if word == "cow" else "dog")) is not None  # "dog" kept in use
    assert len(backbone._text_cache) == 3 and backbone._text_cache.nbytes == 3 * size
    assert backbone._text_cache.get((1.0, *ids("dog"), -1, None)) is not None  # used most recently but one
    assert backbone._text_cache.get((1.0, *ids("cat"), -1, None)) is None  # the least recently used went first
    assert torch.equal(backbone.encode_text(ids("cat")), first)  # and is encoded again, the same
    assert backbone.empty_embedding() is empty  # the empty prompt is never dropped


def test_segmenter_built_on_a_backbone_equals_one_built_from_components(backbone, tiny_components):
    c = tiny_components
    parts = [c[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")]
    from_parts = DiffSegmenter(*parts, SegmenterConfig())
    on_backbone = DiffSegmenter(backbone=backbone)
    assert (
        on_backbone.backbone is backbone and on_backbone.unet is c["unet"] and on_backbone.tokenizer is c["tokenizer"]
    )
    a = from_parts.segment(_image(), classes=["cat", "sofa"])
    b = on_backbone.segment(_image(), classes=["cat", "sofa"])
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="not both"):
        DiffSegmenter(*parts, backbone=backbone)
    with pytest.raises(ValueError, match="five components"):
        DiffSegmenter(c["vae"])
