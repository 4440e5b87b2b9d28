"""Train the shapes-world diffusion model from scratch (issue 7).

Two phases, each pure self-supervision (no loss ever looks at the masks):

1. The ``AutoencoderKL`` learns to reconstruct world images (L1 + L2 + a small KL term). Its latent scaling factor is
   then set to ``1 / std`` of the latents of training images, as Stable Diffusion's 0.18215.
2. The ``UNet2DConditionModel`` learns epsilon-prediction denoising on the frozen VAE's latents, conditioned on the
   frozen text encoder's states of random captions (``captions.sample_caption``), with uniform timesteps over SD's
   1000-step schedule, AdamW, warm-up then cosine (or constant) learning rate, gradient clipping and an EMA of its
   weights (the EMA is what gets saved).

Data: scenes from the training seed range, rendered once into an in-memory pool by a process pool (in the background
while phase 1 trains), then batches built by DataLoader workers. Everything random in a batch (scene indices,
captions, timesteps, noises) is drawn from ``numpy.random.default_rng([seed, phase, step])``, so a batch depends on
its step only, and a resumed run sees the batches an uninterrupted one would.

Run from the repository root (``research`` is not part of the installed package)::

    python -m research.shapes.train --out runs/shapes --device cuda --time-budget-s 420
    python -m research.shapes.train --out runs/shapes --device cpu --time-budget-s 7200   # then --resume
    python -m research.shapes.train --profile-steps 20 --device cuda     # steps/s of each phase, then exit
    python -m research.shapes.train --out runs/leg2 --init-from runs/shapes/model --time-budget-s 500  # a new leg

``--time-budget-s`` counts from the start of the run (after Python's imports) over all legs together; the process
takes about 15 s more (imports, CUDA start, the final save). Measured on one H200 (bf16 autocast, default sizes):
VAE 41 steps/s at batch 128, UNet 12.5 steps/s at batch 256 (3200 samples/s); 150k scenes render in ~35 s on 15
processes, in the background of phase 1. A 230 s run (1.5k VAE steps, PSNR 31 dB; 1.85k UNet steps) already drew the
single shapes it was asked for, and its class-token cross-attention (raw maps of every cross-attention layer,
summed; prompt "a circle and a square") picked the right present class on 93% of foreground pixels of 60
validation scenes (after 730 steps: 72%, about chance). A second leg (``--init-from`` that model, 500 s) ran at 8.7
steps/s on another H200 with the GPU ~60% busy (not profiled: batch building or launch overhead), and moved the
binding probe's 8x8 level only from 0.915 to 0.926 (see the model card).
On the shared 2-core CPU machine (one torch thread, under load): VAE 0.4 steps/s at batch 32, UNet 0.14-0.25
steps/s at batch 32, i.e. a 2-hour CPU run sees under a tenth of the samples of a 7-minute GPU run.

Output folder: ``train_config.json``, ``log.jsonl`` (one JSON record per log line), ``state.pt`` (resumable: models,
optimisers, EMA, steps, elapsed time), ``ckpt-<step>/`` model folders (the last four), ``model/`` (the final model,
diffusers layout, fp16 safetensors) and ``tokenizer/``. At every checkpoint ``log.jsonl`` also gets a ``binding``
record (``quality.binding_probe`` on ``--probe-scenes`` val scenes): watch that, not the loss. ``--out`` may not lie
inside the installed ``diffsegmenter`` package: to ship a model, a maintainer copies ``model/`` into
``src/diffsegmenter/models/shapes/`` and its ``train_config.json`` / ``log.jsonl`` into ``research/shapes/runs/``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import components as C
from .captions import P_DROP_COLOUR, P_DROP_POSITION, sample_caption
from .world import COLOUR_NAMES, IMAGE_SIZE, SPLIT_SEED_OFFSETS, SPLIT_SIZE_LIMIT, ShapeObject, make_scene

#: The shipped model's training record (``train_config.json``, ``train_log.jsonl``) and tuning reports.
SHIPPED_RUN = Path(__file__).resolve().parent / "runs" / "shipped"

MAX_OBJECTS = 3
_PHASE_TAG = {"vae": 1, "unet": 2}


# --------------------------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of a training run (written to ``train_config.json``).

    Fields left at `None` get a device-dependent default in ``resolve``; see ``build_parser`` for their meaning.
    """

    out: str | None = None
    device: str = "auto"
    seed: int = 0
    time_budget_s: float | None = None
    vae_time_s: float | None = None
    vae_steps: int | None = None
    vae_batch_size: int | None = None
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5
    unet_steps: int | None = None
    batch_size: int | None = None
    lr: float = 5e-4
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    latents: str = "sample"
    pool_size: int | None = None
    workers: int | None = None
    loader_workers: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 4
    log_every: int | None = None
    resume: bool = False
    profile_steps: int = 0
    token_embedding_std: float = C.TOKEN_EMBEDDING_STD
    bf16: bool | None = None
    compile: bool = False
    threads: int | None = None
    tiny: bool = False
    init_from: str | None = None
    probe_scenes: int | None = None
    # recipe levers (issue 17): UNet sizes per level, how often captions drop position/colour words, and keeping the
    # checkpoint whose binding probe on val is best (not the last one)
    unet_channels: str | None = None
    unet_heads: str | None = None
    unet_layers_per_block: int | None = None
    p_drop_position: float = P_DROP_POSITION
    p_drop_colour: float = P_DROP_COLOUR
    keep_best: str | None = None

    def unet_overrides(self) -> dict[str, Any]:
        """``UNET_CONFIG`` entries the size flags replace (``--unet-channels 64,128,128 --unet-heads 4,4,4``)."""
        out: dict[str, Any] = {}
        if self.unet_channels:
            out["block_out_channels"] = tuple(int(x) for x in str(self.unet_channels).split(","))
        if self.unet_heads:
            out["attention_head_dim"] = tuple(int(x) for x in str(self.unet_heads).split(","))
        if self.unet_layers_per_block:
            out["layers_per_block"] = int(self.unet_layers_per_block)
        levels = {len(v) for v in out.values() if isinstance(v, tuple)}
        if len(levels) > 1 or (levels and levels != {len(C.UNET_CONFIG["block_out_channels"])}):
            raise ValueError(
                f"--unet-channels and --unet-heads need one value per level "
                f"({len(C.UNET_CONFIG['block_out_channels'])}), got {out}"
            )
        return out

    def resolve(self) -> TrainConfig:
        """A copy with the device and every `None` default filled in."""
        cfg = dataclasses.replace(self)
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        gpu = cfg.device.startswith("cuda")
        cpus = os.cpu_count() or 1
        defaults: dict[str, Any] = {
            "vae_steps": 4000 if gpu else 1500,
            "vae_batch_size": 128 if gpu else 32,
            "unet_steps": 100_000 if gpu else 30_000,
            "batch_size": 256 if gpu else 32,
            "warmup_steps": 300 if gpu else 200,
            "pool_size": 150_000 if gpu else 20_000,
            "workers": max(1, min(16, cpus - 4)) if gpu else 1,  # leave cores to the main and loader processes
            "loader_workers": min(6, max(1, cpus // 2)) if gpu else 1,
            "save_every": 1000 if gpu else 500,
            "log_every": 100 if gpu else 20,
            "bf16": gpu,
            "probe_scenes": 64 if gpu else 16,
            # CPU: one intra-op thread per core left after the loader workers. More threads than free cores make
            # torch's OpenMP workers spin against each other (5x slower on the shared 2-core machine).
            "threads": torch.get_num_threads()
            if gpu
            else max(1, cpus - (1 if self.loader_workers is None else self.loader_workers)),
        }
        for key, value in defaults.items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.vae_time_s is None and cfg.time_budget_s is not None:
            cfg.vae_time_s = min(60.0, 0.2 * cfg.time_budget_s) if gpu else 0.15 * cfg.time_budget_s
        if cfg.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"--lr-schedule must be 'cosine' or 'constant', not {cfg.lr_schedule!r}")
        if cfg.latents not in ("sample", "mean"):
            raise ValueError(f"--latents must be 'sample' or 'mean', not {cfg.latents!r}")
        if not (0.0 <= cfg.p_drop_position <= 1.0 and 0.0 <= cfg.p_drop_colour <= 1.0):
            raise ValueError("--p-drop-position and --p-drop-colour must be probabilities in [0, 1]")
        cfg.unet_overrides()  # validates the size flags
        if cfg.pool_size > SPLIT_SIZE_LIMIT:
            raise ValueError(f"--pool-size {cfg.pool_size} exceeds the training seed range ({SPLIT_SIZE_LIMIT})")
        return cfg


# --------------------------------------------------------------------------------------------------------------
# Data: an in-memory pool of training scenes and a per-step deterministic batch stream.
# --------------------------------------------------------------------------------------------------------------


def render_chunk(seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Render scenes into arrays (a picklable worker for ``multiprocessing``).

    Args:
        seeds (`Sequence[int]`): scene seeds.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: images (N, 64, 64, 3) uint8 and objects (N, 3, 5) float32 with rows
        ``(label, colour index, cx, cy, r)``; unused rows have label 0.
    """
    images = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    objects = np.zeros((len(seeds), MAX_OBJECTS, 5), np.float32)
    for i, seed in enumerate(seeds):
        scene = make_scene(int(seed))
        images[i] = scene.image
        for k, o in enumerate(scene.objects):
            objects[i, k] = (o.label, COLOUR_NAMES.index(o.colour), o.centre[0], o.centre[1], o.r)
    return images, objects


def objects_from_rows(rows: np.ndarray) -> list[ShapeObject]:
    """``ShapeObject`` list from rows of ``render_chunk``'s objects array."""
    return [
        ShapeObject(int(r[0]), COLOUR_NAMES[int(r[1])], (float(r[2]), float(r[3])), float(r[4]))
        for r in rows
        if r[0] > 0
    ]


class ScenePool:
    """Training scenes ``0 .. size - 1`` rendered into shared arrays, in the background.

    ``start`` launches a process pool that fills the arrays chunk by chunk in seed order; ``wait(n)`` blocks until the
    first ``n`` scenes are there. DataLoader workers forked afterwards share the arrays (copy-on-write).

    Args:
        size (`int`): number of scenes.
        workers (`int`): rendering processes; 0 renders in this process (synchronously, in ``start``).
        chunk (`int`, *optional*, defaults to 500): scenes per task.
    """

    def __init__(self, size: int, workers: int, chunk: int = 500) -> None:
        self.size = size
        self.workers = workers
        self.chunk = chunk
        self.images = np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.objects = np.zeros((size, MAX_OBJECTS, 5), np.float32)
        self.ready = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0

    def start(self) -> ScenePool:
        """Start rendering (returns at once when ``workers > 0``)."""
        offset = SPLIT_SEED_OFFSETS["train"]
        chunks = [range(offset + a, offset + min(a + self.chunk, self.size)) for a in range(0, self.size, self.chunk)]
        if self.workers <= 0:
            t0 = time.perf_counter()
            for ch in chunks:
                self._store(ch.start - offset, *render_chunk(ch))
            self.seconds = time.perf_counter() - t0
            return self
        self._thread = threading.Thread(target=self._run, args=(chunks, offset), daemon=True)
        self._thread.start()
        return self

    def _store(self, start: int, images: np.ndarray, objects: np.ndarray) -> None:
        self.images[start : start + len(images)] = images
        self.objects[start : start + len(images)] = objects
        with self._cond:
            self.ready = start + len(images)
            self._cond.notify_all()

    def _run(self, chunks: list[range], offset: int) -> None:
        import multiprocessing as mp

        t0 = time.perf_counter()
        try:
            with mp.get_context("spawn").Pool(self.workers) as pool:
                for ch, (images, objects) in zip(chunks, pool.imap(render_chunk, [list(c) for c in chunks])):
                    self._store(ch.start - offset, images, objects)
        except BaseException as err:  # surfaced by wait()
            self._error = err
            with self._cond:
                self._cond.notify_all()
        self.seconds = time.perf_counter() - t0

    def wait(self, n: int | None = None) -> None:
        """Block until the first ``n`` scenes (all, by default) are rendered."""
        n = self.size if n is None else min(n, self.size)
        with self._cond:
            while self.ready < n and self._error is None:
                self._cond.wait(timeout=1.0)
        if self._error is not None:
            raise RuntimeError("rendering the scene pool failed") from self._error


class CaptionEncoder:
    """Captions to padded token ids, by word lookup (every caption word is one token of the shapes tokenizer).

    Args:
        tokenizer (`CLIPTokenizer`): the shapes tokenizer.
        words (`Sequence[str]`): the words that may occur.
    """

    def __init__(self, tokenizer: Any, words: Sequence[str]) -> None:
        self.max_length = int(tokenizer.model_max_length)
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)
        self.ids: dict[str, int] = {}
        for w in words:
            ids = tokenizer(w, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"caption word {w!r} is not a single token of this tokenizer: {ids}")
            self.ids[w] = ids[0]

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """(B, max_length) int64 ids: BOS, the words, EOS, then padding, as the tokenizer would give."""
        out = np.full((len(captions), self.max_length), self.pad, np.int64)
        for i, text in enumerate(captions):
            ids = [self.bos, *(self.ids[w] for w in text.split()), self.eos][: self.max_length]
            out[i, : len(ids)] = ids
        return out


class BatchStream(torch.utils.data.IterableDataset):
    """Batches of step ``start_step``, ``start_step + 1``, ...; each drawn from ``default_rng([seed, phase, step])``.

    Each batch holds ``index`` (B,) int64 (the pool rows), ``images`` (B, 64, 64, 3) uint8, ``noise`` and
    ``latent_noise`` (B, 4, h, w) float32 N(0, 1) and, for the UNet phase, ``input_ids`` (B, 77) int64 and ``timesteps`` (B,) int64 in [0, T). With DataLoader
    workers, worker ``w`` of ``k`` makes the steps ``= w (mod k)``, and the DataLoader's round-robin returns them in
    order.
    """

    def __init__(
        self,
        pool: ScenePool,
        batch_size: int,
        seed: int,
        phase: str,
        start_step: int,
        pool_limit: int,
        latent_shape: tuple[int, int, int],
        encoder: CaptionEncoder | None = None,
        num_timesteps: int = 1000,
        caption_kwargs: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.batch_size = batch_size
        self.seed = seed
        self.phase = phase
        self.start_step = start_step
        self.pool_limit = pool_limit
        self.latent_shape = latent_shape
        self.encoder = encoder
        self.num_timesteps = num_timesteps
        self.caption_kwargs = dict(caption_kwargs or {})

    def make(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of one step."""
        rng = np.random.default_rng([self.seed, _PHASE_TAG[self.phase], step])
        b = self.batch_size
        idx = rng.integers(0, self.pool_limit, size=b)
        batch = {
            "index": torch.from_numpy(idx),
            "images": torch.from_numpy(self.pool.images[idx]),
            "latent_noise": torch.from_numpy(rng.standard_normal((b, *self.latent_shape), dtype=np.float32)),
        }
        if self.phase == "unet":
            assert self.encoder is not None
            caps = [sample_caption(objects_from_rows(self.pool.objects[i]), rng, **self.caption_kwargs) for i in idx]
            batch["input_ids"] = torch.from_numpy(self.encoder(caps))
            batch["timesteps"] = torch.from_numpy(rng.integers(0, self.num_timesteps, size=b))
            batch["noise"] = torch.from_numpy(rng.standard_normal((b, *self.latent_shape), dtype=np.float32))
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + wid
        while True:
            yield self.make(step)
            step += nw


def make_loader(stream: BatchStream, workers: int, pin: bool) -> Iterator[dict[str, torch.Tensor]]:
    """An endless iterator over a stream's batches (with ``workers`` DataLoader processes when > 0)."""
    if workers <= 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        persistent_workers=False,
        multiprocessing_context="fork" if sys.platform.startswith("linux") else None,
    )
    return iter(loader)


# --------------------------------------------------------------------------------------------------------------
# Training helpers.
# --------------------------------------------------------------------------------------------------------------


class RunLog:
    """Prints progress lines (flushed) and appends them as JSON records to ``log.jsonl``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        print(f"[{event}] {text}", flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def lr_factor(step: int, warmup: int, progress: float, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then constant or cosine to ``min_ratio``.

    Args:
        step (`int`): optimiser steps done.
        warmup (`int`): warm-up steps.
        progress (`float`): fraction of the run done, in [0, 1] (the larger of the step and the time fraction).
        schedule (`str`): ``"cosine"`` or ``"constant"``.
        min_ratio (`float`): the cosine's final multiplier.

    Returns:
        `float`: the multiplier, in (0, 1].
    """
    warm = min(1.0, (step + 1) / max(1, warmup))
    if schedule == "constant":
        return warm
    p = min(1.0, max(0.0, progress))
    return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA of parameters with diffusers' warm-up ``min(decay, (1 + step) / (10 + step))``."""
    d = min(decay, (1 + step) / (10 + step))
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - d)


def psnr_from_mse(mse_pm1: float) -> float:
    """PSNR (dB) of images in [0, 1] from the MSE measured in [-1, 1]."""
    return 10.0 * math.log10(4.0 / max(mse_pm1, 1e-12))


def _to_model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["images"] = out["images"].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return out


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _encode_latents(vae: torch.nn.Module, images: torch.Tensor, eps: torch.Tensor, mode: str) -> torch.Tensor:
    dist = vae.encode(images).latent_dist
    z = dist.mean if mode == "mean" else dist.mean + dist.std * eps
    return z.float()


@torch.no_grad()
def encode_pool(
    vae: torch.nn.Module, pool: ScenePool, n: int, device: torch.device, bf16: bool, chunk: int = 256
) -> Iterator[Any]:
    """The VAE posteriors (``DiagonalGaussianDistribution``) of pool images ``0 .. n-1``, ``chunk`` at a time, the
    images mapped to [-1, 1] on ``device`` as in training."""
    for a in range(0, n, chunk):
        imgs = torch.from_numpy(pool.images[a : min(a + chunk, n)]).to(device)
        imgs = imgs.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        with _autocast(device, bf16):
            yield vae.encode(imgs).latent_dist


@torch.no_grad()
def measure_latent_std(
    vae: torch.nn.Module, pool: ScenePool, n: int, device: torch.device, mode: str, bf16: bool, seed: int
) -> tuple[float, float]:
    """Mean and std of the (unscaled) latents of the first ``n`` pool images."""
    vae.eval()
    gen = np.random.default_rng([seed, 3])
    zs = []
    for dist in encode_pool(vae, pool, n, device, bf16):
        eps = torch.from_numpy(gen.standard_normal(tuple(dist.mean.shape), dtype=np.float32)).to(device)
        z = dist.mean.float() if mode == "mean" else dist.mean.float() + dist.std.float() * eps
        zs.append(z.double().cpu())
    z = torch.cat(zs)
    return float(z.mean()), float(z.std())


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _prune_checkpoints(out: Path, keep: int) -> None:
    ckpts = sorted(
        (p for p in out.glob("ckpt-*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for p in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------------------


class Trainer:
    """One training run (both phases), resumable from ``state.pt``.

    Args:
        cfg (`TrainConfig`): the settings (resolved here).
    """

    #: ``log.jsonl`` event of the denoiser's progress lines.
    denoiser_event = "unet"

    def __init__(self, cfg: TrainConfig) -> None:
        self.t_start = time.perf_counter()
        self.cfg = cfg.resolve()
        self.device = torch.device(self.cfg.device)
        self.gpu = self.device.type == "cuda"
        torch.set_num_threads(int(self.cfg.threads))
        if self.gpu:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.profile = self.cfg.profile_steps > 0
        if self.cfg.out is None and not self.profile:
            raise ValueError("--out is required (except with --profile-steps)")
        self.out = C.check_out_dir(self.cfg.out) if self.cfg.out is not None else None
        if self.out is not None and not self.cfg.resume:
            C.check_new_run_dir(self.out)
        self.log = RunLog(None if self.profile or self.out is None else self.out / "log.jsonl")
        self.elapsed_before = 0.0  # wall clock spent by earlier legs of this run
        self.vae_elapsed = 0.0
        self.unet_elapsed = 0.0
        self.vae_step = 0
        self.unet_step = 0
        self.phase = "vae"
        self.scaling_factor: float | None = None
        self.latent_mean: float | None = None

    # -- time ---------------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Wall-clock seconds of the whole run so far (earlier legs included)."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def budget_left(self) -> float:
        if self.cfg.time_budget_s is None:
            return math.inf
        return self.cfg.time_budget_s - self.elapsed()

    # -- setup --------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        tok_dir = (self.out / "tokenizer") if self.out is not None else Path(_tempdir()) / "tokenizer"
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        comps = C.build_components(
            tok_dir,
            seed=cfg.seed,
            tiny=cfg.tiny,
            token_embedding_std=cfg.token_embedding_std,
            unet_overrides=cfg.unet_overrides(),
        )
        self.tokenizer_dir = comps["tokenizer_dir"]
        self.tokenizer = comps["tokenizer"]
        self.vae = comps["vae"].to(self.device)
        self.unet = comps["unet"].to(self.device)
        self.text_encoder = comps["text_encoder"].to(self.device)
        self.sample_scheduler = comps["scheduler"]
        self.noise_scheduler = C.build_scheduler("ddpm")
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device, torch.float32)
        from .captions import VOCABULARY

        self.encoder = CaptionEncoder(self.tokenizer, VOCABULARY)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.unet_opt = torch.optim.AdamW(
            self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999)
        )
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (
            int(self.vae.config.latent_channels),
            IMAGE_SIZE // down,
            IMAGE_SIZE // down,
        )
        self.unet_fwd = self.unet
        if cfg.compile:
            self.unet_fwd = torch.compile(self.unet)
        if cfg.init_from is not None:
            self.init_from_folder(Path(cfg.init_from))
        n_params = {k: C.count_parameters(m) for k, m in (("vae", self.vae), ("unet", self.unet))}
        n_params["text_encoder"] = C.count_parameters(self.text_encoder)
        self.log("setup", device=str(self.device), params=n_params, config=dataclasses.asdict(cfg))

    def init_from_folder(self, folder: Path) -> None:
        """Start a new leg from a finished model folder: its VAE (and scaling factor) and text encoder as they are,
        its UNet (the EMA weights it ships) as the starting point of both the trained and the EMA UNet.

        Phase 1 is skipped; the UNet step counter, learning-rate warm-up and schedule start afresh (the folder holds
        no optimiser state). The architecture must match the one this run would build.
        """
        from diffsegmenter.loading import load_components

        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(
                f"--init-from {folder}: no model_index.json there; give a model folder written by this script "
                "(its model/ or ckpt-<step>/), or the shipped src/diffsegmenter/models/shapes"
            )
        parts = load_components(folder, dtype=torch.float32, local_files_only=True)
        loaded = {name: parts[name] for name in ("vae", "unet", "text_encoder")}
        for name, model in loaded.items():
            target = getattr(self, name)
            try:
                target.load_state_dict(model.state_dict(), strict=True)
            except RuntimeError as err:
                raise ValueError(
                    f"--init-from {folder}: its {name} does not match the architecture of this run "
                    f"(--tiny and --token-embedding-std must be as when it was trained): {err}"
                ) from err
        self.ema_unet.load_state_dict(self.unet.state_dict())
        self.scaling_factor = float(loaded["vae"].config.scaling_factor)
        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        self.vae.eval().requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.phase = "unet"
        earlier = None
        log = folder / "train_log.jsonl"
        if not log.is_file() and folder.resolve() == C.package_folder() / "models" / "shapes":
            log = SHIPPED_RUN / "train_log.jsonl"  # the shipped model's log stays out of the package
        if log.is_file():
            done = [json.loads(x) for x in log.read_text().splitlines() if '"done"' in x]
            earlier = done[-1].get("unet_step") if done else None
        self.log("init_from", folder=str(folder), scaling_factor=self.scaling_factor, earlier_unet_steps=earlier)

    def load_state(self) -> bool:
        """Load ``state.pt`` if resuming and present; returns whether it did."""
        if self.out is None or not self.cfg.resume:
            return False
        path = self.out / "state.pt"
        if not path.is_file():
            self.log("resume", found=False, note="no state.pt: starting from scratch")
            return False
        st = torch.load(path, map_location=self.device, weights_only=False)
        self.vae.load_state_dict(st["vae"])
        self.unet.load_state_dict(st["unet"])
        self.ema_unet.load_state_dict(st["ema_unet"])
        self.vae_opt.load_state_dict(st["vae_opt"])
        self.unet_opt.load_state_dict(st["unet_opt"])
        self.vae_step, self.unet_step = st["vae_step"], st["unet_step"]
        self.vae_elapsed, self.unet_elapsed = st["vae_elapsed"], st["unet_elapsed"]
        self.elapsed_before = st["elapsed"]
        self.phase = st["phase"]
        self.scaling_factor = st.get("scaling_factor")
        self.latent_mean = st.get("latent_mean")
        if self.scaling_factor is not None:
            self.vae.register_to_config(scaling_factor=self.scaling_factor)
        torch.set_rng_state(st["torch_rng"])
        self.log("resume", found=True, phase=self.phase, vae_step=self.vae_step, unet_step=self.unet_step)
        return True

    def save_state(self) -> None:
        if self.out is None:
            return
        st = {
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "unet_opt": self.unet_opt.state_dict(),
            "vae_step": self.vae_step,
            "unet_step": self.unet_step,
            "vae_elapsed": self.vae_elapsed,
            "unet_elapsed": self.unet_elapsed,
            "elapsed": self.elapsed(),
            "phase": self.phase,
            "scaling_factor": self.scaling_factor,
            "latent_mean": self.latent_mean,
            "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.cfg),
        }
        _atomic_torch_save(st, self.out / "state.pt")

    def save_model(self, folder: Path) -> int:
        """Write a complete model folder with the EMA UNet."""
        size = C.save_model_folder(
            folder,
            self.vae,
            self.ema_unet,
            self.text_encoder,
            self.tokenizer_dir,
            self.sample_scheduler,
            check_sizes=not self.cfg.tiny,
        )
        self.log("saved", folder=str(folder), bytes=size, unet_step=self.unet_step)
        return size

    # -- phases -------------------------------------------------------------------------------------------------

    def _stream(self, pool: ScenePool, phase: str, start: int, limit: int) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        stream = BatchStream(
            pool,
            cfg.vae_batch_size if phase == "vae" else cfg.batch_size,
            cfg.seed,
            phase,
            start,
            limit,
            self.latent_shape,
            self.encoder if phase == "unet" else None,
            int(self.noise_scheduler.config.num_train_timesteps),
            {"p_drop_position": cfg.p_drop_position, "p_drop_colour": cfg.p_drop_colour},
        )
        return make_loader(stream, cfg.loader_workers, pin=self.gpu)

    def vae_step_fn(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        x = batch["images"]
        with _autocast(self.device, self.cfg.bf16):
            dist = self.vae.encode(x).latent_dist
            z = dist.mean + dist.std * batch["latent_noise"]
            rec = self.vae.decode(z).sample
        rec = rec.float()
        mse = F.mse_loss(rec, x)
        l1 = F.l1_loss(rec, x)
        kl = dist.kl().float().mean() / float(np.prod(self.latent_shape))
        loss = l1 + mse + self.cfg.kl_weight * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.cfg.grad_clip)
        self.vae_opt.step()
        return {"loss": loss.detach(), "mse": mse.detach(), "kl": kl.detach(), "grad_norm": gn.detach()}

    def unet_step_fn(self, batch: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
        sf = float(self.scaling_factor or 1.0)
        with torch.no_grad(), _autocast(self.device, self.cfg.bf16):
            z0 = _encode_latents(self.vae, batch["images"], batch["latent_noise"], self.cfg.latents) * sf
            states = self.text_encoder(batch["input_ids"]).last_hidden_state
        t = batch["timesteps"]
        noise = batch["noise"]
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with _autocast(self.device, self.cfg.bf16):
            pred = self.unet_fwd(noisy, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred.float(), noise)
        for g in self.unet_opt.param_groups:
            g["lr"] = lr
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        self.unet_opt.step()
        ema_update(self.ema_unet, self.unet, self.cfg.ema_decay, self.unet_step)
        return {"loss": loss.detach(), "grad_norm": gn.detach()}

    def run_vae(self, pool: ScenePool, steps: int, time_cap: float | None, profile: bool = False) -> float:
        """Phase 1; returns steps/s of the timed steps."""
        cfg = self.cfg
        self.vae.train()
        limit = min(pool.size, max(cfg.vae_batch_size * 16, 16384))  # start early; the rest renders meanwhile
        pool.wait(limit)
        it = self._stream(pool, "vae", self.vae_step, limit)
        t_phase = time.perf_counter()
        t_log, n_log = time.perf_counter(), 0
        acc: dict[str, float] = {}
        rate = 0.0
        warm = 2 if profile else 0
        done = 0
        while self.vae_step < steps:
            if profile and done == warm:
                self._sync()
                t_phase = time.perf_counter()
            phase_time = self.vae_elapsed + time.perf_counter() - t_phase
            if not profile and ((time_cap is not None and phase_time >= time_cap) or self.budget_left() <= 0):
                break
            batch = _to_model_inputs(next(it), self.device)
            stats = self.vae_step_fn(batch)
            self.vae_step += 1
            done += 1
            n_log += 1
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
            if self.vae_step % cfg.log_every == 0 or self.vae_step == steps:
                vals = {k: float(v) / n_log for k, v in acc.items()}
                rate = n_log / (time.perf_counter() - t_log)
                self.log(
                    "vae",
                    step=self.vae_step,
                    loss=vals["loss"],
                    psnr=psnr_from_mse(vals["mse"]),
                    kl=vals["kl"],
                    steps_per_s=rate,
                    elapsed=self.elapsed(),
                )
                acc, n_log, t_log = {}, 0, time.perf_counter()
            if not profile and cfg.save_every and self.vae_step % cfg.save_every == 0:
                self.vae_elapsed += time.perf_counter() - t_phase
                t_phase = time.perf_counter()
                self.save_state()
        self._sync()
        dt = time.perf_counter() - t_phase
        if profile:
            return (done - warm) / max(dt, 1e-9)
        self.vae_elapsed += dt
        return rate

    def finish_vae(self, pool: ScenePool) -> None:
        n = min(pool.size, 4096 if self.gpu else 1024)
        pool.wait(n)
        mean, std = measure_latent_std(self.vae, pool, n, self.device, self.cfg.latents, self.cfg.bf16, self.cfg.seed)
        self.scaling_factor = 1.0 / std
        self.latent_mean = mean
        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        self.vae.eval().requires_grad_(False)
        self.phase = "unet"
        self.log("vae_done", step=self.vae_step, latent_mean=mean, latent_std=std, scaling_factor=self.scaling_factor)
        self.save_state()

    def run_unet(self, pool: ScenePool, steps: int, profile: bool = False) -> float:
        """Phase 2; returns steps/s of the timed steps."""
        cfg = self.cfg
        self.vae.eval().requires_grad_(False)
        self.unet.train()
        pool.wait()
        it = self._stream(pool, "unet", self.unet_step, pool.size)
        unet_budget = None
        if cfg.time_budget_s is not None and not profile:
            unet_budget = max(1.0, self.budget_left() + self.unet_elapsed)
        t_phase = time.perf_counter()
        t_log, n_log = time.perf_counter(), 0
        acc: dict[str, torch.Tensor] = {}
        warm = 2 if profile else 0
        done = 0
        rate = 0.0
        while self.unet_step < steps:
            if profile and done == warm:
                self._sync()
                t_phase = time.perf_counter()
            phase_time = self.unet_elapsed + time.perf_counter() - t_phase
            if not profile and self.budget_left() <= 0:
                break
            progress = self.unet_step / max(1, steps)
            if unet_budget is not None:
                progress = max(progress, phase_time / unet_budget)
            lr = cfg.lr * lr_factor(self.unet_step, cfg.warmup_steps, progress, cfg.lr_schedule, cfg.min_lr_ratio)
            batch = _to_model_inputs(next(it), self.device)
            stats = self.unet_step_fn(batch, lr)
            self.unet_step += 1
            done += 1
            n_log += 1
            for k, v in stats.items():
                acc[k] = acc[k] + v if k in acc else v
            if self.unet_step % cfg.log_every == 0 or self.unet_step == steps:
                vals = {k: float(v) / n_log for k, v in acc.items()}
                rate = n_log / (time.perf_counter() - t_log)
                self.log(
                    self.denoiser_event,
                    step=self.unet_step,
                    loss=vals["loss"],
                    grad_norm=vals["grad_norm"],
                    lr=lr,
                    steps_per_s=rate,
                    elapsed=self.elapsed(),
                )
                acc, n_log, t_log = {}, 0, time.perf_counter()
            if not profile and cfg.save_every and self.unet_step % cfg.save_every == 0:
                self.unet_elapsed += time.perf_counter() - t_phase
                t_phase = time.perf_counter()
                self.checkpoint()
        self._sync()
        dt = time.perf_counter() - t_phase
        if profile:
            return (done - warm) / max(dt, 1e-9)
        self.unet_elapsed += dt
        return rate

    def checkpoint(self) -> None:
        assert self.out is not None
        self.save_state()
        self.save_model(self.out / f"ckpt-{self.unet_step}")
        _prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        self.keep_if_best(self.probe_binding())

    def keep_if_best(self, probe: dict[str, float] | None) -> bool:
        """With ``--keep-best METRIC``: copy the newest checkpoint to ``best/`` when its binding probe's METRIC
        (e.g. ``level_4``, ``all_levels``, ``block_3``) beats every earlier one (``best.json`` records which)."""
        metric = self.cfg.keep_best
        if not metric or probe is None or self.out is None:
            return False
        if metric not in probe:
            raise ValueError(f"--keep-best {metric!r}: the binding probe reports {sorted(probe)}")
        record = self.out / "best.json"
        best = json.loads(record.read_text())["value"] if record.is_file() else -math.inf
        if probe[metric] <= best:
            return False
        target = self.out / "best"
        tmp = self.out / "best.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(self.out / f"ckpt-{self.unet_step}", tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        record.write_text(json.dumps({"metric": metric, "value": probe[metric], "step": self.unet_step}) + "\n")
        self.log("best", metric=metric, value=probe[metric], step=self.unet_step)
        return True

    @torch.no_grad()
    def probe_binding(self) -> dict[str, float] | None:
        """Log ``quality.binding_probe`` of the EMA UNet on the first ``probe_scenes`` validation scenes (issue 7:
        measure binding on checkpoints, not the loss)."""
        n = int(self.cfg.probe_scenes or 0)
        if n <= 0:
            return None
        from diffsegmenter.segmenter import DiffSegmenter

        from .quality import binding_probe, scenes_of

        was_training = self.ema_unet.training
        seg = DiffSegmenter(  # puts the EMA UNet in eval mode; restored below
            self.vae, self.ema_unet, self.text_encoder, self.tokenizer, self.sample_scheduler
        )
        try:
            result = binding_probe(seg, scenes_of("val", n))
        finally:
            self.ema_unet.train(was_training)
        self.log("binding", step=self.unet_step, scenes=n, **result)
        return result

    def _sync(self) -> None:
        if self.gpu:
            torch.cuda.synchronize(self.device)

    # -- entry points -------------------------------------------------------------------------------------------

    def write_config(self) -> None:
        assert self.out is not None
        record = {
            "config": dataclasses.asdict(self.cfg),
            "vae_config": {k: v for k, v in self.vae.config.items() if not k.startswith("_")},
            "unet_config": {k: v for k, v in self.unet.config.items() if not k.startswith("_")},
            "text_encoder_config": self.text_encoder.config.to_dict(),
            "scheduler_config": dict(self.sample_scheduler.config),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "command": " ".join(sys.argv),
        }
        (self.out / "train_config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    def train(self) -> Path:
        """Run (or continue) both phases, save ``model/``; returns its path."""
        cfg = self.cfg
        self.setup()
        assert self.out is not None
        self.load_state()
        self.write_config()
        pool = ScenePool(cfg.pool_size, cfg.workers).start()
        self.log("pool", size=cfg.pool_size, workers=cfg.workers, background=cfg.workers > 0)
        if self.phase == "vae":
            self.run_vae(pool, cfg.vae_steps, cfg.vae_time_s)
            self.finish_vae(pool)
        pool.wait()
        self.log("pool_ready", size=pool.size, seconds=pool.seconds, elapsed=self.elapsed())
        self.run_unet(pool, cfg.unet_steps)
        self.save_state()
        folder = self.out / "model"
        self.save_model(folder)
        self.log(
            "done",
            vae_step=self.vae_step,
            unet_step=self.unet_step,
            elapsed=self.elapsed(),
            budget_s=cfg.time_budget_s,
            model=str(folder),
        )
        return folder

    def run_profile(self) -> dict[str, float]:
        """Time ``profile_steps`` steps of each phase with the configured sizes; writes nothing."""
        cfg = self.cfg
        self.setup()
        n = min(cfg.pool_size, max(2048, 4 * max(cfg.batch_size, cfg.vae_batch_size)))
        t0 = time.perf_counter()
        pool = ScenePool(n, 0).start()
        scenes_per_s = n / max(time.perf_counter() - t0, 1e-9)
        steps = cfg.profile_steps
        result: dict[str, float] = {}
        if cfg.init_from is None:  # a leg from a model folder has no phase 1 (its VAE is frozen)
            vae_rate = self.run_vae(pool, steps + 2, None, profile=True)
            self.scaling_factor = 1.0
            result = {"vae_steps_per_s": vae_rate, "vae_images_per_s": vae_rate * cfg.vae_batch_size}
        unet_rate = self.run_unet(pool, steps + 2, profile=True)
        result = {
            **result,
            "unet_steps_per_s": unet_rate,
            "unet_samples_per_s": unet_rate * cfg.batch_size,
            "scenes_rendered_per_s_one_process": scenes_per_s,
        }
        self.log("profile", device=str(self.device), steps=steps, **result)
        return result


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="shapes-train-")


# --------------------------------------------------------------------------------------------------------------
# Sampling (for the model card).
# --------------------------------------------------------------------------------------------------------------

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red circle",
    "a blue square",
    "a green triangle",
    "a yellow cross",
    "a top left red circle and a bottom right blue square",
    "a left green triangle and a right yellow cross",
)


@torch.no_grad()
def sample_images(
    model_dir: str | Path,
    prompts: Sequence[str],
    per_prompt: int = 4,
    steps: int = 50,
    guidance: float = 4.0,
    seed: int = 0,
    device: str = "cpu",
) -> list[list[np.ndarray]]:
    """Generate images with diffusers' ``StableDiffusionPipeline`` assembled from a model folder.

    Args:
        model_dir (`str` or `Path`): a model folder (``save_model_folder`` layout).
        prompts (`Sequence[str]`): text prompts.
        per_prompt (`int`, *optional*, defaults to 4): images per prompt.
        steps (`int`, *optional*, defaults to 50): DDIM steps.
        guidance (`float`, *optional*, defaults to 4.0): classifier-free guidance scale.
        seed (`int`, *optional*, defaults to 0): seed of the initial noises (image ``j`` of every prompt uses the
            same noise).
        device (`str`, *optional*, defaults to ``"cpu"``): where to run.

    Returns:
        `list[list[np.ndarray]]`: per prompt, ``per_prompt`` (64, 64, 3) uint8 images.
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=torch.float32,
    ).to(device)
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return pipeline_samples(pipe, size, prompts, per_prompt, steps, guidance, seed)


@torch.no_grad()
def pipeline_samples(
    pipe, size: int, prompts: Sequence[str], per_prompt: int, steps: int, guidance: float, seed: int
) -> list[list[np.ndarray]]:
    """Sample a diffusers text-to-image pipeline (either shapes model's): per prompt, ``per_prompt`` (size, size, 3)
    uint8 images, image ``j`` of every prompt from the noise of seed ``seed + j``."""
    pipe.set_progress_bar_config(disable=True)
    out: list[list[np.ndarray]] = []
    for prompt in prompts:
        gens = [torch.Generator(device="cpu").manual_seed(seed + j) for j in range(per_prompt)]
        result = pipe(
            [prompt] * per_prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        )
        out.append([np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in result.images])
    return out


def sample_grid(
    model_dir: str | Path,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    out_png: str | Path = "samples.png",
    steps: int = 50,
    guidance: float = 4.0,
    seed: int = 0,
    per_prompt: int = 4,
    scale: int = 2,
    device: str = "cpu",
) -> Path:
    """A labelled grid of samples (one row per prompt) for the model card.

    Args:
        model_dir (`str` or `Path`): the model folder.
        prompts (`Sequence[str]`, *optional*): the prompts, defaults to ``DEFAULT_PROMPTS``.
        out_png (`str` or `Path`, *optional*, defaults to ``"samples.png"``): the PNG to write.
        steps (`int`, *optional*, defaults to 50), guidance (`float`, *optional*, defaults to 4.0),
        seed (`int`, *optional*, defaults to 0), per_prompt (`int`, *optional*, defaults to 4): as ``sample_images``.
        scale (`int`, *optional*, defaults to 2): nearest-neighbour upscaling of each 64×64 sample.
        device (`str`, *optional*, defaults to ``"cpu"``): where to run.

    Returns:
        `Path`: the PNG written.
    """
    from PIL import Image, ImageDraw

    rows = sample_images(model_dir, prompts, per_prompt, steps, guidance, seed, device)
    cell = IMAGE_SIZE * scale
    label_w = 7 * max(len(p) for p in prompts) // 2 + 12
    label_w = max(label_w, 160)
    grid = Image.new("RGB", (label_w + per_prompt * (cell + 4), len(prompts) * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (prompt, images) in enumerate(zip(prompts, rows)):
        y = r * (cell + 4)
        words, lines, line = prompt.split(), [], ""
        for w in words:  # wrap the prompt to the label column
            if len(line) + len(w) + 1 > (label_w - 8) // 6:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for k, text in enumerate(lines):
            draw.text((4, y + 4 + 12 * k), text, fill=(0, 0, 0))
        for c, im in enumerate(images):
            tile = Image.fromarray(im).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + c * (cell + 4), y))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


# --------------------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m research.shapes.train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m research.shapes.train",
        description="Train the shapes-world diffusion model (VAE, then UNet) from scratch.",
    )
    d = TrainConfig()
    p.add_argument("--out", help="run folder (state, checkpoints, log, final model/)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--time-budget-s", type=float, help="wall clock for the whole run, all legs together")
    p.add_argument(
        "--vae-time-s", type=float, help="cap on phase 1 (default: min(60 s, 20%%) of the budget on GPU, 15%% on CPU)"
    )
    p.add_argument("--vae-steps", type=int, help="phase-1 steps (default 4000 GPU / 1500 CPU)")
    p.add_argument("--vae-batch-size", type=int, help="default 128 GPU / 32 CPU")
    p.add_argument("--vae-lr", type=float, default=d.vae_lr)
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--unet-steps", type=int, help="phase-2 steps (default 100000 GPU / 30000 CPU; the budget stops)")
    p.add_argument("--batch-size", type=int, help="phase-2 batch (default 256 GPU / 32 CPU)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--latents", choices=("sample", "mean"), default=d.latents, help="VAE posterior sample or mean")
    p.add_argument("--pool-size", type=int, help="training scenes held in memory (default 150000 GPU / 20000 CPU)")
    p.add_argument("--workers", type=int, help="processes rendering the pool (0: in this process)")
    p.add_argument("--loader-workers", type=int, help="DataLoader processes building batches (0: in this process)")
    p.add_argument("--save-every", type=int, help="steps between resumable states and ckpt-<step>/ folders")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--log-every", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--profile-steps", type=int, default=0, help="time N steps of each phase, print steps/s, exit")
    p.add_argument("--token-embedding-std", type=float, default=d.token_embedding_std)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="no bf16 autocast on GPU")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (about 95 s of compiling on an H200: not worth it for runs under ~15 min)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default on CPU: cores - loader workers)")
    p.add_argument("--tiny", action="store_true", help="tiny models (tests only)")
    p.add_argument(
        "--probe-scenes",
        type=int,
        help="val scenes for the binding probe logged at each checkpoint (default 64 GPU / 16 CPU; 0: none)",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start a new leg from a model folder (its VAE, frozen text encoder and EMA UNet); skips phase 1",
    )
    add_lever_arguments(p)
    p.add_argument("--sample-grid", metavar="PNG", help="after training, write a sample grid of model/ here")
    return p


def add_lever_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe levers of issue 17 (captions, checkpoint choice; UNet sizes)."""
    d = TrainConfig()
    p.add_argument("--unet-channels", help="UNet widths per level, e.g. 64,128,160 (default 64,96,128)")
    p.add_argument("--unet-heads", help="UNet attention heads per level, e.g. 4,4,4 (default 2,3,4)")
    p.add_argument("--unet-layers-per-block", type=int, help="UNet layers per block (default 1)")
    p.add_argument(
        "--p-drop-position",
        type=float,
        default=d.p_drop_position,
        help="per-object probability that a caption omits the position words (default 0.3; lower = more grounding)",
    )
    p.add_argument("--p-drop-colour", type=float, default=d.p_drop_colour, help="same for colour (default 0.4)")
    p.add_argument(
        "--keep-best",
        metavar="METRIC",
        help="copy the checkpoint whose binding probe METRIC on val is best to OUT/best/ (e.g. level_4, all_levels)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    trainer = Trainer(cfg)
    if cfg.profile_steps > 0:
        trainer.run_profile()
        return 0
    folder = trainer.train()
    if args.sample_grid:
        png = sample_grid(folder, out_png=args.sample_grid, device=trainer.cfg.device)
        trainer.log("sample_grid", path=str(png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
