"""Train the joint-attention (MM-DiT, SD3-class) shapes-world model (issue 17), pure flow-matching denoising.

The model's parts are in :mod:`.mmdit`; the loop, data and checkpoints are :mod:`.train`'s (one phase: the VAE is
the shipped model's, frozen). Per step: captions as the UNet model's (``captions.sample_caption``), the two frozen
CLIP encoders' states as ``StableDiffusion3Pipeline`` builds them (256 zero tokens in T5's place), latents centred
and scaled by the VAE config's ``shift_factor`` / ``scaling_factor`` (measured on training scenes at the start),
``s`` logit-normal (``--logit-mean``, ``--logit-std``; SD3's default 0, 1), ``x_s = (1 - s) z + s eps`` and an MSE
on the velocity ``eps - z`` predicted at timestep ``1000 s``. At each checkpoint ``log.jsonl`` gets a ``binding``
record per block (``quality.binding_probe`` through the package's SD3 backbone). Folders are written with
``StableDiffusion3Pipeline.save_pretrained`` (fp16 safetensors) and load with ``DiffSegmenter.from_pretrained``.

Run from the repository root::

    python -m research.shapes.train_mmdit --out runs/mmdit --device cuda --time-budget-s 300 --keep-best all_blocks
    python -m research.shapes.train_mmdit --out runs/dit-cpu --device cpu --time-budget-s 5700 --batch-size 32 \
        --dit-layers 4 --dit-heads 4 --workers 0 --loader-workers 0 --threads 2 --save-every 1000 --probe-scenes 32 \
        --keep-best all_blocks
    python -m research.shapes.train_mmdit --profile-steps 20 --device cuda

The flags are :mod:`.train`'s (``--vae-*`` and ``--unet-*`` do not apply: phase 1 is skipped), plus ``--vae-from``
(the folder whose VAE is reused; default the shipped ``shapes``), ``--logit-mean``, ``--logit-std`` and the
transformer's size (``--dit-layers``, ``--dit-heads``, ``--dit-patch-size``).

``--sink-anneal-steps`` lowers the wordless context keys early in training (:func:`.mmdit.sink_bias`; tried on the
CPU, not adopted: ``runs/mmdit_cpu_sink/``).

Two shortcuts change nothing that is learned and are on by default: the training copy of the transformer sees one
T5 zero token standing for the pipeline's 256 (:class:`.mmdit.CollapsedZeroTokensProcessor`: same loss and gradients,
about 2x faster), and the pool's latents are encoded once (the VAE is frozen). ``--no-collapse-t5`` and
``--no-cache-latents`` turn them off.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import components as C
from . import mmdit as M
from . import train as T


@dataclass
class MMDiTConfig(T.TrainConfig):
    """:class:`~.train.TrainConfig` plus the MM-DiT's own settings."""

    lr: float = 3e-4
    vae_from: str = "shapes"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    latent_stats_scenes: int | None = None
    # transformer size (None: mmdit.TRANSFORMER_CONFIG's) and two exact speed-ups (same loss and gradients)
    dit_layers: int | None = None
    dit_heads: int | None = None
    dit_patch_size: int | None = None
    collapse_t5: bool = True
    cache_latents: bool = True
    # False: the transformer ignores the pooled CLIP projections (mmdit.silence_pooled_projections)
    pooled: bool = True
    # layers of each CLIP text encoder (None: mmdit.TEXT_ENCODER_CONFIG's 2; 1: the states are the word embeddings)
    text_layers: int | None = None
    # > 0: for the first that many steps the training copy's queries see the wordless context keys (padding,
    # T5 zeros) lowered by a bias that rises linearly from -sink_strength to 0 (mmdit.sink_bias); 0: off
    sink_anneal_steps: int = 0
    sink_strength: float = 10.0

    def transformer_overrides(self) -> dict[str, Any]:
        """``TRANSFORMER_CONFIG`` entries the size flags replace (validated)."""
        return M.transformer_overrides(self.dit_layers, self.dit_heads, self.dit_patch_size, tiny=self.tiny)

    def resolve(self) -> MMDiTConfig:
        cfg = super().resolve()
        if cfg.unet_overrides():
            raise ValueError("--unet-channels/--unet-heads/--unet-layers-per-block apply to the UNet model only")
        if cfg.init_from is not None:
            raise ValueError("--init-from applies to the UNet model; continue an MM-DiT run with --resume")
        if cfg.latent_stats_scenes is None:
            cfg.latent_stats_scenes = 4096 if cfg.device.startswith("cuda") else 512
        if cfg.logit_std <= 0:
            raise ValueError(f"--logit-std must be > 0, got {cfg.logit_std}")
        cfg.transformer_overrides()  # validates the size flags
        if cfg.sink_anneal_steps < 0 or cfg.sink_strength < 0:
            raise ValueError("--sink-anneal-steps and --sink-strength must be >= 0")
        if cfg.sink_anneal_steps and not cfg.collapse_t5:
            raise ValueError("--sink-anneal-steps needs the collapsed T5 token's processor: drop --no-collapse-t5")
        return cfg


def sink_anneal_strength(step: int, anneal_steps: int, strength: float) -> float:
    """The wordless keys' logit lowering at ``step``: ``strength * (1 - step / anneal_steps)``, 0 from
    ``anneal_steps`` on (and always when ``anneal_steps`` is 0)."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return 0.0
    return float(strength) * (1.0 - step / anneal_steps)


def sigmas_from_timesteps(timesteps: torch.Tensor, mean: float, std: float, num: int = 1000) -> torch.Tensor:
    """Logit-normal noise levels from the batch's uniform integer timesteps (inverse-CDF sampling on ``num`` levels).

    Args:
        timesteps (`torch.Tensor`): (B,) int64 in [0, num).
        mean (`float`), std (`float`): of the normal whose sigmoid is the noise level.

    Returns:
        `torch.Tensor`: (B,) float32 noise levels in (0, 1); ``s = sigmoid(mean + std * Phi^-1((t + 0.5) / num))``.
    """
    u = (timesteps.float() + 0.5) / num
    return torch.sigmoid(mean + std * torch.special.ndtri(u))


class MMDiTTrainer(T.Trainer):
    """:class:`~.train.Trainer` with an ``SD3Transformer2DModel`` as the denoiser (``self.unet`` in the shared loop)
    and two frozen CLIP encoders; no VAE phase."""

    denoiser_event = "transformer"

    def __init__(self, cfg: MMDiTConfig) -> None:
        super().__init__(cfg)
        self.phase = "unet"

    def setup(self) -> None:
        from transformers import CLIPTokenizer

        from diffsegmenter.loading import resolve_model

        from .captions import VOCABULARY

        cfg = self.cfg
        tok_dir = (self.out / "tokenizer") if self.out is not None else Path(T._tempdir()) / "tokenizer"
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer_dir = C.build_tokenizer(tok_dir)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(self.tokenizer_dir))
        self.text_encoder, self.text_encoder_2 = M.build_text_encoders(
            self.tokenizer,
            seed=cfg.seed,
            tiny=cfg.tiny,
            token_embedding_std=cfg.token_embedding_std,
            num_layers=cfg.text_layers,
        )
        self.text_encoder.to(self.device)
        self.text_encoder_2.to(self.device)
        self.vae_source = resolve_model(cfg.vae_from)
        self.vae = M.load_vae(self.vae_source, 0.0, 1.0).to(self.device)  # shift and scale: measure_latents
        transformer = M.build_transformer(seed=cfg.seed, tiny=cfg.tiny, **cfg.transformer_overrides())
        if not cfg.pooled:
            M.silence_pooled_projections(transformer)
        if transformer.config.joint_attention_dim < 2 * self.text_encoder.config.hidden_size:
            raise ValueError("the transformer's joint_attention_dim must hold both CLIP encoders' states")
        self.unet = transformer.to(self.device)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)  # keeps diffusers' processors (it is saved)
        self.t5_length = 1 if cfg.collapse_t5 else M.T5_LENGTH
        if cfg.collapse_t5:
            M.collapse_zero_tokens(self.unet, M.T5_LENGTH)
        self.latent_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sample_scheduler = M.build_scheduler()
        self.noise_scheduler = self.sample_scheduler  # the batch stream reads num_train_timesteps from it
        self.encoder = T.CaptionEncoder(self.tokenizer, VOCABULARY)
        self.unet_opt = torch.optim.AdamW(
            [p for p in self.unet.parameters() if p.requires_grad],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=(0.9, 0.999),
        )
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (int(self.vae.config.latent_channels), T.IMAGE_SIZE // down, T.IMAGE_SIZE // down)
        self.unet_fwd = torch.compile(self.unet) if cfg.compile else self.unet
        params = {
            "transformer": C.count_parameters(self.unet),
            "text_encoder": C.count_parameters(self.text_encoder),
            "text_encoder_2": C.count_parameters(self.text_encoder_2),
            "vae": C.count_parameters(self.vae),
        }
        self.log("setup", device=str(self.device), params=params, config=dataclasses.asdict(cfg))

    def measure_latents(self, pool: T.ScenePool) -> None:
        """Set the VAE config's ``shift_factor`` and ``scaling_factor`` from the first pool scenes' latents."""
        n = min(pool.size, int(self.cfg.latent_stats_scenes))
        pool.wait(n)
        mean, std = T.measure_latent_std(self.vae, pool, n, self.device, self.cfg.latents, False, self.cfg.seed)
        self.latent_mean, self.scaling_factor = mean, 1.0 / std
        self.vae.register_to_config(shift_factor=mean, scaling_factor=self.scaling_factor)
        self.log("latents", scenes=n, shift_factor=mean, latent_std=std, scaling_factor=self.scaling_factor)

    @torch.no_grad()
    def cache_latents(self, pool: T.ScenePool) -> None:
        """Encode every pool image once (``--cache-latents``): the VAE is frozen, so a step's latents are the cached
        posterior mean, plus its std times the step's ``latent_noise`` with ``--latents sample``, exactly what
        encoding the batch gives. Held on the training device as float32, (pool, 4, 32, 32) each."""
        pool.wait()
        t0 = time.perf_counter()
        means, stds = [], []
        for dist in T.encode_pool(self.vae, pool, pool.size, self.device, self.cfg.bf16):
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        self.latent_cache = (torch.cat(means), torch.cat(stds))
        self.log("latent_cache", scenes=pool.size, seconds=time.perf_counter() - t0)

    def encode_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 77 + T5 zeros, joint width) states and (B, pooled width) projections, as the pipeline builds them
        (one zero token standing for 256 with ``--collapse-t5``)."""
        joint = int(self.unet.config.joint_attention_dim)
        return M.encode_text(self.text_encoder, self.text_encoder_2, input_ids, joint, self.t5_length)

    def unet_step_fn(self, batch: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with torch.no_grad(), T._autocast(self.device, cfg.bf16):
            if self.latent_cache is not None:
                mean, std = (c[batch["index"]] for c in self.latent_cache)
                z = mean if cfg.latents == "mean" else mean + std * batch["latent_noise"]
            else:
                z = T._encode_latents(self.vae, batch["images"], batch["latent_noise"], cfg.latents)
            z = (z - float(self.latent_mean)) * float(self.scaling_factor)
            states, pooled = self.encode_text(batch["input_ids"])
        sigma = sigmas_from_timesteps(batch["timesteps"], cfg.logit_mean, cfg.logit_std).view(-1, 1, 1, 1)
        noise = batch["noise"]
        x = (1.0 - sigma) * z + sigma * noise
        lowering = sink_anneal_strength(self.unet_step, cfg.sink_anneal_steps, cfg.sink_strength)
        extra = None
        if lowering > 0:
            bias = M.sink_bias(batch["input_ids"], self.tokenizer.eos_token_id, self.t5_length, lowering)
            extra = {"context_bias": bias}  # on the ids' device
        with T._autocast(self.device, cfg.bf16):
            pred = self.unet_fwd(
                hidden_states=x,
                timestep=sigma.flatten() * 1000.0,
                encoder_hidden_states=states,
                pooled_projections=pooled,
                joint_attention_kwargs=extra,
                return_dict=False,
            )[0]
        loss = F.mse_loss(pred.float(), noise - z)
        for g in self.unet_opt.param_groups:
            g["lr"] = lr
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip)
        self.unet_opt.step()
        T.ema_update(self.ema_unet, self.unet, cfg.ema_decay, self.unet_step)
        return {"loss": loss.detach(), "grad_norm": gn.detach()}

    # -- state and folders -----------------------------------------------------------------------------------------

    def save_state(self) -> None:
        if self.out is None:
            return
        st = {
            "transformer": self.unet.state_dict(),
            "ema_transformer": self.ema_unet.state_dict(),
            "opt": self.unet_opt.state_dict(),
            "step": self.unet_step,
            "elapsed_denoiser": self.unet_elapsed,
            "elapsed": self.elapsed(),
            "latent_mean": self.latent_mean,
            "scaling_factor": self.scaling_factor,
            "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.cfg),
        }
        T._atomic_torch_save(st, self.out / "state.pt")

    def load_state(self) -> bool:
        if self.out is None or not self.cfg.resume:
            return False
        path = self.out / "state.pt"
        if not path.is_file():
            self.log("resume", found=False, note="no state.pt: starting from scratch")
            return False
        st = torch.load(path, map_location=self.device, weights_only=False)
        self.unet.load_state_dict(st["transformer"])
        self.ema_unet.load_state_dict(st["ema_transformer"])
        self.unet_opt.load_state_dict(st["opt"])
        self.unet_step, self.unet_elapsed, self.elapsed_before = st["step"], st["elapsed_denoiser"], st["elapsed"]
        self.latent_mean, self.scaling_factor = st["latent_mean"], st["scaling_factor"]
        self.vae.register_to_config(shift_factor=self.latent_mean, scaling_factor=self.scaling_factor)
        torch.set_rng_state(st["torch_rng"])
        self.log("resume", found=True, step=self.unet_step)
        return True

    def save_model(self, folder: Path) -> int:
        """Write a complete model folder with the EMA transformer (and a provisional ``segmenter_config.json``)."""
        n = int(self.ema_unet.config.num_layers)
        settings = M.segmenter_settings(
            n,
            f"untuned defaults written by research.shapes.train_mmdit at step {self.unet_step}",
            int(self.ema_unet.config.patch_size),
        )
        size = M.save_model_folder(
            folder,
            self.vae,
            self.ema_unet,
            self.text_encoder,
            self.text_encoder_2,
            self.tokenizer,
            self.sample_scheduler,
            extra_files={"segmenter_config.json": M.dumps(settings)},
            tokenizer_dir=self.tokenizer_dir,
            check_sizes=not self.cfg.tiny,
        )
        self.log("saved", folder=str(folder), bytes=size, step=self.unet_step)
        return size

    def backbone(self):
        """The package's SD3 backbone over the EMA transformer (puts it in eval mode; callers restore)."""
        from diffsegmenter.backbones.sd3 import StableDiffusion3Backbone

        return StableDiffusion3Backbone(
            self.vae,
            self.ema_unet,
            self.text_encoder,
            self.tokenizer,
            self.text_encoder_2,
            self.tokenizer,
            self.sample_scheduler,
        )

    @torch.no_grad()
    def probe_binding(self) -> dict[str, float] | None:
        """``quality.binding_probe`` of the EMA transformer, block by block, on the first ``probe_scenes`` val
        scenes, through the package's SD3 backbone and attention capture."""
        n = int(self.cfg.probe_scenes or 0)
        if n <= 0:
            return None
        from diffsegmenter.segmenter import DiffSegmenter

        from .quality import binding_probe, scenes_of

        was_training = self.ema_unet.training
        try:
            result = binding_probe(DiffSegmenter(backbone=self.backbone()), scenes_of("val", n))
        finally:
            self.ema_unet.train(was_training)
        self.log("binding", step=self.unet_step, scenes=n, **result)
        return result

    def write_config(self) -> None:
        assert self.out is not None
        record = {
            "config": dataclasses.asdict(self.cfg),
            "transformer_config": {k: v for k, v in self.unet.config.items() if not k.startswith("_")},
            "text_encoder_config": self.text_encoder.config.to_dict(),
            "text_encoder_2_config": self.text_encoder_2.config.to_dict(),
            "vae_from": str(self.vae_source),
            "scheduler_config": dict(self.sample_scheduler.config),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "command": " ".join(sys.argv),
        }
        (self.out / "train_config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    def train(self) -> Path:
        """Run (or continue) the run and save ``model/``; returns its path."""
        cfg = self.cfg
        self.setup()
        assert self.out is not None
        resumed = self.load_state()
        self.write_config()
        pool = T.ScenePool(cfg.pool_size, cfg.workers).start()
        self.log("pool", size=cfg.pool_size, workers=cfg.workers, background=cfg.workers > 0)
        if not resumed:
            self.measure_latents(pool)
        pool.wait()
        self.log("pool_ready", size=pool.size, seconds=pool.seconds, elapsed=self.elapsed())
        if cfg.cache_latents:
            self.cache_latents(pool)
        self.run_unet(pool, cfg.unet_steps)
        self.save_state()
        folder = self.out / "model"
        self.save_model(folder)
        self.log("done", step=self.unet_step, elapsed=self.elapsed(), budget_s=cfg.time_budget_s, model=str(folder))
        return folder

    def run_profile(self) -> dict[str, float]:
        """Time ``profile_steps`` steps with the configured sizes; writes nothing."""
        cfg = self.cfg
        self.setup()
        n = min(cfg.pool_size, max(2048, 4 * cfg.batch_size))
        t0 = time.perf_counter()
        pool = T.ScenePool(n, 0).start()
        rendered = n / max(time.perf_counter() - t0, 1e-9)
        self.measure_latents(pool)
        if cfg.cache_latents:
            self.cache_latents(pool)
        rate = self.run_unet(pool, cfg.profile_steps + 2, profile=True)
        result = {
            "transformer_steps_per_s": rate,
            "transformer_samples_per_s": rate * cfg.batch_size,
            "scenes_rendered_per_s_one_process": rendered,
        }
        self.log("profile", device=str(self.device), steps=cfg.profile_steps, **result)
        return result


# --------------------------------------------------------------------------------------------------------------
# Sampling (for the model card).
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_images(
    model_dir: str | Path,
    prompts: Sequence[str],
    per_prompt: int = 4,
    steps: int = 28,
    guidance: float = 4.0,
    seed: int = 0,
    device: str = "cpu",
) -> list[list[np.ndarray]]:
    """Images from ``StableDiffusion3Pipeline`` loaded from a model folder (no T5).

    Returns:
        `list[list[np.ndarray]]`: per prompt, ``per_prompt`` (64, 64, 3) uint8 images.
    """
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(model_dir), text_encoder_3=None, tokenizer_3=None, dtype=torch.float32
    ).to(device)
    size = int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor
    return T.pipeline_samples(pipe, size, prompts, per_prompt, steps, guidance, seed)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m research.shapes.train_mmdit`` argument parser (:mod:`.train`'s plus the MM-DiT's flags)."""
    p = T.build_parser()
    p.prog = "python -m research.shapes.train_mmdit"
    p.description = "Train the joint-attention (SD3-class) shapes-world model from scratch (the VAE is reused)."
    d = MMDiTConfig()
    p.set_defaults(lr=d.lr)
    p.add_argument("--vae-from", default=d.vae_from, help="model folder whose VAE is reused (default: shapes)")
    p.add_argument("--logit-mean", type=float, default=d.logit_mean, help="logit-normal noise-level sampling mean")
    p.add_argument("--logit-std", type=float, default=d.logit_std, help="logit-normal noise-level sampling std")
    p.add_argument("--latent-stats-scenes", type=int, help="scenes for the latent shift/scale (4096 GPU / 512 CPU)")
    p.add_argument("--dit-layers", type=int, help=f"joint blocks (default {M.TRANSFORMER_CONFIG['num_layers']})")
    p.add_argument(
        "--dit-heads",
        type=int,
        help=f"attention heads of {M.TRANSFORMER_CONFIG['attention_head_dim']}, the width follows "
        f"(default {M.TRANSFORMER_CONFIG['num_attention_heads']})",
    )
    p.add_argument("--dit-patch-size", type=int, help=f"latent patch (default {M.TRANSFORMER_CONFIG['patch_size']})")
    p.add_argument(
        "--no-collapse-t5",
        dest="collapse_t5",
        action="store_false",
        help="train on the 256 T5 zero tokens instead of one standing for them (same loss, about 2x slower)",
    )
    p.add_argument(
        "--text-layers",
        type=int,
        help=f"layers of each CLIP text encoder (default {M.TEXT_ENCODER_CONFIG['num_hidden_layers']}; with 1 the "
        "pipeline's penultimate states are the word embeddings, so the padding carries no caption)",
    )
    p.add_argument(
        "--no-pooled",
        dest="pooled",
        action="store_false",
        help="the transformer ignores the pooled CLIP projections: the caption reaches the image only through joint "
        "attention (its pooled-text embedder zeroed and frozen)",
    )
    p.add_argument(
        "--sink-anneal-steps",
        type=int,
        default=d.sink_anneal_steps,
        help="for this many first steps, lower every query's logits for the wordless context keys (padding, T5 "
        "zeros) by a bias rising linearly from -SINK_STRENGTH to 0; training only, the saved model is unchanged "
        "(default 0: off)",
    )
    p.add_argument("--sink-strength", type=float, default=d.sink_strength, help="that bias at step 0 (default 10)")
    p.add_argument(
        "--no-cache-latents",
        dest="cache_latents",
        action="store_false",
        help="encode each batch with the VAE instead of encoding the pool once (same latents, slower)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(MMDiTConfig)}
    cfg = MMDiTConfig(**{k: v for k, v in vars(args).items() if k in fields})
    trainer = MMDiTTrainer(cfg)
    if cfg.profile_steps > 0:
        trainer.run_profile()
        return 0
    folder = trainer.train()
    if args.sample_grid:
        _sample_grid(folder, args.sample_grid, trainer.cfg.device)
        trainer.log("sample_grid", path=str(args.sample_grid))
    return 0


def _sample_grid(folder: Path, out_png: str, device: str) -> None:
    from PIL import Image

    rows = sample_images(folder, T.DEFAULT_PROMPTS, device=device)
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out_png)


if __name__ == "__main__":
    sys.exit(main())
