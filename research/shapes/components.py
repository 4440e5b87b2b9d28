"""The shapes-world diffusion model: Stable Diffusion's four component classes at a small size.

Same classes and folder layout as Stable Diffusion 1.x, so that the segmenter treats this model exactly like SD:

- ``AutoencoderKL`` with one downsampling: 64×64×3 images ↔ 32×32×4 latents (SD: 512×512×3 ↔ 64×64×4).
- ``UNet2DConditionModel`` on 32×32×4 latents with cross-attention at three resolutions, 32, 16 and 8 (SD: 64, 32,
  16 and 8), 32-dimensional heads, about 6.2M parameters.
- ``CLIPTextModel`` with one layer and hidden size 256, frozen (never trained), its token embeddings re-drawn with
  std 1.0 (issue 7, probe 2: with CLIP's default 0.02 the context swamps the word, and two shape words in one caption
  end up nearly identical after the encoder; with large embeddings each output state stays close to its own word).
- ``CLIPTokenizer`` whose vocabulary holds every word of ``captions.VOCABULARY`` as one token.
- Stable Diffusion's noise schedule (scaled_linear betas 0.00085 → 0.012 over 1000 steps, epsilon prediction).

The configurations are written here in code; ``save_model_folder`` writes the diffusers folder (safetensors only).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Largest size of one file of a model folder, and of the whole folder, in bytes.
MAX_FILE_BYTES = 16_000_000
MAX_FOLDER_BYTES = 25_000_000

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 1.0,  # replaced after training by 1 / std of the latents, as SD's 0.18215
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (64, 96, 128),
    "layers_per_block": 1,
    "cross_attention_dim": 256,
    # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the number of heads (a historical misnomer):
    # 2, 3 and 4 heads of 32 dimensions at the 32, 16 and 8 levels.
    "attention_head_dim": (2, 3, 4),
    "norm_num_groups": 32,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 256,
}
TOKEN_EMBEDDING_STD = 1.0

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

#: Much smaller models of the same structure, for tests.
TINY_VAE_OVERRIDES: dict[str, Any] = {"block_out_channels": (8, 16), "norm_num_groups": 4}
TINY_UNET_OVERRIDES: dict[str, Any] = {
    "block_out_channels": (16, 24, 32),
    "attention_head_dim": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
}
TINY_TEXT_ENCODER_OVERRIDES: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "projection_dim": 32}

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def package_folder() -> Path:
    """The folder of the ``diffsegmenter`` package this process imports (its shipped model sits in ``models/shapes``)."""
    import diffsegmenter

    return Path(diffsegmenter.__file__).resolve().parent


#: Files a training run writes into its ``--out``; a folder holding one holds a run.
RUN_FILES: tuple[str, ...] = ("train_config.json", "log.jsonl", "state.pt", "best.json", "model")


def check_new_run_dir(out: Path, flag: str = "--out") -> None:
    """Refuse a training ``out`` that already holds a run (unless the caller resumes it): a fresh run there would
    overwrite its config, checkpoints and model, append to its log and keep its ``best/`` (another run's model).

    Raises:
        ValueError: naming what the folder holds and the way out.
    """
    held = [name for name in RUN_FILES if (out / name).exists()] + sorted(p.name for p in out.glob("ckpt-*"))
    if held:
        raise ValueError(
            f"{flag} {out} already holds a training run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): "
            "pass --resume to continue it, or give a new folder"
        )


def check_out_dir(out_dir: str | Path, flag: str = "--out", record: str | Sequence[str] | None = None) -> Path:
    """Refuse an output folder inside the installed ``diffsegmenter`` package, and one that holds ``record`` (the
    file or files the caller writes, e.g. its report and a ``segmenter_config.json``: an earlier run's, which it
    would overwrite).

    Training and tuning write a new folder; a maintainer copies what should ship into
    ``src/diffsegmenter/models/shapes/`` by hand, so that no run rewrites the installed model.

    Returns:
        `Path`: ``out_dir`` as given.

    Raises:
        ValueError: ``out_dir`` is the package folder or lies inside it, or holds ``record``.
    """
    out, pkg = Path(out_dir), package_folder()
    if out.resolve() == pkg or pkg in out.resolve().parents:
        raise ValueError(
            f"{flag} {out} is inside the installed diffsegmenter package ({pkg}); write to a new folder (e.g. "
            "runs/...) and copy what should ship into src/diffsegmenter/models/shapes/ by hand"
        )
    for name in [record] if isinstance(record, str) else list(record or []):
        if (out / name).exists():
            raise ValueError(f"{flag} {out} already holds {name}, an earlier run's record: give a new folder")
    return out


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def build_vae(seed: int = 0, **overrides: Any):
    """The shapes-world ``AutoencoderKL`` (random weights).

    Args:
        seed (`int`, *optional*, defaults to 0): torch seed for the initial weights.
        **overrides: entries replacing those of ``VAE_CONFIG``.

    Returns:
        `AutoencoderKL`: float32, on CPU. Encodes (B, 3, 64, 64) in [-1, 1] to (B, 4, 32, 32) latents.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**VAE_CONFIG, **overrides})


def build_unet(seed: int = 0, **overrides: Any):
    """The shapes-world ``UNet2DConditionModel`` (random weights).

    Args:
        seed (`int`, *optional*, defaults to 0): torch seed for the initial weights.
        **overrides: entries replacing those of ``UNET_CONFIG``.

    Returns:
        `UNet2DConditionModel`: float32, on CPU, for (B, 4, 32, 32) latents and (B, 77, 256) text states.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_tokenizer(out_dir: str | Path, words: Iterable[str] | None = None) -> Path:
    """Write the shapes tokenizer (each word of ``captions.VOCABULARY`` one token) to a folder.

    Args:
        out_dir (`str` or `Path`): folder to write.
        words (`Iterable[str]`, *optional*): the words; defaults to ``captions.VOCABULARY``.

    Returns:
        `Path`: the folder, loadable with ``CLIPTokenizer.from_pretrained``.
    """
    from .captions import VOCABULARY
    from .tokenizer import save_tokenizer

    return save_tokenizer(VOCABULARY if words is None else words, out_dir)


def build_text_encoder(
    tokenizer: Any,
    seed: int = 0,
    token_embedding_std: float = TOKEN_EMBEDDING_STD,
    **overrides: Any,
):
    """The shapes-world ``CLIPTextModel``: one layer, random and frozen, with large token embeddings.

    Args:
        tokenizer (`CLIPTokenizer` or `str` or `Path`): the tokenizer (or its folder), for the vocabulary size and
            the special token ids.
        seed (`int`, *optional*, defaults to 0): seed of the weights (the model is never trained: the seed is the
            model).
        token_embedding_std (`float`, *optional*, defaults to 1.0): std of the re-drawn token embeddings.
        **overrides: entries replacing those of ``TEXT_ENCODER_CONFIG``.

    Returns:
        `CLIPTextModel`: float32, on CPU, in eval mode, with ``requires_grad`` off.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    if isinstance(tokenizer, (str, Path)):
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer))
    return seeded_text_encoder(
        CLIPTextModel, tokenizer, seed, token_embedding_std, **{**TEXT_ENCODER_CONFIG, **overrides}
    )


def seeded_text_encoder(cls, tokenizer, seed: int, token_embedding_std: float, **config: Any):
    """A random, frozen CLIP text model of class ``cls`` (``CLIPTextModel`` or ``CLIPTextModelWithProjection``):
    weights from torch seed ``seed``, then its token embeddings redrawn from N(0, ``token_embedding_std``²) with
    seed ``seed + 1`` (large, so that shape words stay distinct in context). ``config``: ``CLIPTextConfig`` entries
    besides the tokenizer's vocabulary size and special ids. Float32, CPU, eval mode, ``requires_grad`` off."""
    from transformers import CLIPTextConfig

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    torch.manual_seed(seed)
    model = cls(text_config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=gen) * token_embedding_std)
    model.requires_grad_(False)
    return model.eval()


def build_scheduler(kind: str = "ddpm"):
    """Stable Diffusion's noise schedule as a diffusers scheduler.

    Args:
        kind (`str`, *optional*, defaults to ``"ddpm"``): ``"ddpm"`` (training: ``add_noise``) or ``"ddim"``
            (sampling, and the class saved in model folders; same betas and config keys).

    Returns:
        `DDPMScheduler` or `DDIMScheduler`.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind == "ddpm":
        cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"}
        return DDPMScheduler(**cfg)
    if kind == "ddim":
        return DDIMScheduler(**SCHEDULER_CONFIG)
    raise ValueError(f"unknown scheduler kind {kind!r}; expected 'ddpm' or 'ddim'")


def build_components(
    tokenizer_dir: str | Path,
    seed: int = 0,
    tiny: bool = False,
    token_embedding_std: float = TOKEN_EMBEDDING_STD,
    vae_overrides: Mapping[str, Any] | None = None,
    unet_overrides: Mapping[str, Any] | None = None,
    text_encoder_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """All components, with a tokenizer written to ``tokenizer_dir``.

    Args:
        tokenizer_dir (`str` or `Path`): where to write the tokenizer files.
        seed (`int`, *optional*, defaults to 0): seed of every random initialisation.
        tiny (`bool`, *optional*, defaults to `False`): use the ``TINY_*_OVERRIDES`` (tests).
        token_embedding_std (`float`, *optional*, defaults to 1.0): see ``build_text_encoder``.
        vae_overrides, unet_overrides, text_encoder_overrides (`Mapping`, *optional*): further config entries.

    Returns:
        `dict[str, Any]`: ``vae``, ``unet``, ``text_encoder``, ``tokenizer`` (a ``CLIPTokenizer``),
        ``tokenizer_dir`` (`Path`) and ``scheduler`` (a ``DDIMScheduler``).
    """
    from transformers import CLIPTokenizer

    tok_dir = build_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    vae_kw = {**(TINY_VAE_OVERRIDES if tiny else {}), **(vae_overrides or {})}
    unet_kw = {**(TINY_UNET_OVERRIDES if tiny else {}), **(unet_overrides or {})}
    text_kw = {**(TINY_TEXT_ENCODER_OVERRIDES if tiny else {}), **(text_encoder_overrides or {})}
    text_encoder = build_text_encoder(tokenizer, seed=seed, token_embedding_std=token_embedding_std, **text_kw)
    unet_kw.setdefault("cross_attention_dim", text_encoder.config.hidden_size)
    return {
        "vae": build_vae(seed, **vae_kw),
        "unet": build_unet(seed, **unet_kw),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "tokenizer_dir": tok_dir,
        "scheduler": build_scheduler("ddim"),
    }


def model_index(scheduler_class: str = "DDIMScheduler") -> dict[str, Any]:
    """The ``model_index.json`` of a Stable-Diffusion-style folder without safety checker.

    Args:
        scheduler_class (`str`, *optional*, defaults to ``"DDIMScheduler"``): diffusers class of the scheduler.

    Returns:
        `dict[str, Any]`: the JSON content.
    """
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def folder_size(path: str | Path) -> tuple[int, int]:
    """Total bytes of the files under a folder, and the largest file's bytes."""
    sizes = [p.stat().st_size for p in Path(path).rglob("*") if p.is_file()]
    return sum(sizes), max(sizes, default=0)


def _legacy_text_encoder_keys(folder: Path) -> None:
    """Give the text encoder's weights the ``text_model.`` key prefix of Stable Diffusion's checkpoints.

    transformers 5 saves ``CLIPTextModel`` weights without the prefix, which transformers 4.x (allowed by this
    package's requirements) would silently fail to load; with the prefix both load them (5.x maps the legacy keys).
    """
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        weights = load_file(str(path))
        if any(k.startswith("text_model.") for k in weights):
            continue
        save_file({f"text_model.{k}": v for k, v in weights.items()}, str(path), metadata={"format": "pt"})


def save_model_folder(
    out_dir: str | Path,
    vae: torch.nn.Module,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    tokenizer_dir: str | Path,
    scheduler: Any,
    dtype: torch.dtype = torch.float16,
    extra_files: Mapping[str, str | bytes] | None = None,
    check_sizes: bool = True,
) -> int:
    """Write a model folder in the diffusers Stable Diffusion layout, safetensors only.

    Layout: ``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and ``model_index.json``; loadable
    with each class's ``from_pretrained(folder, subfolder=...)`` and with ``StableDiffusionPipeline.from_pretrained``.
    The folder is written next to ``out_dir`` first and then moved into place, so that an interrupted save never
    leaves a half-written model; an existing model folder at ``out_dir`` is replaced.

    Args:
        out_dir (`str` or `Path`): the model folder.
        vae (`AutoencoderKL`), unet (`UNet2DConditionModel`), text_encoder (`CLIPTextModel`): the models; copies are
            cast to ``dtype``, the arguments are left untouched.
        tokenizer_dir (`str` or `Path`): a tokenizer folder (``build_tokenizer``), copied.
        scheduler (`SchedulerMixin`): saved with its own class (``DDIMScheduler`` for sampling).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float16`): dtype of the saved weights.
        extra_files (`Mapping[str, str | bytes]`, *optional*): more files to write at the folder's root
            (e.g. ``"README.md"``).
        check_sizes (`bool`, *optional*, defaults to `True`): raise if a file exceeds ``MAX_FILE_BYTES`` or the
            folder ``MAX_FOLDER_BYTES``.

    Returns:
        `int`: total size of the folder in bytes.

    Raises:
        ValueError: sizes over the limits (the folder is not written), or ``out_dir`` exists and is not a model folder.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise ValueError(f"{out} exists and is not a model folder; refusing to replace it")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name, model in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
            clone = copy.deepcopy(model).cpu()
            with torch.no_grad():  # cast tensors directly: ModelMixin.to(dtype) warns about fp32-kept modules
                for t in [*clone.parameters(), *clone.buffers()]:
                    if t.is_floating_point():
                        t.data = t.data.to(dtype)
            clone.save_pretrained(tmp / name, safe_serialization=True)
            del clone
        _legacy_text_encoder_keys(tmp / "text_encoder")
        tok_out = tmp / "tokenizer"
        tok_out.mkdir()
        for fname in _TOKENIZER_FILES:
            shutil.copyfile(Path(tokenizer_dir) / fname, tok_out / fname)
        scheduler.save_pretrained(tmp / "scheduler")
        index = model_index(type(scheduler).__name__)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        for fname, content in (extra_files or {}).items():
            target = tmp / fname
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        stray = [p.name for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if stray:
            raise ValueError(f"non-safetensors weight files written: {stray}")
        total, largest = folder_size(tmp)
        if check_sizes and (largest >= MAX_FILE_BYTES or total > MAX_FOLDER_BYTES):
            raise ValueError(
                f"model folder too large: {total} bytes in all (limit {MAX_FOLDER_BYTES}), largest file {largest} "
                f"bytes (limit {MAX_FILE_BYTES})"
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("saved model folder %s (%.2f MB)", out, total / 1e6)
    return total
