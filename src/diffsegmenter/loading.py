"""Load the components segmentation needs from ``"shapes"``, a hub id, or a local diffusers folder."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .hub import ModelNotFoundError, load_component, looks_like_local_path
from .settings import ModelSettings

__all__ = ["SHIPPED_MODELS", "resolve_model", "load_components"]

#: Models that ship inside the package, by short name.
SHIPPED_MODELS = ("shapes",)


def resolve_model(model: str | os.PathLike[str]) -> str:
    """Turn a short name of a shipped model into its folder; leave hub ids and paths as they are.

    Raises:
        ModelNotFoundError: a shipped model whose files are missing from this installation.
    """
    if isinstance(model, str) and model in SHIPPED_MODELS:
        folder = Path(str(resources.files("diffsegmenter") / "models" / model))
        if not (folder / "unet").is_dir():
            raise ModelNotFoundError(
                f"the shipped model {model!r} is missing from this installation (looked in {folder}); reinstall "
                "diffsegmenter from a full source checkout (`pip install .`), or train it with "
                "`python -m research.shapes.train` (from a source checkout's root) and pass the output folder"
            )
        return str(folder)
    return str(model)


def load_components(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> dict[str, Any]:
    """Load vae, unet, text_encoder, tokenizer and scheduler (no safety checker), safetensors only.

    Args:
        model: ``"shapes"``, a hub id, or a folder in the diffusers layout.
        device: where the models go.
        dtype: model dtype (e.g. ``torch.float16`` on GPU).
        local_files_only: never contact the hub (default: ``HF_HUB_OFFLINE``).

    Returns:
        `dict[str, Any]`: the five components, plus ``"settings"`` (the folder's
        :class:`~diffsegmenter.settings.ModelSettings`, empty when it has no ``segmenter_config.json``),
        ``"segmenter_config"`` (that file's path or None) and ``"classes"`` (the model's own class names, if it
        declares them; the same as ``settings.classes``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = resolve_model(model)
    kw = {"local_files_only": local_files_only}
    parts: dict[str, Any] = {
        "tokenizer": load_component(CLIPTokenizer, src, subfolder="tokenizer", **kw),
        "scheduler": load_component(DDIMScheduler, src, subfolder="scheduler", **kw),
        "text_encoder": load_component(CLIPTextModel, src, subfolder="text_encoder", torch_dtype=dtype, **kw),
        "vae": load_component(AutoencoderKL, src, subfolder="vae", torch_dtype=dtype, **kw),
        "unet": load_component(UNet2DConditionModel, src, subfolder="unet", torch_dtype=dtype, **kw),
    }
    for name in ("text_encoder", "vae", "unet"):
        parts[name] = parts[name].to(device)
    parts["segmenter_config"] = None
    parts["settings"] = ModelSettings()
    if looks_like_local_path(src):
        cfg = Path(src).expanduser() / "segmenter_config.json"
        if cfg.is_file():
            parts["segmenter_config"] = str(cfg)
            parts["settings"] = ModelSettings.from_file(cfg)
    parts["classes"] = parts["settings"].classes
    return parts
