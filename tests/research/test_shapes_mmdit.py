"""The joint-attention (SD3-class) shapes model: components, text encoding, folder layout and a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from research.shapes import components as C
from research.shapes import mmdit as M
from research.shapes import train_mmdit as TM
from research.shapes.world import make_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from transformers import CLIPTokenizer

    tok_dir = C.build_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    te1, te2 = M.build_text_encoders(tok, tiny=True)
    return {"tokenizer": tok, "tokenizer_dir": tok_dir, "te1": te1, "te2": te2}


@pytest.mark.slow
def test_real_config_fits_the_size_limits():
    transformer = M.build_transformer()
    n = C.count_parameters(transformer)
    assert 4_000_000 <= n <= 7_500_000
    assert 2 * n < C.MAX_FILE_BYTES - 1_000_000  # fp16 file, with room for the positional table
    cfg = transformer.config
    assert cfg.joint_attention_dim == 2 * M.TEXT_ENCODER_CONFIG["hidden_size"]
    assert cfg.pooled_projection_dim == 2 * M.TEXT_ENCODER_CONFIG["projection_dim"]
    assert cfg.sample_size * 2 // cfg.patch_size == 32  # a 16x16 token grid on the 64x64 images


def test_text_encoders_are_frozen_distinct_and_keep_shape_words_apart(parts):
    te1, te2, tok = parts["te1"], parts["te2"], parts["tokenizer"]
    assert not any(p.requires_grad for p in [*te1.parameters(), *te2.parameters()])
    assert not torch.equal(te1.get_input_embeddings().weight, te2.get_input_embeddings().weight)
    ids = tok("a red circle and a blue square", padding="max_length", max_length=77, return_tensors="pt").input_ids
    states, pooled = M.encode_text(te1, te2, ids, joint_attention_dim=48)
    assert states.shape == (1, 77 + M.T5_LENGTH, 48) and pooled.shape == (1, 32)
    assert torch.count_nonzero(states[0, 77:]) == 0 and torch.count_nonzero(states[0, :, 32:]) == 0
    words = tok.convert_ids_to_tokens(ids[0])
    ci, si = words.index("circle</w>"), words.index("square</w>")
    cos = torch.nn.functional.cosine_similarity(states[0, ci, :32], states[0, si, :32], dim=0)
    assert cos < 0.5


def test_sigmas_are_logit_normal_quantiles():
    t = torch.arange(1000)
    s = TM.sigmas_from_timesteps(t, 0.0, 1.0)
    assert torch.all(s > 0) and torch.all(s < 1) and torch.all(s[1:] > s[:-1])
    assert s[499:501].mean() == pytest.approx(0.5, abs=1e-3)  # the median of a logit-normal(0, 1) is 1/2
    shifted = TM.sigmas_from_timesteps(t, 1.0, 1.0)
    assert torch.all(shifted > s)


def test_folder_is_the_pipelines_layout_and_encodes_as_the_pipeline_and_backbone(parts, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from diffsegmenter import DiffSegmenter

    vae = M.load_vae("shapes", -2.0, 0.5)
    transformer = M.build_transformer(tiny=True)
    out = tmp_path / "model"
    M.save_model_folder(
        out,
        vae,
        transformer,
        parts["te1"],
        parts["te2"],
        parts["tokenizer"],
        M.build_scheduler(),
        extra_files={"segmenter_config.json": M.dumps(M.segmenter_settings(2, "test"))},
        tokenizer_dir=parts["tokenizer_dir"],
    )
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    weights = list(out.rglob("*.safetensors"))
    assert len(weights) == 4 and not list(out.rglob("*.bin"))
    from safetensors import safe_open

    with safe_open(str(out / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}  # noqa: SIM118 (safe_open)
    assert (out / "tokenizer_2" / "vocab.json").is_file()  # for transformers 4.x too
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None, dtype=torch.float32)
    assert pipe.vae.config.shift_factor == pytest.approx(-2.0) and pipe.vae.config.scaling_factor == 0.5
    prompt = "a top left red circle and a cross"
    pe, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    mine, mine_pooled = M.encode_text(pipe.text_encoder, pipe.text_encoder_2, ids, 32)
    assert torch.equal(pe, mine) and torch.equal(pooled, mine_pooled)  # what training feeds is what sampling feeds
    seg = DiffSegmenter.from_pretrained(out)
    assert type(seg.backbone).__name__ == "StableDiffusion3Backbone" and seg.native_resolution == 64
    emb = seg.backbone.encode_ids(ids[0].tolist())
    assert torch.allclose(emb[:-1], mine[0]) and torch.allclose(emb[-1, :32], mine_pooled[0])
    res = seg.segment(make_scene(3).image)  # the folder's classes and settings
    assert res.classes == ["circle", "square", "triangle", "cross"] and res.labels.shape == (64, 64)


def _args(out, *extra):
    return [
        "--out", str(out), "--device", "cpu", "--tiny", "--batch-size", "2", "--pool-size", "32", "--workers", "0",
        "--loader-workers", "0", "--log-every", "1", "--warmup-steps", "2", "--threads", "1", "--probe-scenes", "2",
        "--latent-stats-scenes", "16", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_tiny_run_writes_a_folder_that_loads_and_segments_and_resumes(tmp_path):
    from diffsegmenter import DiffSegmenter

    out = tmp_path / "run"
    assert TM.main(_args(out, "--unet-steps", "2", "--save-every", "2", "--keep-best", "all_blocks")) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events.count("transformer") == 2 and events[-1] == "done" and "vae" not in events
    probe = next(r for r in records if r["event"] == "binding")
    blocks = [k for k in probe if k.startswith("block_")]
    assert blocks == ["block_0", "block_1"] and all(0 <= probe[k] <= 1 for k in [*blocks, "all_blocks", "chance"])
    assert json.loads((out / "best.json").read_text())["step"] == 2 and (out / "best" / "transformer").is_dir()
    latents = next(r for r in records if r["event"] == "latents")
    seg = DiffSegmenter.from_pretrained(out / "model")
    assert seg.backbone.vae.config.shift_factor == pytest.approx(latents["shift_factor"], rel=1e-5)
    res = seg.segment(make_scene(7).image, classes=["circle", "square"])
    assert res.scores.shape == (2, 64, 64) and np.isfinite(res.scores).all()
    saved = json.loads((out / "model" / "segmenter_config.json").read_text())
    assert saved["attention_blocks"] == [0, 1] and saved["_classes"][0] == "circle"
    # StableDiffusion3Pipeline samples it (the model card's pictures): seeded per image, the same seeds the same images
    rows = TM.sample_images(out / "model", ["a red circle", "a blue square"], per_prompt=2, steps=2)
    assert [len(r) for r in rows] == [2, 2] and all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in rows[0])
    again = TM.sample_images(out / "model", ["a red circle"], per_prompt=2, steps=2)
    assert np.array_equal(again[0][1], rows[0][1]) and not np.array_equal(rows[0][0], rows[0][1])
    # resume continues from the saved step with the same latent statistics
    assert TM.main(_args(out, "--unet-steps", "3", "--save-every", "0", "--resume")) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "transformer"] == [1, 2, 3]
    assert [r["event"] for r in records].count("latents") == 1
    state = torch.load(out / "state.pt", weights_only=False)
    assert state["step"] == 3 and state["latent_mean"] == pytest.approx(latents["shift_factor"])
    # the transformer tuner chooses on val, writes a config the folder loads with, and reads test once
    from research.shapes import tune_dit

    tuned = tmp_path / "tune"
    assert tune_dit.main(["--model", str(out / "model"), "--out", str(tuned), "--val", "2", "--test", "1"]) == 0
    report = json.loads((tuned / "tuning.json").read_text())
    assert len(report["search"]) == len(tune_dit.TIMESTEPS) * 9 and report["test_scenes"] == 1
    assert len(report["input_sizes"]) == 2 * len(tune_dit.SIZES)
    assert list(report["readouts"]) == ["paper", "rescaled", "weighted", "single-block"]
    assert "class_resolution" not in report["readouts"]["single-block"]["settings"]
    assert report["readouts"]["single-block"]["settings"]["tau"] in tune_dit.RAW_TAUS  # raw probabilities' sweep
    assert report["readouts"]["single-block"]["settings"]["readout_block"] in (0, 1)
    assert set(report["test_by_readout"]) == set(report["readouts"])
    best_val = max(r["val"]["mIoU"] for r in report["readouts"].values())
    assert report["chosen"]["val"]["mIoU"] == best_val
    chosen = json.loads((tuned / "segmenter_config.json").read_text())
    assert chosen["tau"] == report["chosen"]["settings"]["tau"] and "val" in chosen["_provenance"]
    seg = DiffSegmenter.from_pretrained(out / "model", config=None)
    seg.config = seg.config.replace(**{k: v for k, v in chosen.items() if not k.startswith("_")})
    assert seg.segment(make_scene(8).image, classes=["cross"]).classes == ["cross"]


def _tiny_trainer_and_batch(tmp_path, **config):
    """A set-up tiny trainer (``MMDiTConfig`` entries ``config``) and one batch of 8 training scenes."""
    cfg = TM.MMDiTConfig(out=str(tmp_path), device="cpu", tiny=True, threads=1, pool_size=8, workers=0, **config)
    trainer = TM.MMDiTTrainer(cfg)
    trainer.setup()
    pool = TM.T.ScenePool(8, 0).start()
    trainer.measure_latents(pool)
    stream = TM.T.BatchStream(pool, 8, 0, "unet", 0, 8, trainer.latent_shape, trainer.encoder)
    return trainer, TM.T._to_model_inputs(stream.make(0), trainer.device)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    """A few optimiser steps on one batch must lower the flow-matching loss (the step function trains)."""
    trainer, batch = _tiny_trainer_and_batch(tmp_path)
    losses = [float(trainer.unet_step_fn(batch, 3e-3)["loss"]) for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0]


def test_unet_flags_are_refused():
    with pytest.raises(ValueError, match="UNet model only"):
        TM.MMDiTConfig(device="cpu", unet_heads="4,4,4").resolve()
    with pytest.raises(ValueError, match="--resume"):
        TM.MMDiTConfig(device="cpu", init_from="somewhere").resolve()


def test_one_collapsed_zero_token_trains_as_the_pipelines_256(parts):
    """The training copy's one zero token with a log(256) key bias gives the transformer's output and weight
    gradients on 77 + 256 tokens (diffusers' own processors), so the shortcut changes nothing that is learned."""
    ids = parts["tokenizer"](
        ["a red circle and a blue square", "a green cross"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    reference = M.build_transformer(tiny=True, seed=3)
    collapsed = M.build_transformer(tiny=True, seed=3)
    M.collapse_zero_tokens(collapsed, M.T5_LENGTH)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    timestep = torch.tensor([100.0, 700.0])
    outs, grads = [], []
    for model, t5 in ((reference, M.T5_LENGTH), (collapsed, 1)):
        states, pooled = M.encode_text(parts["te1"], parts["te2"], ids, model.config.joint_attention_dim, t5)
        out = model(
            hidden_states=x, timestep=timestep, encoder_hidden_states=states, pooled_projections=pooled,
            return_dict=False,
        )[0]  # fmt: skip
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert grads[0].shape == grads[1].shape and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    # without the bias (one plain zero token) the output differs: the test can tell
    plain = M.build_transformer(tiny=True, seed=3)
    states, pooled = M.encode_text(parts["te1"], parts["te2"], ids, plain.config.joint_attention_dim, 1)
    out = plain(hidden_states=x, timestep=timestep, encoder_hidden_states=states, pooled_projections=pooled).sample
    assert not torch.allclose(out, outs[0], atol=1e-4)


def test_cached_latents_are_the_encoded_batch_and_size_flags_reach_the_transformer(tmp_path):
    cfg = TM.MMDiTConfig(
        out=str(tmp_path), device="cpu", tiny=True, threads=1, pool_size=8, workers=0, dit_layers=3, dit_heads=3,
        dit_patch_size=4,
    )  # fmt: skip
    trainer = TM.MMDiTTrainer(cfg.resolve())
    trainer.setup()
    tc = trainer.unet.config
    assert (tc.num_layers, tc.num_attention_heads, tc.patch_size) == (3, 3, 4)
    assert tc.caption_projection_dim == 3 * tc.attention_head_dim
    pool = TM.T.ScenePool(8, 0).start()
    trainer.measure_latents(pool)
    trainer.cache_latents(pool)
    stream = TM.T.BatchStream(pool, 4, 0, "unet", 0, 8, trainer.latent_shape, trainer.encoder)
    batch = TM.T._to_model_inputs(stream.make(5), trainer.device)
    mean, std = (c[batch["index"]] for c in trainer.latent_cache)
    with torch.no_grad():
        encoded = TM.T._encode_latents(trainer.vae, batch["images"], batch["latent_noise"], "sample")
    assert torch.allclose(mean + std * batch["latent_noise"], encoded, atol=1e-5)
    with pytest.raises(ValueError, match="patch_size"):
        TM.MMDiTConfig(device="cpu", dit_patch_size=3).resolve()


def test_no_pooled_trains_a_transformer_blind_to_the_pooled_projections(parts, tmp_path):
    """--no-pooled: the output does not depend on pooled_projections (the caption can reach the image only through
    joint attention), and training steps keep it so, in the model and its EMA copy; a plain transformer does."""
    plain = M.build_transformer(tiny=True, seed=1)
    silenced = M.build_transformer(tiny=True, seed=1)
    M.silence_pooled_projections(silenced)
    gen = torch.Generator().manual_seed(0)
    x, timestep = torch.randn(1, 4, 32, 32, generator=gen), torch.tensor([300.0])
    states = torch.randn(1, 78, plain.config.joint_attention_dim, generator=gen)
    pooled = [torch.randn(1, plain.config.pooled_projection_dim, generator=gen) for _ in range(2)]

    def outputs(model):
        return [model(hidden_states=x, timestep=timestep, encoder_hidden_states=states, pooled_projections=p).sample
                for p in pooled]  # fmt: skip

    with torch.no_grad():
        a, b = outputs(plain)
        assert not torch.allclose(a, b, atol=1e-4)  # the pooled input matters to a plain transformer
        a, b = outputs(silenced)
        assert torch.equal(a, b)
    trainer, batch = _tiny_trainer_and_batch(tmp_path, pooled=False)
    for _ in range(3):
        trainer.unet_step_fn(batch, 3e-3)
        trainer.unet_step += 1
    for model in (trainer.unet, trainer.ema_unet):
        last = model.time_text_embed.text_embedder.linear_2
        assert not last.weight.any() and not last.bias.any()
    assert TM.build_parser().parse_args(["--no-pooled"]).pooled is False


def test_one_layer_text_encoders_give_states_that_carry_only_their_own_word(parts):
    """--text-layers 1: the pipeline's states (penultimate hidden states) are the word and position embeddings, so a
    token's state does not depend on the other words and the padding carries no caption; with 2 layers it does."""
    tok = parts["tokenizer"]
    ids = tok(["a red circle", "a blue circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    circle = ids[0].tolist().index(tok.convert_tokens_to_ids(tok.tokenize("circle"))[0])
    for layers, independent in ((1, True), (None, False)):
        te1, te2 = M.build_text_encoders(tok, tiny=True, num_layers=layers)
        states, _ = M.encode_text(te1, te2, ids, 32, t5_length=1)
        same_word = torch.allclose(states[0, circle], states[1, circle])
        same_padding = torch.allclose(states[0, circle + 2 :], states[1, circle + 2 :])
        assert same_word == independent and same_padding == independent
    with pytest.raises(ValueError, match="num_layers"):
        M.build_text_encoders(tok, tiny=True, num_layers=0)


def test_sink_bias_lowers_only_the_wordless_context_keys(parts):
    """``sink_bias``: -strength after each caption's first end token and on the T5 slot, 0 on its words."""
    tok = parts["tokenizer"]
    ids = tok(["a red circle", "a green cross and a square"], padding="max_length", max_length=77,
              return_tensors="pt").input_ids  # fmt: skip
    bias = M.sink_bias(ids, tok.eos_token_id, t5_length=2, strength=3.0)
    assert bias.shape == (2, 79)
    for row, text in enumerate(["a red circle", "a green cross and a square"]):
        words = len(tok(text).input_ids)  # start, words, end
        assert torch.equal(bias[row, :words], torch.zeros(words))
        assert torch.equal(bias[row, words:], torch.full((79 - words,), -3.0))
    with pytest.raises(ValueError, match="strength"):
        M.sink_bias(ids, tok.eos_token_id, 1, -1.0)


def test_sink_bias_that_masks_the_wordless_keys_equals_dropping_them(parts):
    """With a very low bias on the padding and the collapsed T5 token, the training copy computes the image output
    of diffusers' own processors on the caption's tokens alone: the bias reaches every block's joint attention
    through ``joint_attention_kwargs``; with a zero bias it is the plain collapsed output."""
    tok = parts["tokenizer"]
    ids = tok(["a red circle and a blue square"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    words = len(tok("a red circle and a blue square").input_ids)
    reference = M.build_transformer(tiny=True, seed=5)
    collapsed = M.build_transformer(tiny=True, seed=5)
    M.collapse_zero_tokens(collapsed, M.T5_LENGTH)
    states, pooled = M.encode_text(parts["te1"], parts["te2"], ids, reference.config.joint_attention_dim, 1)
    gen = torch.Generator().manual_seed(0)
    x, timestep = torch.randn(1, 4, 32, 32, generator=gen), torch.tensor([400.0])
    with torch.no_grad():
        want = reference(hidden_states=x, timestep=timestep, encoder_hidden_states=states[:, :words],
                         pooled_projections=pooled).sample  # fmt: skip
        masked = collapsed(hidden_states=x, timestep=timestep, encoder_hidden_states=states, pooled_projections=pooled,
                           joint_attention_kwargs={"context_bias": M.sink_bias(ids, tok.eos_token_id, 1, 1e4)}).sample  # fmt: skip
        zero = collapsed(hidden_states=x, timestep=timestep, encoder_hidden_states=states, pooled_projections=pooled,
                         joint_attention_kwargs={"context_bias": M.sink_bias(ids, tok.eos_token_id, 1, 0.0)}).sample  # fmt: skip
        plain = collapsed(hidden_states=x, timestep=timestep, encoder_hidden_states=states,
                          pooled_projections=pooled).sample  # fmt: skip
    assert torch.allclose(masked, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-4)
    assert torch.equal(zero, plain)


def test_sink_anneal_changes_the_step_only_while_it_lasts(tmp_path):
    """``--sink-anneal-steps``: the bias falls linearly to 0; a step inside the anneal trains on a different loss
    than a plain step, and a step after it on the same loss."""
    assert TM.sink_anneal_strength(0, 100, 10.0) == 10.0
    assert TM.sink_anneal_strength(75, 100, 10.0) == pytest.approx(2.5)
    assert TM.sink_anneal_strength(100, 100, 10.0) == 0.0 and TM.sink_anneal_strength(5, 0, 10.0) == 0.0
    losses = {}
    for anneal, step in ((0, 0), (50, 0), (50, 50)):
        trainer, batch = _tiny_trainer_and_batch(tmp_path / f"{anneal}-{step}", sink_anneal_steps=anneal)
        trainer.unet_step = step
        losses[anneal, step] = float(trainer.unet_step_fn(batch, 0.0)["loss"])
    assert losses[50, 0] != pytest.approx(losses[0, 0], rel=1e-4)
    assert losses[50, 50] == pytest.approx(losses[0, 0], rel=1e-6)
    with pytest.raises(ValueError, match="no-collapse-t5"):
        TM.MMDiTConfig(device="cpu", sink_anneal_steps=10, collapse_t5=False).resolve()
    assert TM.build_parser().parse_args(["--sink-anneal-steps", "7"]).sink_anneal_steps == 7
