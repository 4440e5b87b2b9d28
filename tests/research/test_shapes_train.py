"""Shapes-world model components and the training script (CPU, tiny sizes, a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from research.shapes import components as C
from research.shapes import train as T
from research.shapes.captions import VOCABULARY, sample_caption
from research.shapes.world import make_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: more threads only stall


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return C.build_components(tmp_path_factory.mktemp("tok") / "tokenizer", tiny=True)


def test_real_config_sizes_within_limits():
    """The shipped configuration: parameter counts and fp16 sizes, without writing the big files."""
    vae, unet = C.build_vae(), C.build_unet()
    n_vae, n_unet = C.count_parameters(vae), C.count_parameters(unet)
    assert 4_000_000 <= n_unet <= 7_000_000
    assert 2 * n_unet <= 14_000_000  # fp16 UNet file
    n_text = 264 * 256 + 77 * 256 + 4 * (256 * 256 + 256) + 2 * 256 * 1024 + 1024 + 256 + 6 * 256
    total = 2 * (n_vae + n_unet + n_text)
    assert total <= C.MAX_FOLDER_BYTES - 200_000
    assert max(n_vae, n_unet, n_text) * 2 < C.MAX_FILE_BYTES - 100_000
    # cross-attention at three resolutions (32, 16, 8) with at least two heads each
    sizes = {}
    x = torch.zeros(1, 4, 32, 32)
    hooks = []
    for name, mod in unet.named_modules():
        if name.endswith("attn2"):
            assert mod.heads >= 2, name
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: sizes.setdefault(n, i[0].shape[1])))
    with torch.no_grad():
        unet(x, 10, encoder_hidden_states=torch.zeros(1, 77, 256))
    for h in hooks:
        h.remove()
    assert set(sizes.values()) == {32 * 32, 16 * 16, 8 * 8}
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 2


def test_text_encoder_keeps_shape_words_distinct(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(C.build_tokenizer(tmp_path / "tok")))
    te = C.build_text_encoder(tok)
    assert not any(p.requires_grad for p in te.parameters())
    assert te.config.num_hidden_layers == 1 and te.config.hidden_size == 256
    text = "a top left red circle and a bottom right blue square"
    ids = tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h = te(ids).last_hidden_state[0]
    words = tok.convert_ids_to_tokens(ids[0])
    ci, si = words.index("circle</w>"), words.index("square</w>")
    cos = torch.nn.functional.cosine_similarity(h[ci], h[si], dim=0)
    assert cos < 0.5
    again = C.build_text_encoder(tok)
    assert torch.equal(again.get_input_embeddings().weight, te.get_input_embeddings().weight)  # seeded


def test_save_model_folder_round_trip(tiny, tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out = tmp_path / "model"
    size = C.save_model_folder(
        out, tiny["vae"], tiny["unet"], tiny["text_encoder"], tiny["tokenizer_dir"], tiny["scheduler"]
    )
    assert size == C.folder_size(out)[0] and size < C.MAX_FOLDER_BYTES
    assert not list(out.rglob("*.bin")) and len(list(out.rglob("*.safetensors"))) == 3
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert next(tiny["unet"].parameters()).dtype == torch.float32  # the caller's models are untouched
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(out, subfolder="vae")
    te = CLIPTextModel.from_pretrained(out, subfolder="text_encoder", dtype=torch.float32)
    from safetensors import safe_open

    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert all(k.startswith("text_model.") for k in names)  # SD 1.x key layout (transformers 4 and 5)
    tok = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer")
    sched = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.beta_end == 0.012
    ref = tiny["unet"].state_dict()
    for k, v in unet.state_dict().items():
        assert torch.allclose(v.float(), ref[k].half().float()), k
    assert vae.config.latent_channels == 4 and len(tok) == len(tiny["tokenizer"])
    assert torch.allclose(
        te.get_input_embeddings().weight, tiny["text_encoder"].get_input_embeddings().weight.half().float()
    )
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, feature_extractor=None)
    assert pipe.vae_scale_factor == 2
    # replacing an existing model folder works; a foreign non-empty folder is refused
    C.save_model_folder(out, tiny["vae"], tiny["unet"], tiny["text_encoder"], tiny["tokenizer_dir"], tiny["scheduler"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError):
        C.save_model_folder(
            other, tiny["vae"], tiny["unet"], tiny["text_encoder"], tiny["tokenizer_dir"], tiny["scheduler"]
        )


def test_caption_encoder_matches_tokenizer(tiny):
    enc = T.CaptionEncoder(tiny["tokenizer"], VOCABULARY)
    rng = np.random.default_rng(0)
    caps = [sample_caption(make_scene(s), rng) for s in range(30)] + [""]
    ids = enc(caps)
    ref = tiny["tokenizer"](caps, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids.tolist() == ref


def test_batch_stream_is_deterministic_per_step(tiny):
    pool = T.ScenePool(64, 0).start()
    enc = T.CaptionEncoder(tiny["tokenizer"], VOCABULARY)
    s1 = T.BatchStream(pool, 4, 0, "unet", 0, 64, (4, 32, 32), enc)
    s2 = T.BatchStream(pool, 4, 0, "unet", 5, 64, (4, 32, 32), enc)
    it = iter(s1)
    batches = [next(it) for _ in range(7)]
    b5 = next(iter(s2))
    for k in b5:
        assert torch.equal(batches[5][k], b5[k]), k
    assert not torch.equal(batches[4]["noise"], batches[5]["noise"])
    assert batches[0]["images"].shape == (4, 64, 64, 3) and batches[0]["input_ids"].shape == (4, 77)
    assert int(batches[0]["timesteps"].max()) < 1000


def test_lr_factor_schedule():
    assert T.lr_factor(0, 10, 0.0, "cosine", 0.1) == pytest.approx(0.1)
    assert T.lr_factor(20, 10, 0.0, "cosine", 0.1) == pytest.approx(1.0)
    assert T.lr_factor(20, 10, 1.0, "cosine", 0.1) == pytest.approx(0.1)
    assert T.lr_factor(20, 10, 0.7, "constant", 0.1) == pytest.approx(1.0)


def _train_args(out, *extra):
    return [
        "--out",
        str(out),
        "--device",
        "cpu",
        "--tiny",
        "--vae-steps",
        "3",
        "--vae-batch-size",
        "2",
        "--batch-size",
        "2",
        "--pool-size",
        "32",
        "--workers",
        "0",
        "--loader-workers",
        "0",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--threads",
        "1",
        "--probe-scenes",
        "2",
        *extra,
    ]


@pytest.mark.slow
def test_train_tiny_runs_resumes_and_saves(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out = tmp_path / "run"
    assert T.main(_train_args(out, "--unet-steps", "2", "--save-every", "2")) == 0
    assert (out / "model" / "model_index.json").is_file() and (out / "ckpt-2" / "unet").is_dir()
    assert (out / "state.pt").is_file() and (out / "train_config.json").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    probe = next(r for r in records if r["event"] == "binding")  # the binding probe ran at the checkpoint
    assert probe["step"] == 2 and probe["scenes"] == 2
    levels = [k for k in probe if k.startswith("level_")]
    assert levels and all(0.0 <= probe[k] <= 1.0 for k in [*levels, "all_levels", "chance"])
    events = [r["event"] for r in records]
    assert events.count("vae") == 3 and events.count("unet") == 2 and events[-1] == "done"
    vae_done = next(r for r in records if r["event"] == "vae_done")
    vae = AutoencoderKL.from_pretrained(out / "model", subfolder="vae")
    assert vae.config.scaling_factor == pytest.approx(vae_done["scaling_factor"], rel=1e-6)
    # StableDiffusionPipeline samples it (the model card's pictures): one row per prompt, image j from seed + j
    rows = T.sample_images(out / "model", ["a red circle"], per_prompt=2, steps=2)
    assert len(rows) == 1 and all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in rows[0])
    alone = T.sample_images(out / "model", ["a red circle"], per_prompt=1, steps=2, seed=1)[0][0]
    # equal up to one level of rounding: batched and single float maths may differ in the last bit (torch 2.5)
    assert np.abs(alone.astype(np.int16) - rows[0][1].astype(np.int16)).max() <= 1
    # resume: continues at step 2, runs 2 more steps, no further VAE steps
    assert T.main(_train_args(out, "--unet-steps", "4", "--save-every", "2", "--resume")) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    resume = [r for r in records if r["event"] == "resume"][-1]
    assert resume["found"] and resume["unet_step"] == 2 and resume["phase"] == "unet"
    unet_steps = [r["step"] for r in records if r["event"] == "unet"]
    assert unet_steps == [1, 2, 3, 4] and [r["event"] for r in records].count("vae") == 3
    assert (out / "ckpt-4").is_dir()
    state = torch.load(out / "state.pt", weights_only=False)
    assert state["unet_step"] == 4
    unet = UNet2DConditionModel.from_pretrained(out / "model", subfolder="unet")
    ema = state["ema_unet"]
    for k, v in unet.state_dict().items():
        assert torch.allclose(v.float(), ema[k].half().float()), k  # the EMA weights are what is saved


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.main(_train_args(a, "--unet-steps", "2", "--save-every", "0")) == 0
    assert T.main(_train_args(b, "--unet-steps", "1", "--save-every", "0")) == 0
    assert T.main(_train_args(b, "--unet-steps", "2", "--save-every", "0", "--resume")) == 0
    sa = torch.load(a / "state.pt", weights_only=False)
    sb = torch.load(b / "state.pt", weights_only=False)
    for k, v in sa["unet"].items():
        assert torch.allclose(v, sb["unet"][k], atol=1e-6), k


@pytest.mark.slow
def test_init_from_starts_a_new_leg_from_a_model_folder(tmp_path, capsys):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    first, second = tmp_path / "first", tmp_path / "second"
    assert T.main(_train_args(first, "--unet-steps", "2", "--save-every", "0")) == 0
    model = first / "model"
    assert T.main(_train_args(second, "--unet-steps", "1", "--save-every", "0", "--init-from", str(model))) == 0
    records = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert "vae" not in events and "vae_done" not in events  # phase 1 skipped
    init = next(r for r in records if r["event"] == "init_from")
    vae_a = AutoencoderKL.from_pretrained(model, subfolder="vae")
    vae_b = AutoencoderKL.from_pretrained(second / "model", subfolder="vae")
    assert init["scaling_factor"] == pytest.approx(vae_a.config.scaling_factor, rel=1e-3)
    assert vae_b.config.scaling_factor == pytest.approx(vae_a.config.scaling_factor, rel=1e-3)
    for k, v in vae_a.state_dict().items():
        assert torch.equal(v, vae_b.state_dict()[k]), k  # the VAE is carried over untouched
    # the UNet starts from the folder's weights: after one step at lr 5e-4 it is close to them, unlike a fresh init
    unet_a = UNet2DConditionModel.from_pretrained(model, subfolder="unet").state_dict()
    state = torch.load(second / "state.pt", weights_only=False)
    key = next(k for k in unet_a if k.endswith("conv_in.weight"))
    start = unet_a[key].float()
    assert (state["unet"][key].float() - start).abs().max() < 5e-3
    fresh = torch.load(first / "state.pt", weights_only=False)  # sanity: a different start would be far
    assert state["unet_step"] == 1 and fresh["unet_step"] == 2
    # profiling a leg times the UNet only: the folder's VAE is frozen and phase 1 never runs
    capsys.readouterr()
    assert T.main(_train_args(tmp_path / "profile", "--profile-steps", "1", "--init-from", str(model))) == 0
    out = capsys.readouterr().out
    assert "unet_steps_per_s" in out and "vae_steps_per_s" not in out


def test_init_from_a_missing_folder_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        T.main(_train_args(tmp_path / "run", "--unet-steps", "1", "--init-from", str(tmp_path / "nowhere")))


def test_profile_mode_writes_nothing(tmp_path, capsys):
    args = [
        "--profile-steps",
        "1",
        "--device",
        "cpu",
        "--tiny",
        "--vae-batch-size",
        "2",
        "--batch-size",
        "2",
        "--threads",
        "1",
    ]
    assert T.main([*args, "--pool-size", "16", "--loader-workers", "0", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "unet_steps_per_s" in out and "vae_steps_per_s" in out


@pytest.mark.slow
def test_sample_grid_from_a_tiny_model(tiny, tmp_path):
    model = tmp_path / "model"
    C.save_model_folder(
        model, tiny["vae"], tiny["unet"], tiny["text_encoder"], tiny["tokenizer_dir"], tiny["scheduler"]
    )
    png = T.sample_grid(model, ["a red circle", "a blue square"], tmp_path / "grid.png", steps=2, per_prompt=2)
    from PIL import Image

    im = Image.open(png)
    assert im.size[1] == 2 * (128 + 4)


# ------------------------------------------------------------------------------------ recipe levers (issue 17)
def test_unet_size_flags_override_the_config_per_level():
    cfg = T.TrainConfig(unet_channels="64,128,160", unet_heads="2,4,5", unet_layers_per_block=2)
    assert cfg.unet_overrides() == {
        "block_out_channels": (64, 128, 160),
        "attention_head_dim": (2, 4, 5),
        "layers_per_block": 2,
    }
    assert T.TrainConfig().unet_overrides() == {}
    with pytest.raises(ValueError, match="one value per level"):
        T.TrainConfig(device="cpu", unet_heads="4,4").resolve()
    with pytest.raises(ValueError, match="probabilities"):
        T.TrainConfig(device="cpu", p_drop_position=1.5).resolve()


def test_grounding_captions_keep_every_position_word(tiny):
    from research.shapes.captions import POSITION_WORDS

    pool = T.ScenePool(64, 0).start()
    enc = T.CaptionEncoder(tiny["tokenizer"], VOCABULARY)
    inverse = {v: k for k, v in enc.ids.items()}

    def phrases(stream):
        out = []
        for step in range(6):
            for row in stream.make(step)["input_ids"].tolist():
                words = [inverse[i] for i in row if i in inverse]
                out += [p.split() for p in " ".join(words).split(" and ") if p]
        return out

    grounded = T.BatchStream(pool, 8, 0, "unet", 0, 64, (4, 32, 32), enc, caption_kwargs={"p_drop_position": 0.0})
    default = T.BatchStream(pool, 8, 0, "unet", 0, 64, (4, 32, 32), enc)
    with_position = [any(w in POSITION_WORDS for w in p) for p in phrases(grounded)]
    assert len(with_position) > 40 and all(with_position)
    assert not all(any(w in POSITION_WORDS for w in p) for p in phrases(default))  # 30% dropped by default


@pytest.mark.slow
def test_levers_reach_the_model_and_the_best_probe_is_kept(tmp_path):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "run"
    args = _train_args(out, "--unet-steps", "2", "--save-every", "1", "--keep-best", "all_levels")
    assert T.main([*args, "--unet-heads", "2,4,4", "--p-drop-position", "0"]) == 0
    unet = UNet2DConditionModel.from_pretrained(out / "model", subfolder="unet")
    assert list(unet.config.attention_head_dim) == [2, 4, 4]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    probes = {r["step"]: r["all_levels"] for r in records if r["event"] == "binding"}
    best = json.loads((out / "best.json").read_text())
    assert set(probes) == {1, 2} and best["value"] == max(probes.values()) and best["metric"] == "all_levels"
    assert probes[best["step"]] == best["value"] and (out / "best" / "unet").is_dir()
    with pytest.raises(ValueError, match="binding probe reports"):
        T.main([*_train_args(tmp_path / "bad", "--unet-steps", "1", "--save-every", "1", "--keep-best", "level_99")])
