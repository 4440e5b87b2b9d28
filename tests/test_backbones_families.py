"""Every backbone family through the public API: tiny random SDXL, SD3 (with and without T5), FLUX and PixArt-Σ
pipelines built from configs here (sizes in the spirit of diffusers' own pipeline tests), saved with the family's
diffusers pipeline ``save_pretrained`` (safetensors), loaded with ``DiffSegmenter.from_pretrained(folder)``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsegmenter import DiffSegmenter
from diffsegmenter.attention import AttentionStore, joint_text_probs
from diffsegmenter.backbones.dit import flow_sigma
from diffsegmenter.backbones.sdxl import SDXL_LEVEL_WEIGHTS
from diffsegmenter.tokens import tokenise_segments

FIXTURES = Path(__file__).parent / "fixtures"
WORDS = [
    "a",
    "photograph",
    "of",
    "the",
    "cat",
    "dog",
    "on",
    "grass",
    "sitting",
    "in",
    "room",
    "with",
    "and",
    "very",
    "long",
    "prompt",
    "that",
    "goes",
]


def t5_tokenizer():
    """A tiny sentencepiece-style (Unigram) T5 tokenizer built offline: known words are one piece, other words split
    into letters (multi-sub-token class names)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _clip(cls, hidden=32, projection=32):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=projection,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=77,
    )
    return cls(cfg).eval(), tok


def _t5(d_model=32):
    from transformers import T5Config, T5EncoderModel

    tok = t5_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(cfg).eval(), tok


def _vae(latent=4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=latent, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, **kw,
    )  # fmt: skip


def build_sdxl(folder):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64,
    )  # fmt: skip
    te, tok = _clip(CLIPTextModel)
    te2, tok2 = _clip(CLIPTextModelWithProjection)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched
    ).save_pretrained(folder)


def build_sd3(folder, with_t5=True):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32, out_channels=4,
    )  # fmt: skip
    te, tok = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te2, tok2 = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te3, tok3 = _t5() if with_t5 else (None, None)
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.1, scaling_factor=1.5), text_encoder=te, tokenizer=tok, text_encoder_2=te2,
        tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3,
    ).save_pretrained(folder)  # fmt: skip


def build_flux(folder):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    te, tok = _clip(CLIPTextModel)
    te2, tok2 = _t5()
    FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer,
    ).save_pretrained(folder)  # fmt: skip


def build_pixart(folder):
    from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )  # fmt: skip
    te, tok = _t5()
    PixArtSigmaPipeline(
        tokenizer=tok, text_encoder=te, vae=_vae(), transformer=transformer, scheduler=DDIMScheduler()
    ).save_pretrained(folder)


BUILDERS = {
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "sd3_no_t5": lambda f: build_sd3(f, with_t5=False),
    "flux": build_flux,
    "pixart": build_pixart,
}
FAMILY = {"sdxl": "sdxl", "sd3": "sd3", "sd3_no_t5": "sd3", "flux": "flux", "pixart": "pixart"}


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, build in BUILDERS.items():
        build(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def segmenters(family_folders):
    return {n: DiffSegmenter.from_pretrained(f, resolution=32) for n, f in family_folders.items()}


def _image(seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 48, 3), np.uint8)
    img[:, :24] = (200, 30, 30)
    img[:, 24:] = (20, 160, 40)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_segment_through_public_api(segmenters, name):
    seg = segmenters[name]
    assert seg.backbone.family == FAMILY[name]
    procs = dict(seg.backbone.transformer.attn_processors if FAMILY[name] != "sdxl" else seg.unet.attn_processors)
    classes = ["cat", "zebra"]  # "zebra" is several sub-tokens in both the CLIP and the T5 tokenizer
    res = seg.segment(_image(), classes=classes, seed=3)
    assert res.labels.shape == (40, 48) and res.scores.shape == (2, 40, 48)
    assert res.scores.dtype == np.float32 and res.scores.min() >= 0.0 and res.scores.max() <= 1.0
    assert set(np.unique(res.labels)) <= {0, 1, 2}
    assert res.scores.max() > 0  # a real map, not the all-zero constant
    again = seg.segment(_image(), classes=classes, seed=3)
    np.testing.assert_array_equal(res.scores, again.scores)  # deterministic
    assert not np.array_equal(res.scores[0], res.scores[1])  # the maps depend on the class named
    after = dict(seg.backbone.transformer.attn_processors if FAMILY[name] != "sdxl" else seg.unet.attn_processors)
    assert all(after[k] is v for k, v in procs.items())  # processors restored


@pytest.mark.parametrize("name", list(BUILDERS))
def test_capture_leaves_model_output_bit_identical(segmenters, name):
    seg = segmenters[name]
    bb = seg.backbone
    z0 = bb.encode_latents([_image()], 32)
    zt = bb.add_noise(z0, bb.noise_like(z0, 0), 100).to(bb.device, bb.dtype)
    prompt = seg.build_prompts(_image(), ["cat"])[0]
    text = seg.encode_prompt(prompt)[None]
    with torch.inference_mode():
        plain = bb.denoise(zt, 100, text)
        store = AttentionStore(latent_size=tuple(zt.shape[-2:]))
        spec = {"blocks": None, "self_blocks": None} if FAMILY[name] != "sdxl" else {}
        with bb.capture(store, **spec):
            captured = bb.denoise(zt, 100, text)
    if FAMILY[name] == "sdxl":
        # the UNet's cross-attention capture is eager AttnProcessor maths (as for SD1/SD2): equal to rounding
        torch.testing.assert_close(plain, captured, rtol=1e-5, atol=1e-5)
    else:  # the transformer capture wraps the layer's own processor: bit-identical
        assert torch.equal(plain, captured)
    assert store.cross_sum and store.self_qk
    t_len = text.shape[1] - (0 if FAMILY[name] == "pixart" else 1)  # the pooled row is not a token
    if FAMILY[name] == "sd3":
        t_len = text.shape[1] - 1
    for maps in store.cross_maps().values():
        assert maps.shape[1] == t_len


def test_family_defaults_and_precedence(family_folders, segmenters):
    assert segmenters["sdxl"].config.level_weights == SDXL_LEVEL_WEIGHTS
    assert segmenters["sd3"].config.level_weights == {2: 1.0}
    assert segmenters["sd3"].config.attention_blocks == [0, 1]
    assert segmenters["flux"].config.attention_blocks == [0, 1]  # the double-stream blocks
    # explicit argument > folder's segmenter_config.json > family defaults
    folder = family_folders["pixart"]
    (folder / "segmenter_config.json").write_text(json.dumps({"self_attention_blocks": [0], "tau": 0.3}))
    try:
        seg = DiffSegmenter.from_pretrained(folder, tau=0.5)
        assert seg.config.self_attention_blocks == [0] and seg.config.tau == 0.5
        assert seg.config.level_weights == {2: 1.0}
    finally:
        (folder / "segmenter_config.json").unlink()


def test_flux_single_stream_blocks_and_bad_block(segmenters):
    seg = segmenters["flux"]
    res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    seg2 = DiffSegmenter(backbone=seg.backbone, config=seg.config.replace(attention_blocks=[2, 3]))
    res2 = seg2.segment(_image(), classes=["cat", "dog"], seed=0)
    assert res2.scores.shape == res.scores.shape and not np.array_equal(res.scores, res2.scores)
    bad = DiffSegmenter(backbone=seg.backbone, config=seg.config.replace(attention_blocks=[9]))
    with pytest.raises(ValueError, match="out of range"):
        bad.segment(_image(), classes=["cat"])


def test_t5_positions_no_bos_and_long_prompts():
    tok = t5_tokenizer()
    tok.model_max_length = 300
    long = " ".join(["a very long prompt that goes on"] * 15)  # > 77 tokens
    tp = tokenise_segments(tok, [(long, None), ("zebra", "c0"), ("on grass", None)])
    assert tp.spans["c0"][0] > 77 and len(tp.spans["c0"]) > 1  # past CLIP's limit, several sub-tokens
    assert tp.input_ids[0] != tok.eos_token_id and len(tp.input_ids) == 300
    assert tok.convert_ids_to_tokens(tp.input_ids[tp.spans["c0"][0]])  # no BOS shift: positions are the ids'
    pieces = tok(long, add_special_tokens=False)["input_ids"]
    assert tp.input_ids[: len(pieces)] == pieces  # no BOS in front


def test_long_t5_prompt_segments_on_pixart(segmenters):
    seg = segmenters["pixart"]
    tmpl = " ".join(["a very long prompt that goes on"] * 15) + " {}"
    cfg = seg.config.replace(template=tmpl)
    res = DiffSegmenter(backbone=seg.backbone, config=cfg).segment(_image(), classes=["cat", "zebra"])
    assert res.scores.shape == (2, 40, 48)


def test_joint_text_probs_matches_full_softmax():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 10, 4, generator=g), torch.randn(2, 3, 14, 4, generator=g)
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)[..., 10:].mean(1)
    got = joint_text_probs(q, k, slice(10, None), 0.5, chunk_elements=50)  # forces several chunks
    torch.testing.assert_close(got, full)


def test_flow_sigma_counterpart_of_t100():
    assert abs(flow_sigma(100) - 0.2559) < 1e-3
    assert flow_sigma(100) < flow_sigma(400) < 1.0
