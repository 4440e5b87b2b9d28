"""The transformer backbones against what diffusers computes, for the config flags the public checkpoints set and the
tiny builders used to leave at their defaults. Attention: every ``scaled_dot_product_attention`` call of the model's
forward is recorded, and the captured maps must be the softmax of those queries and keys (FLUX's rotary embedding,
SD3.5's q/k norms and dual attention, PixArt's padding bias). Text: each backbone's embedding must be its
pipeline's ``encode_prompt`` output (T5 lengths per model, SD3's two CLIP paddings); PixArt-α's micro-conditions
the ones ``PixArtAlphaPipeline`` passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffsegmenter.attention import AttentionStore

from .family_builders import _clip, _t5, _vae, family_image


def _record_sdpa(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Record (query, key, output, attn_mask) of every ``torch.nn.functional.scaled_dot_product_attention`` call,
    (B, heads, S, d) each (the mask as given, or None), whether the arguments come by position (SD3's processor) or
    by keyword (diffusers' attention dispatch, FLUX)."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        names = ("query", "key", "value")
        given = dict(zip(names, args)) | {n: kwargs.pop(n) for n in names if n in kwargs}
        out = sdpa(given["query"], given["key"], given["value"], *args[3:], **kwargs)
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        mask = None if mask is None else mask.detach().clone()
        calls.append((given["query"].detach().clone(), given["key"].detach().clone(), out.detach().clone(), mask))
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


def _image_to_text(query, key, n_img: int, text_first: bool) -> torch.Tensor:
    """The head-averaged image->text block of ``softmax(q k^T / sqrt(d))`` of one recorded joint layer: (B, N, T)."""
    p = torch.softmax(query.float() @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1)
    s = key.shape[2]
    return (p[:, :, -n_img:, : s - n_img] if text_first else p[:, :, :n_img, n_img:]).mean(1)


def _captured_layers(bb, latents, text, store, monkeypatch):
    """Run one denoiser forward capturing every block; return the recorded SDPA calls of the joint layers."""
    n_img = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
    with torch.inference_mode():
        text = text.to(bb.device, bb.dtype)
        calls = _record_sdpa(monkeypatch)
        every = list(range(bb.num_blocks()))
        with bb.capture(store, blocks=every, self_blocks=[]):
            bb.denoise(latents, 100, text)
    return [c for c in calls if c[1].shape[2] > n_img], n_img  # image-only attention (SD3.5's attn2) is not read


@pytest.mark.parametrize("head_weighting", [None, "cosine"])
def test_flux_captured_maps_are_the_models_softmax_with_its_rotary_embedding(segmenters, monkeypatch, head_weighting):
    # FluxAttention.forward hands the rotary embedding to its processor positionally: a wrapper that let it fall into
    # *args computed the maps of an un-rotated q.k while the model attended with the rotated one
    bb = segmenters["flux"].backbone
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    store = AttentionStore(latent_size=(16, 16), keep_layers=head_weighting is None, head_weighting=head_weighting)
    layers, n_img = _captured_layers(bb, z, bb.empty_embedding()[None], store, monkeypatch)
    assert len(layers) == bb.num_blocks()  # double- and single-stream blocks
    expected = [_image_to_text(q, k, n_img, text_first=True) for q, k, _, _ in layers]
    if head_weighting is None:
        for (_, got), ref in zip(store.layer_maps, expected, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    else:  # the weighted read-out's capture keeps the plain head average of the same probabilities in cross_sum
        torch.testing.assert_close(store.cross_sum[2], torch.stack(expected).sum(0), atol=1e-6, rtol=1e-5)


def test_flux_concept_readout_attends_with_the_rotated_image_keys(segmenters, monkeypatch):
    from diffsegmenter.joint_attention import capture_concepts

    bb = segmenters["flux"].backbone
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    store = AttentionStore(latent_size=(16, 16))
    concepts = torch.randn(1, 2, int(bb.transformer.config.joint_attention_dim))
    with torch.inference_mode():
        text = bb.empty_embedding()[None]
        calls = _record_sdpa(monkeypatch)
        with capture_concepts(bb.transformer, store, concepts, [0]):
            bb.denoise(z, 100, text)
    # block 0: the image tokens' attention output the read-out computes (64 image queries over all keys), then the
    # model's own joint attention (every token a query)
    seq = next(k.shape[2] for q, k, _, _ in calls if q.shape[2] == k.shape[2])
    _, ours_k, ours_out, _ = next(c for c in calls if c[0].shape[2] == 64 and c[1].shape[2] == seq)
    _, model_k, model_out, _ = next(c for c in calls if c[0].shape[2] == seq)
    torch.testing.assert_close(ours_k, model_k)
    torch.testing.assert_close(ours_out, model_out[:, :, -64:])


def _sd35_medium_like():
    """A tiny SD3.5-medium layout: RMS q/k norms, dual attention (attn2) in the first block, a final
    context-pre-only block, pos_embed_max_size set."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from diffsegmenter.backbones import StableDiffusion3Backbone

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=32, out_channels=4,
        qk_norm="rms_norm", dual_attention_layers=(0,), pos_embed_max_size=32,
    )  # fmt: skip
    te, tok = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te2, tok2 = _clip(CLIPTextModelWithProjection, hidden=16, projection=16)
    te3, tok3 = _t5()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    vae = _vae(shift_factor=0.1, scaling_factor=1.5)
    return StableDiffusion3Backbone(vae, transformer, te, tok, te2, tok2, sched, te3, tok3)


def test_sd35_qk_norms_and_dual_attention_are_in_the_captured_maps(monkeypatch):
    bb = _sd35_medium_like()
    assert "transformer_blocks.0.attn2.processor" in bb.transformer.attn_processors
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    store = AttentionStore(latent_size=(16, 16), keep_layers=True)
    layers, n_img = _captured_layers(bb, z, bb.empty_embedding()[None], store, monkeypatch)
    assert len(layers) == len(store.layer_maps) == 3  # the joint layers only, attn2 is image-only
    for (_, got), (q, k, _, _) in zip(store.layer_maps, layers, strict=True):
        torch.testing.assert_close(got, _image_to_text(q, k, n_img, text_first=False), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------- PixArt
def _pixart_pipeline(name, bb):
    import diffusers

    cls = diffusers.PixArtAlphaPipeline if name == "pixart_alpha" else diffusers.PixArtSigmaPipeline
    sched = diffusers.DDIMScheduler.from_config(bb.scheduler.config)
    pipe = cls(
        tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, vae=bb.vae, transformer=bb.transformer, scheduler=sched
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["pixart", "pixart_alpha"])
def test_pixart_micro_conditions_are_the_pipelines_on_a_non_square_image(segmenters, name):
    # PixArt-α 1024 (sample size 128, use_additional_conditions unset -> on) embeds the image's resolution and aspect
    # ratio; given None it fails inside diffusers ('NoneType' object has no attribute 'flatten')
    bb = segmenters[name].backbone
    assert bb.transformer.use_additional_conditions is (name == "pixart_alpha")
    seen = []
    hook = bb.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            cond = bb.prompt_embedding("a dog on grass")[None]
            _pixart_pipeline(name, bb)(
                prompt_embeds=cond, prompt_attention_mask=(cond != 0).any(-1).long(), height=32, width=24,
                num_inference_steps=1, guidance_scale=1.0, output_type="latent", use_resolution_binning=False,
            )  # fmt: skip
    finally:
        hook.remove()
    latents = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    ours = bb.micro_conditions(latents)
    for key in ("resolution", "aspect_ratio"):
        if seen[0][key] is None:
            assert ours[key] is None
        else:
            torch.testing.assert_close(ours[key], seen[0][key])
    with torch.inference_mode():
        assert bb.denoise(latents, 100, cond).shape == latents.shape


@pytest.mark.parametrize("name", ["pixart", "pixart_alpha"])
def test_pixart_captured_maps_and_completion_keys_are_the_models(segmenters, name, monkeypatch):
    # cross-attention: the softmax of the model's own q.k plus its padding bias; self-attention: its own q and k
    bb = segmenters[name].backbone
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    store = AttentionStore(latent_size=(16, 16), keep_layers=True)
    every = list(range(bb.num_blocks()))
    with torch.inference_mode():
        text = bb.prompt_embedding("a dog on grass")[None]
        calls = _record_sdpa(monkeypatch)
        with bb.capture(store, blocks=every, self_blocks=every):
            bb.denoise(z, 100, text)
    n_img = 64
    cross = [c for c in calls if c[1].shape[2] != n_img]
    self_ = [c for c in calls if c[1].shape[2] == n_img]
    assert len(cross) == len(store.layer_maps) == len(self_) == len(store.self_qk) == bb.num_blocks()
    for (_, got), (q, k, _, mask) in zip(store.layer_maps, cross, strict=True):
        scores = q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5 + mask.float()
        torch.testing.assert_close(got, scores.softmax(-1).mean(1), atol=1e-6, rtol=1e-5)
        assert (got[..., text[0].eq(0).all(-1)] < 1e-6).all()  # the padding gets no attention
    for (q_kept, k_kept, scale), (q, k, _, mask) in zip(store.self_qk, self_, strict=True):
        assert mask is None and scale == pytest.approx(q.shape[-1] ** -0.5)
        torch.testing.assert_close(q_kept, q)
        torch.testing.assert_close(k_kept, k)


@pytest.mark.parametrize(("name", "length"), [("pixart", 300), ("pixart_alpha", 120)])
def test_pixart_text_embedding_is_the_pipelines(segmenters, name, length):
    # PixArtAlphaPipeline reads 120 T5 tokens, PixArtSigmaPipeline 300 (their max_sequence_length defaults)
    bb = segmenters[name].backbone
    prompt = "a dog on grass"
    with torch.inference_mode():
        emb, mask, _, _ = _pixart_pipeline(name, bb).encode_prompt(
            prompt, do_classifier_free_guidance=False, clean_caption=False
        )
        ours = bb.prompt_embedding(prompt)
    assert ours.shape[0] == emb.shape[1] == length
    torch.testing.assert_close(ours, emb[0] * mask[0, :, None])  # padding rows zero: the mask travels with them


# ---------------------------------------------------------------------------------------------------------- FLUX
@pytest.mark.parametrize(("name", "length"), [("flux", 256), ("flux_dev", None)])
def test_flux_text_embedding_is_the_pipelines(segmenters, name, length):
    # dev (guidance embeddings) reads FluxPipeline's default 512 T5 tokens, schnell the 256 of its model card; FLUX
    # does not mask the padding, so the length changes the prediction
    import diffusers

    bb = segmenters[name].backbone
    pipe = diffusers.FluxPipeline(
        scheduler=bb.scheduler, vae=bb.vae, text_encoder=bb.clip, tokenizer=bb.clip_tokenizer, text_encoder_2=bb.t5,
        tokenizer_2=bb.tokenizer, transformer=bb.transformer,
    )  # fmt: skip
    prompt = "a dog on grass"
    with torch.inference_mode():
        kw = {} if length is None else {"max_sequence_length": length}
        emb, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, **kw)
        ours = bb.prompt_embedding(prompt)
    assert ours.shape[0] - 1 == emb.shape[1] == (length or 512)
    torch.testing.assert_close(ours[:-1], emb[0])
    torch.testing.assert_close(ours[-1, : pooled.shape[-1]], pooled[0])


# ---------------------------------------------------------------------------------------------------------- SD3
@pytest.mark.parametrize("name", ["sd3", "sd3_no_t5"])
def test_sd3_text_embedding_is_the_pipelines_with_clip_g_padded_by_bang(segmenters, name):
    # SD3's CLIP-G tokenizer pads with "!" where CLIP-L pads with its end token (the tiny builders share one
    # tokenizer); the CLIP penultimate states, the T5 (or zero) rows and both pooled vectors are the pipeline's
    import copy

    import diffusers
    from transformers import CLIPTokenizer

    from diffsegmenter.backbones.base import TextEmbeddingCache

    from .family_builders import FIXTURES

    bb = copy.copy(segmenters[name].backbone)
    bb._text_cache, bb._empty = TextEmbeddingCache(), None  # this copy's prompts are encoded anew
    bb.tokenizer_2 = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer", pad_token="!")
    assert bb.tokenizer_2.pad_token_id != bb.tokenizer.pad_token_id
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=bb.transformer, scheduler=bb.scheduler, vae=bb.vae, text_encoder=bb.text_encoder,
        tokenizer=bb.tokenizer, text_encoder_2=bb.text_encoder_2, tokenizer_2=bb.tokenizer_2,
        text_encoder_3=bb.text_encoder_3, tokenizer_3=bb.tokenizer_3,
    )  # fmt: skip
    prompt = "a photograph of the cat on grass"
    with torch.inference_mode():
        emb, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False)
        ours = bb.prompt_embedding(prompt)
    assert ours.shape[0] - 1 == emb.shape[1] == 77 + 256
    torch.testing.assert_close(ours[:-1], emb[0])
    torch.testing.assert_close(ours[-1, : pooled.shape[-1]], pooled[0])


@pytest.mark.parametrize("name", ["pixart", "pixart_alpha"])
def test_pixart_prompts_are_lowercased_as_the_pipelines_do(segmenters, family_folders, name):
    # the PixArt pipelines lowercase every prompt before T5's case-sensitive tokenizer (text.lower().strip(), or the
    # caption cleaning); "Dog" and "dog" are different tokens
    from transformers import AutoTokenizer

    from diffsegmenter.tokens import tokenise_segments

    seg = segmenters[name]
    bb = seg.backbone
    prompt = "A Dog on Grass"
    with torch.inference_mode():
        emb, mask, _, _ = _pixart_pipeline(name, bb).encode_prompt(
            prompt, do_classifier_free_guidance=False, clean_caption=False
        )
        ours = bb.prompt_embedding(prompt)
    torch.testing.assert_close(ours, emb[0] * mask[0, :, None])
    upper = tokenise_segments(bb.tokenizer, [("A Photograph of the", None), ("Cat", "c")])
    lower = tokenise_segments(bb.tokenizer, [("a photograph of the", None), ("cat", "c")])
    assert upper.input_ids == lower.input_ids and upper.spans == lower.spans
    folder_tok = AutoTokenizer.from_pretrained(family_folders[name] / "tokenizer")
    assert folder_tok("Dog").input_ids != folder_tok("dog").input_ids  # case-sensitive itself: the copy lowercases
    res = seg.segment(family_image(), classes=["Cat", "dog"], seed=0)
    assert res.scores.shape == (2, 40, 48)


def _timesteps_seen(bb, run_pipeline, sampler, z, text):
    """The ``timestep`` tensors the transformer receives, first from ``run_pipeline()`` (the family's diffusers
    pipeline on ``sampler``'s schedule), then from our ``denoise`` at each of ``sampler.timesteps``."""
    seen = []
    hook = bb.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            run_pipeline()
            theirs = list(seen)
            seen.clear()
            for t in sampler.timesteps:
                bb.denoise(z, t, text)
    finally:
        hook.remove()
    return theirs, seen


def test_sd3_timesteps_reach_a_bfloat16_transformer_in_float32_as_the_pipelines(family_folders):
    # StableDiffusion3Pipeline gives the scheduler's float32 timesteps to the transformer whatever its dtype; cast to
    # bfloat16 they move (by up to 2 of 1000 above t = 512)
    import diffusers

    from diffsegmenter.loading import load_backbone

    bb, _ = load_backbone(family_folders["sd3"], dtype=torch.bfloat16)  # a fresh copy: other tests' hooks stay off
    sampler = bb.sampler(4, latent_size=(16, 16))
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=bb.transformer, scheduler=sampler.scheduler, vae=bb.vae, text_encoder=bb.text_encoder,
        tokenizer=bb.tokenizer, text_encoder_2=bb.text_encoder_2, tokenizer_2=bb.tokenizer_2,
        text_encoder_3=bb.text_encoder_3, tokenizer_3=bb.tokenizer_3,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    text = bb.empty_embedding()[None].to(torch.bfloat16)
    d = int(bb.transformer.config.pooled_projection_dim)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    theirs, seen = _timesteps_seen(
        bb,
        lambda: pipe(
            prompt_embeds=text[:, :-1], pooled_prompt_embeds=text[:, -1, :d], latents=z, height=32, width=32,
            num_inference_steps=4, guidance_scale=1.0, output_type="latent",
        ),
        sampler, z, text,
    )  # fmt: skip
    assert len(seen) == len(theirs) == 4
    assert any(not torch.equal(t.to(torch.bfloat16).float(), t) for t in theirs)  # the case that shows the cast
    for ours, pipeline in zip(seen, theirs, strict=True):
        assert ours.dtype == pipeline.dtype == torch.float32
        torch.testing.assert_close(ours, pipeline)


def test_sd3_input_larger_than_its_position_table_is_refused_with_the_largest_size(segmenters):
    # SD3's pos_embed_max_size (192 patches for SD3/SD3.5: 3072 px) bounds the input; diffusers' own message names
    # patches ("Height (98) cannot be greater than `pos_embed_max_size`: 96."), not the resolution to use
    bb = segmenters["sd3"].backbone
    most = int(bb.transformer.config.pos_embed_max_size) * 2 * bb.vae_scale
    assert bb.encode_latents([family_image()], most).shape[-1] == most // bb.vae_scale
    with pytest.raises(ValueError, match=f"use a resolution <= {most}"):
        bb.encode_latents([family_image()], most + 4)


def test_flux_timesteps_reach_a_bfloat16_transformer_rounded_as_the_pipelines(family_folders):
    # FluxPipeline passes (t in the model's dtype) / 1000 with t = sigma * 1000 from the scheduler; sigma cast to
    # bfloat16 directly lands one bfloat16 step away at some sigmas
    import diffusers

    from diffsegmenter.loading import load_backbone

    bb, _ = load_backbone(family_folders["flux_dev"], dtype=torch.bfloat16)
    steps = 12
    sampler = bb.sampler(steps, latent_size=(16, 16))
    pipe = diffusers.FluxPipeline(
        scheduler=sampler.scheduler, vae=bb.vae, text_encoder=bb.clip, tokenizer=bb.clip_tokenizer,
        text_encoder_2=bb.t5, tokenizer_2=bb.tokenizer, transformer=bb.transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    text = bb.empty_embedding()[None].to(torch.bfloat16)
    d = int(bb.transformer.config.pooled_projection_dim)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    packed = z.view(1, 4, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 64, 16)
    theirs, seen = _timesteps_seen(
        bb,
        lambda: pipe(
            prompt_embeds=text[:, :-1], pooled_prompt_embeds=text[:, -1, :d], latents=packed, height=32,
            width=32, num_inference_steps=steps, output_type="latent",
        ),
        sampler, z, text,
    )  # fmt: skip
    assert len(seen) == len(theirs) == steps
    direct = [torch.tensor([t.sigma]).to(torch.bfloat16) for t in sampler.timesteps]
    assert any(not torch.equal(a, b) for a, b in zip(direct, theirs))  # the case that shows the rounding
    for ours, pipeline in zip(seen, theirs, strict=True):
        assert ours.dtype == pipeline.dtype
        assert torch.equal(ours, pipeline)


def test_a_transformer_with_4x4_patches_reads_its_blocks_at_factor_4(segmenters):
    """Every public SD3 / PixArt-Σ model has 2x2 patches, but the backbone reads the transformer's own patch size: a
    4x4-patch model's attention lands at downsampling factor 4, and its family defaults must fuse that level (with
    ``{2: 1.0}`` the fusion finds no weight for it and raises). FLUX packs 2x2 patches outside its transformer."""
    from diffsegmenter import DiffSegmenter
    from diffsegmenter.backbones import StableDiffusion3Backbone

    from .family_builders import sd3_components

    c = sd3_components(with_t5=False, patch_size=4)
    backbone = StableDiffusion3Backbone(
        c["vae"],
        c["transformer"],
        c["text_encoder"],
        c["tokenizer"],
        c["text_encoder_2"],
        c["tokenizer_2"],
        c["scheduler"],
    )
    assert backbone.patch_factor == 4 and backbone.family_defaults()["level_weights"] == {4: 1.0}
    seg = DiffSegmenter(backbone=backbone)
    seg.config = seg.config.replace(resolution=32)
    image = family_image()
    res = seg.segment(image, classes=["dog", "grass"])
    assert res.scores.shape == (2, *image.shape[:2]) and torch.isfinite(torch.as_tensor(res.scores)).all()
    assert segmenters["sd3"].backbone.family_defaults()["level_weights"] == {2: 1.0}
    assert segmenters["flux"].backbone.patch_factor == 2  # its transformer's own patch_size is 1
    assert segmenters["pixart"].backbone.patch_factor == 2
