"""The read-outs (``SegmenterConfig.readout``, :mod:`diffsegmenter.readouts`): known answers for the pure functions,
and every read-out on every backbone it applies to, on tiny random models (shapes, ranges, determinism, the model
left as it was)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsegmenter import DiffSegmenter, SegmenterConfig
from diffsegmenter.attention import AttentionStore
from diffsegmenter.decision import PaperDecision, SecondPassDecision, SeparateWeightsDecision, class_decision
from diffsegmenter.joint_attention import joint_text_probs, weighted_plan
from diffsegmenter.passes import PassSpec, attention_pass
from diffsegmenter.readout_ops import background_absorbers, block_key, joint_head_weighted_probs
from diffsegmenter.readouts import (
    FACTORIES,
    PaperReadout,
    RescaledReadout,
    WeightedReadout,
    content_token_mask,
    fuse_layers,
    head_agreement_weights,
    head_weighted_probs,
    layer_weights,
    readout_for,
    rescale_tokens,
    self_attention_agreement,
)

from .family_builders import FAMILY, family_image

_image = family_image


# ------------------------------------------------------------------------------------------------ pure functions
def test_content_mask_drops_special_and_stop_words(tiny_components):
    tok = tiny_components["tokenizer"]
    ids = tok("a photograph of cat", padding="max_length", max_length=tok.model_max_length)["input_ids"]
    mask = content_token_mask(tok, ids)
    words = [tok.convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m]
    assert [w.replace("</w>", "") for w in words] == ["photograph", "cat"]
    assert not mask[0] and not mask[len(ids) - 1]  # <sos>, padding
    assert content_token_mask(tok, ids, keep=[1])[1]  # a class token is content whatever its word
    assert content_token_mask(tok, ids, length=100).shape == (100,)


def test_rescaling_removes_sos_dominance():
    # 2 pixels: background (sos takes 0.9) and object; tokens: sos, "a", "cat", "dog"
    a = torch.tensor([[0.90, 0.05, 0.03, 0.02], [0.40, 0.05, 0.45, 0.10]]).T.reshape(1, 4, 1, 2)
    content = torch.tensor([False, False, True, True])
    r = rescale_tokens(a, content)
    assert torch.equal(r[0, :2], torch.zeros(2, 1, 2))  # non-content tokens are 0
    # renormalised over {cat, dog}: bg (0.6, 0.4), object (0.818, 0.182): per-token min-max -> cat 0 -> 1, dog 1 -> 0
    assert torch.allclose(r[0, 2, 0], torch.tensor([0.0, 1.0])) and torch.allclose(
        r[0, 3, 0], torch.tensor([1.0, 0.0])
    )
    assert r.min() >= 0 and r.max() <= 1
    # one content token: no renormalisation (it would be 1 everywhere), only min-max
    single = rescale_tokens(a, torch.tensor([False, False, True, False]))
    assert torch.allclose(single[0, 2, 0], torch.tensor([0.0, 1.0]))
    # a longer joint sequence (SD3's CLIP + T5 columns): the mask is padded with non-content
    assert rescale_tokens(torch.rand(2, 6, 3, 3), content).shape == (2, 6, 3, 3)


def test_absorbers_leave_room_for_background():
    # 3 pixels (background, cat object, dog object); tokens: sos, "a", "cat", "dog"
    a = torch.tensor([[0.80, 0.16, 0.02, 0.02], [0.40, 0.05, 0.45, 0.10], [0.40, 0.05, 0.10, 0.45]]).T
    a = a.reshape(1, 4, 1, 3)
    content = torch.tensor([False, False, True, True])
    absorbers = background_absorbers(content, sos_first=True)
    assert absorbers.tolist() == [False, True, False, False]  # sos is never an absorber; content never is
    assert background_absorbers(content, sos_first=False).tolist() == [True, True, False, False]
    plain = rescale_tokens(a, content)
    absorbed = rescale_tokens(a, content, absorbers)
    # content only: the background pixel's classes sum to 1 (0.5 each), above either class on the other's object
    assert torch.allclose(plain[0, 2, 0], torch.tensor([0.5, 1.0, 0.0]), atol=1e-5)
    # with "a" absorbing: cat = 0.02/0.2 = 0.1, 0.45/0.6 = 0.75, 0.10/0.6 = 1/6 -> min-max 0, 1, 0.1026
    expect_cat = torch.tensor([0.0, 1.0, (1 / 6 - 0.1) / (0.75 - 0.1)])
    assert torch.allclose(absorbed[0, 2, 0], expect_cat, atol=1e-5)
    assert absorbed[0, 2, 0, 0] < absorbed[0, 2, 0, 2]  # background is below the other class's object
    assert torch.equal(absorbed[0, :2], torch.zeros(2, 1, 3))  # only content tokens come back
    # a single content token is renormalised when absorbers share the denominator
    single = rescale_tokens(a, torch.tensor([False, False, True, False]), torch.tensor([False, True, False, True]))
    assert torch.allclose(single[0, 2, 0], expect_cat, atol=1e-5)


def test_head_weights_sum_to_one_and_favour_agreeing_heads():
    torch.manual_seed(0)
    total = torch.randn(2, 5, 8)
    heads = torch.stack([total, -total, torch.randn(2, 5, 8)], dim=1)  # agrees, disagrees, random
    w = head_agreement_weights(heads, total)
    assert w.shape == (2, 3, 5) and torch.allclose(w.sum(dim=1), torch.ones(2, 5))
    assert (w[:, 0] >= w[:, 2]).all() and (w[:, 1] == 0).all()
    ws = head_agreement_weights(heads, total, mode="softmax")
    assert torch.allclose(ws.sum(dim=1), torch.ones(2, 5)) and (ws[:, 0] > ws[:, 1]).all()
    # no head agrees anywhere -> uniform
    assert torch.allclose(head_agreement_weights(-torch.ones(1, 2, 3), None), torch.full((1, 2, 3), 0.5))


def test_head_weighted_probs_is_a_convex_combination():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 6, 5), dim=-1)
    value = torch.randn(2, 4, 5, 3)
    out = probs @ value
    w_out = torch.randn(7, 12)
    mean = head_weighted_probs(probs, out, w_out)
    assert mean.shape == (2, 6, 5) and torch.allclose(mean.sum(-1), torch.ones(2, 6), atol=1e-5)
    same = probs[:, :1].expand(-1, 4, -1, -1)  # identical heads: the weighting is the plain mean
    assert torch.allclose(head_weighted_probs(same, same @ value, w_out), same[:, 0], atol=1e-6)


def _explicit_joint(q, keys, values, text, scale, w_out, part):
    """The head-weighted text probabilities, formed the long way: full softmax, every head's projected output."""
    b, h, n, d = q.shape
    probs = torch.softmax(q @ keys.transpose(-1, -2) * scale, dim=-1)  # (B, H, N, S)
    src = probs if part == "joint" else probs[..., text]
    vals = values if part == "joint" else values[:, :, text]
    heads = torch.stack([(src[:, i] @ vals[:, i]) @ w_out[:, i * d : (i + 1) * d].T for i in range(h)], 1)
    weights = head_agreement_weights(heads, heads.sum(1))
    return (weights[..., None] * probs[..., text]).sum(1), probs[..., text].mean(1)


@pytest.mark.parametrize("part", ["joint", "text"])
def test_joint_head_weighting_known_answer(part):
    torch.manual_seed(0)
    q, keys, values = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 10, 4), torch.randn(2, 3, 10, 4)
    w_out, text = torch.randn(6, 12), slice(7, 10)  # [image (7); text (3)] as SD3 orders them
    want_w, want_u = _explicit_joint(q, keys, values, text, 0.5, w_out, part)
    for chunk in (1 << 25, 40):  # whole and one query row at a time give the same answer
        got_w, got_u = joint_head_weighted_probs(q, keys, values, text, 0.5, w_out, part=part, chunk_elements=chunk)
        assert torch.allclose(got_w, want_w, atol=1e-5) and torch.allclose(got_u, want_u, atol=1e-6)
    assert torch.allclose(got_u, joint_text_probs(q, keys, text, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="'joint' or 'text'"):
        joint_head_weighted_probs(q, keys, values, text, 0.5, w_out, part="image")


def test_joint_head_whose_output_disagrees_gets_no_weight():
    # text keys only; heads 0 and 1 attend to token 0, head 2 to token 1; every value is e1, and head 2's output
    # projection is the negative of the others': its output points against the layer's, so its weight is 0
    big = 30.0
    q = torch.zeros(1, 3, 2, 2)
    q[:, :2, :, 0], q[:, 2, :, 1] = big, big
    keys = torch.eye(2).expand(1, 3, 2, 2).clone()
    values = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).expand(1, 3, 2, 2).clone()
    w_head = torch.randn(5, 2)
    w_out = torch.cat([w_head, w_head, -w_head], dim=1)  # (C, H * d)
    weighted, uniform = joint_head_weighted_probs(q, keys, values, slice(0, 2), 1.0, w_out)
    assert torch.allclose(uniform[0, :, 1], torch.full((2,), 1 / 3), atol=1e-4)
    assert weighted[0, :, 1].max() < 1e-4 and torch.allclose(weighted[0, :, 0], torch.ones(2), atol=1e-4)


def test_self_attention_agreement_known_answers():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4)
    q = x[:, None]  # one head, identity projections, scale 1/sqrt(C): the pseudo self-attention itself
    a = self_attention_agreement(q, q, 4**-0.5, x)
    assert torch.allclose(a, torch.ones(2), atol=1e-5)
    other = self_attention_agreement(torch.randn(2, 2, 9, 4) * 5, torch.randn(2, 2, 9, 4) * 5, 1.0, x)
    assert (other < a).all() and (other >= 0).all()
    chunked = self_attention_agreement(torch.randn(2, 2, 9, 4), torch.randn(2, 2, 9, 4), 1.0, x, chunk_elements=10)
    torch.manual_seed(0)
    _ = torch.randn(2, 9, 4)
    assert chunked.shape == (2,)


def test_layer_weights_and_fusion():
    a = torch.tensor([[0.9, 0.2], [0.3, 0.2], [0.0, 0.0]])
    w = layer_weights(a)
    assert torch.allclose(w.sum(0), torch.ones(2)) and w[0, 0] == pytest.approx(0.75)
    assert torch.allclose(layer_weights(a, "uniform"), torch.full((3, 2), 1 / 3))
    maps = [torch.rand(2, 3, 4, 4), torch.rand(2, 3, 2, 2), torch.ones(2, 3, 8, 8)]
    fused = fuse_layers(maps, w)
    assert fused.shape == (2, 3, 8, 8) and fused.min() >= 0 and fused.max() <= 1 + 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="readout must be one of"):
        SegmenterConfig(readout="best")
    with pytest.raises(ValueError, match="readout_block only applies"):
        SegmenterConfig(readout_block=3)
    with pytest.raises(ValueError, match="own class decision"):
        SegmenterConfig(readout="single-block", class_level_weights={8: 1.0})
    assert SegmenterConfig(readout="single-block", readout_block=2).readout_block == 2
    assert SegmenterConfig().readout == "paper"
    with pytest.raises(ValueError, match="readout must be one of"):
        readout_for("best")


# ------------------------------------------------------------------------------------------------ tiny SD (UNet)
@pytest.mark.parametrize("readout", ["paper", "rescaled", "weighted"])
def test_unet_readouts(tiny_segmenter, readout):
    seg = tiny_segmenter
    before = {k: type(v) for k, v in seg.backbone.unet.attn_processors.items()}
    seg.config = seg.config.replace(readout=readout, resolution=32)
    res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    again = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert res.scores.shape == (2, 40, 48) and res.labels.shape == (40, 48)
    assert res.scores.min() >= 0 and res.scores.max() <= 1
    assert np.array_equal(res.scores, again.scores)
    assert {k: type(v) for k, v in seg.backbone.unet.attn_processors.items()} == before
    # with a separate class decision (the shipped shapes settings' kind) and in single-prompt mode
    seg.config = seg.config.replace(prompt_mode="single", class_level_weights={2: 1.0, 1: 0.0}, class_resolution=16)
    res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert res.scores.shape == (2, 40, 48) and res.scores.min() >= 0 and res.scores.max() <= 1


def test_paper_readout_is_the_default_path(tiny_segmenter):
    seg = tiny_segmenter
    seg.config = seg.config.replace(resolution=32)
    default = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    seg.config = seg.config.replace(readout="rescaled")
    rescaled = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert not np.array_equal(default.scores, rescaled.scores)


def test_weighted_layer_weights_sum_to_one(tiny_segmenter):
    seg = tiny_segmenter
    bb = seg.backbone
    z0 = bb.encode_latents([_image()], 32)
    zt = bb.add_noise(z0, bb.noise_like(z0, 0), 100)
    prompt = seg.build_prompts(_image(), ["cat"])[0]
    text = seg.encode_prompt(prompt)[None]
    content = [content_token_mask(bb.tokenizer, prompt.input_ids, keep=prompt.class_tokens[0])]
    spec = PassSpec(timestep=100, level_weights={2: 1.0, 1: 1.0}, readout="weighted")
    store_seen = {}
    original = readout_for("weighted").__class__.maps

    def spy(self, store, *a):
        out = original(self, store, *a)
        store_seen["w"] = store.last_layer_weights
        store_seen["agreement"] = dict(store.layer_agreement)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readout_for("weighted").__class__, "maps", spy)
        with torch.inference_mode():
            out = attention_pass(bb, zt, text, [[prompt.class_tokens[0]]], spec, content=content)
    assert out.where.shape == (1, 1, 16, 16) and out.where.min() >= 0 and out.where.max() <= 1
    w = store_seen["w"]
    assert w.shape[0] == len(store_seen["agreement"]) == 7  # one weight per cross-attention layer (its block)
    assert torch.allclose(w.sum(0), torch.ones(1))
    with pytest.raises(ValueError, match="content-token mask"):
        attention_pass(bb, zt, text, [[prompt.class_tokens[0]]], spec)


# ------------------------------------------------------------------------------------------------ other families
CASES = [
    ("sdxl", "rescaled"),
    ("sdxl", "weighted"),
    ("sd3", "rescaled"),
    ("sd3", "single-block"),
    ("sd3", "weighted"),
    ("sd3_no_t5", "weighted"),
    ("flux", "rescaled"),
    ("flux", "weighted"),
    ("flux", "single-block"),
    ("flux", "concept"),
    ("pixart", "rescaled"),
    ("pixart", "weighted"),
]


@pytest.mark.parametrize(("name", "readout"), CASES)
def test_family_readouts(segmenters, name, readout):
    base = segmenters[name]
    model = getattr(base.backbone, "transformer", None) or base.backbone.unet
    before = {k: type(v) for k, v in model.attn_processors.items()}
    seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout=readout))
    res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    again = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert res.scores.shape == (2, 40, 48) and res.labels.shape == (40, 48)
    assert res.scores.min() >= 0 and res.scores.max() <= 1 and np.isfinite(res.scores).all()
    assert np.array_equal(res.scores, again.scores)
    assert {k: type(v) for k, v in model.attn_processors.items()} == before
    if readout == "single-block":  # raw probabilities: no min-max, so no map reaches 1
        assert res.scores.max() < 1
        other = DiffSegmenter(backbone=base.backbone, config=seg.config.replace(readout_block=0))
        assert not np.array_equal(other.segment(_image(), classes=["cat", "dog"], seed=0).scores, res.scores)


@pytest.mark.parametrize(
    ("name", "readout"), [("sd3", "concept"), ("sdxl", "single-block"), ("pixart", "single-block")]
)
def test_readout_refused_on_other_families(segmenters, name, readout):
    base = segmenters[name]
    # refused when the segmenter is made (it was at the first image), naming every read-out the family runs
    with pytest.raises(
        ValueError, match=f"readout {readout!r} runs on .*: use one of 'paper', 'rescaled', 'weighted'"
    ):
        DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout=readout))


def test_single_block_says_when_tau_is_above_every_raw_score(segmenters, caplog):
    base = segmenters["sd3"]
    seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout="single-block"))
    with caplog.at_level("WARNING", logger="diffsegmenter.segmenter"):
        res = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    assert res.scores.max() <= res.tau and not res.labels.any()  # the default tau is for min-max maps
    assert "every score of 1 image(s) is at most tau" in caplog.text and "give a small tau" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffsegmenter.segmenter"):
        low = seg.segment(_image(), classes=["cat", "dog"], seed=0, tau=float(res.scores.max()) / 2)
    assert low.labels.any() and "give a small tau" not in caplog.text


def test_concept_streams_leave_flux_untouched(segmenters):
    from diffsegmenter.joint_attention import capture_concepts

    seg = segmenters["flux"]
    bb = seg.backbone
    assert FAMILY["flux"] == "flux"
    z0 = bb.encode_latents([_image()], 32)
    zt = bb.add_noise(z0, bb.noise_like(z0, 0), 100).to(bb.device, bb.dtype)
    prompt = seg.build_prompts(_image(), ["cat"])[0]
    text = seg.encode_prompt(prompt)[None]
    concepts = torch.randn(1, 3, text.shape[-1])
    with torch.inference_mode():
        plain = bb.denoise(zt, 100, text)
        store = AttentionStore(latent_size=tuple(zt.shape[-2:]))
        with capture_concepts(bb.transformer, store, concepts, [0, 1]):
            captured = bb.denoise(zt, 100, text)
    assert torch.equal(plain, captured)  # nothing attends to the concepts
    assert store.concept_scores.shape == (1, (zt.shape[-2] // 2) * (zt.shape[-1] // 2), 3)
    assert not any(blk._forward_pre_hooks for blk in bb.transformer.transformer_blocks)
    with (
        pytest.raises(ValueError, match="double-stream blocks"),
        capture_concepts(bb.transformer, store, concepts, [5]),
    ):
        pass


# ------------------------------------------------------------------------------------------------ background handling
def _store_of(seg, readout, spec, classes=("cat", "dog")):
    """One captured forward of ``seg``'s backbone with ``readout``'s capture: the store, token groups, content."""
    from diffsegmenter.attention import AttentionStore
    from diffsegmenter.prompts import select_positions

    bb = seg.backbone
    z0 = bb.encode_latents([_image()], seg.resolution)
    zt = bb.add_noise(z0, bb.noise_like(z0, 0), spec.timestep).to(bb.device, bb.dtype)
    prompt = seg.build_prompts(_image(), list(classes))[0]
    text = seg.encode_prompt(prompt)[None]
    groups = [[select_positions(t, e, "mean") for t, e in zip(prompt.class_tokens, prompt.extra_tokens)]]
    content = content_token_mask(bb.tokenizer, prompt.input_ids, keep=[i for t in prompt.class_tokens for i in t])
    store = AttentionStore(latent_size=tuple(zt.shape[-2:]))
    readout.prepare(store)
    with torch.inference_mode(), readout.capture(bb, store, spec, text, groups):
        bb.denoise(zt, spec.timestep, text)
    return store, groups, content[None]


@pytest.mark.parametrize("goca", [RescaledReadout, WeightedReadout])
def test_paper_background_takes_where_from_the_paper(tiny_segmenter, goca):
    seg = tiny_segmenter
    seg.config = seg.config.replace(resolution=32, prompt_mode="single")
    spec = PassSpec(timestep=100, level_weights={2: 0.5, 1: 0.5}, which_weights={2: 1.0, 1: 1.0})
    capturer = WeightedReadout()  # records everything every variant reads
    store, groups, content = _store_of(seg, capturer, spec)
    assert len(groups[0]) == 2
    for r in (goca(background="paper"), goca(background="content")):
        r.sos_first = True
    paper_where, paper_which = PaperReadout().maps(store, groups, content, spec)
    where, which = goca(background="paper").maps(store, groups, content, spec)
    _, content_which = goca(background="content").maps(store, groups, content, spec)
    assert torch.equal(where, paper_where)  # where: the paper's maps, bit for bit
    assert torch.equal(which, content_which) and not torch.allclose(which, paper_which)  # which: GoCA's
    with pytest.raises(ValueError, match="background must be one of"):
        goca(background="sky")


def test_paper_background_decides_which_in_one_pass(tiny_segmenter):
    cfg = SegmenterConfig(readout="rescaled")  # the default background of rescaled: "paper"
    assert RescaledReadout().background == "paper" and WeightedReadout().background == "absorb"
    decision = class_decision(cfg, 512)
    assert type(decision) is SeparateWeightsDecision and decision.class_level_weights == cfg.level_weights
    two = cfg.replace(class_level_weights={8: 1.0}, class_resolution=256)
    assert type(class_decision(two, 512)) is SecondPassDecision  # the config's own decision is kept
    assert type(class_decision(cfg.replace(readout="weighted"), 512)) is PaperDecision
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(FACTORIES, "rescaled", lambda block: RescaledReadout(background="content"))
        assert type(class_decision(cfg, 512)) is PaperDecision
    # end to end: the foreground is the paper read-out's at every tau, only the class may differ
    seg = tiny_segmenter
    seg.config = seg.config.replace(resolution=32, readout="paper")
    paper = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    seg.config = seg.config.replace(readout="rescaled")
    mixed = seg.segment(_image(), classes=["cat", "dog"], seed=0)
    for tau in (0.2, 0.5, 0.8):
        assert np.array_equal(paper.relabel(tau) > 0, mixed.relabel(tau) > 0)
    assert not np.array_equal(paper.scores, mixed.scores)


# ------------------------------------------------------------------------------------------------ weighted on DiTs
@pytest.mark.parametrize(("name", "blocks"), [("sd3", None), ("flux", [0, 1, 2, 3]), ("pixart", None)])
def test_weighted_dit_layer_weights(segmenters, name, blocks):
    seg = DiffSegmenter(
        backbone=segmenters[name].backbone, config=segmenters[name].config.replace(prompt_mode="single")
    )
    model = seg.backbone.transformer
    before = dict(model.attn_processors)
    spec = PassSpec(timestep=100, level_weights={2: 1.0}, attention_blocks=blocks, readout="weighted")
    r = WeightedReadout()
    store, groups, content = _store_of(seg, r, spec)
    assert dict(model.attn_processors) == before  # every wrapper removed
    n = len(blocks) if blocks is not None else seg.backbone.num_blocks()
    names = [nm for nm, _ in store.layer_maps]
    assert len(names) == n and {block_key(nm) for nm in names} <= set(store.layer_agreement)
    assert all(float(a.min()) >= 0 and float(a.max()) <= 1 for a in store.layer_agreement.values())
    where, _ = r.maps(store, groups, content, spec)
    assert where.shape[:2] == (1, 2) and where.min() >= 0 and where.max() <= 1 + 1e-6
    assert store.last_layer_weights.shape == (n, 1) and torch.allclose(store.last_layer_weights.sum(0), torch.ones(1))
    # the plain head average stays in the store: the paper's maps from the same forward
    assert sum(store.cross_count.values()) == n
    uniform = WeightedReadout(layer_mode="uniform").maps(store, groups, content, spec)[0]
    assert not torch.allclose(uniform, where)  # the agreements are not all equal


def test_weighted_joint_head_output_choice_matters(segmenters):
    base = segmenters["sd3"]
    out = {}
    for part in ("joint", "text"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(FACTORIES, "weighted", lambda block, part=part: WeightedReadout(head_output=part))
            seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout="weighted"))
            out[part] = seg.segment(_image(), classes=["cat", "dog"], seed=0).scores
    assert not np.allclose(out["joint"], out["text"])
    with pytest.raises(ValueError, match="'joint' or 'text'"):
        weighted_plan(base.backbone.transformer, {}, part="image")


def test_weighted_plan_measures_pixart_blocks_it_reads(segmenters):
    bb = segmenters["pixart"].backbone
    plan = weighted_plan(bb.transformer, bb.plan([0], [1]))
    kinds = {k: (getattr(v[0], "__name__", None), v[1], v[2]) for k, v in plan.items()}
    assert kinds == {
        "transformer_blocks.0.attn2.processor": ("PixArtWeightedCrossProcessor", True, False),
        "transformer_blocks.0.attn1.processor": ("PixArtAgreementProcessor", False, False),  # agreement only
        "transformer_blocks.1.attn1.processor": ("PixArtAgreementProcessor", False, True),  # completion block
    }


def test_shapes_measurement_replay_matches_plain_segment(tiny_segmenter):
    """research.shapes.readouts computes every variant from one capture and replays it through segment(): the
    results must be those of a plain segment() call per variant."""
    from types import SimpleNamespace

    from research.shapes.readouts import check

    seg = tiny_segmenter
    seg.config = seg.config.replace(resolution=32, prompt_mode="single", class_level_weights={2: 1.0, 1: 0.5})
    scenes = [SimpleNamespace(image=_image(i), classes=c) for i, c in enumerate([["cat", "dog"], ["dog"]])]
    names = ["paper", "rescaled/absorb", "weighted/paper", "weighted/content/softmax-heads"]
    report = check(seg, seg.config, scenes, names)
    assert set(report) == set(names)
    assert all(r["max_abs_score_diff"] == 0.0 and r["label_agreement_tau_0.6"] == 1.0 for r in report.values())
