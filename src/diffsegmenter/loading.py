"""Load the components segmentation needs from ``"shapes"``, a hub id, or a local diffusers folder."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .hub import ModelNotFoundError, load_component, looks_like_local_path, reads_cache_only
from .model_files import check_model_files, check_not_single_file, model_root
from .settings import ModelSettings

logger = logging.getLogger(__name__)

__all__ = ["SHIPPED_MODELS", "folder_settings", "model_key", "resolve_model", "load_components"]

#: Models that ship inside the package: short name -> the research command that trains one (source checkout).
SHIPPED_MODELS: dict[str, str] = {"shapes": "python -m research.shapes.train"}


def _models_root() -> Path:
    """The package's ``models/`` folder (where shipped models lie)."""
    return Path(str(resources.files("diffsegmenter") / "models"))


def model_key(model: str | os.PathLike[str]) -> str:
    """How a run records the model it was given, so that two spellings of one folder compare equal: a local folder
    as its absolute path (``tiny``, ``./tiny`` and ``/home/me/tiny`` are one; the same relative text run from
    elsewhere is another), a shipped model's name or a hub id as given."""
    if isinstance(model, str) and model in SHIPPED_MODELS:
        return model
    if looks_like_local_path(model):
        return os.path.abspath(os.path.expanduser(os.fspath(model)))
    return os.fspath(model)


def resolve_model(model: str | os.PathLike[str]) -> str:
    """Turn a short name of a shipped model into its folder; leave hub ids and paths as they are.

    A shipped folder counts as present when it has the ``model_index.json`` every diffusers pipeline folder has (the
    UNet and the transformer families alike).

    Raises:
        ModelNotFoundError: a shipped model whose files are missing from this installation.
    """
    if isinstance(model, str) and model in SHIPPED_MODELS:
        folder = _models_root() / model
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the shipped model {model!r} is missing from this installation (looked in {folder}); reinstall "
                f"diffsegmenter from a full source checkout (`pip install .`), or train it with "
                f"`{SHIPPED_MODELS[model]}` (from a source checkout's root) and pass the output folder"
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
        "text_encoder": load_component(CLIPTextModel, src, subfolder="text_encoder", dtype=dtype, strict=True, **kw),
        "vae": load_component(AutoencoderKL, src, subfolder="vae", dtype=dtype, strict=True, **kw),
        "unet": load_component(UNet2DConditionModel, src, subfolder="unet", dtype=dtype, strict=True, **kw),
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


#: ``model_index.json``'s ``_class_name`` -> backbone family. The image-to-image and inpainting pipelines of a family
#: save the same components as its text-to-image pipeline (an inpainting denoiser, which takes the mask as input
#: channels, is then refused from its config by :func:`_check_text_to_image_folder`, naming why).
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
    "FluxFillPipeline": "flux",
    "PixArtSigmaPipeline": "pixart",
    "PixArtAlphaPipeline": "pixart",
}

#: The classes ``model_index.json`` may list for the SD1/SD2 components (loaded with these classes).
_SD_CLASSES = {
    "vae": ("diffusers", ("AutoencoderKL",)),
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "text_encoder": ("transformers", ("CLIPTextModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
}
#: Families whose denoiser was trained on the variance-preserving (DDPM) noise, and those trained by flow matching.
_DDPM_FAMILIES = ("sd", "sdxl", "pixart")
_FLOW_FAMILIES = ("sd3", "flux")

#: Components each family loads (``model_index.json`` keys); the others (safety checker, image encoder...) never.
_FAMILY_PARTS = {
    "sdxl": ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2"),
    "sd3": (
        "vae",
        "transformer",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "scheduler",
        "text_encoder_3",
        "tokenizer_3",
    ),
    "flux": ("vae", "transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
    "pixart": ("vae", "transformer", "text_encoder", "tokenizer", "scheduler"),
}
_OPTIONAL_PARTS = {"text_encoder_3", "tokenizer_3"}


def read_model_index(src: str, local_files_only: bool | None = None) -> dict[str, Any]:
    """The folder's (or hub repo's) ``model_index.json``; {} when it has none (SD-layout folders without one).

    Raises:
        ModelNotFoundError: the file is not a JSON object (a damaged copy), naming it.
    """
    try:
        index = _read_json(src, "model_index.json", local_files_only)
    except ValueError as exc:
        raise ModelNotFoundError(
            f"{src}: model_index.json is not valid JSON ({exc}); download or copy the model again"
        ) from None
    if not isinstance(index, dict):
        raise ModelNotFoundError(
            f"{src}: model_index.json holds a JSON {type(index).__name__}, not the object of components diffusers "
            "writes; download or copy the model again"
        )
    return index


def _read_json(src: str, filename: str, local_files_only: bool | None) -> dict[str, Any]:
    """A small JSON file of a model folder or hub repo (``"unet/config.json"``); {} when it cannot be had (the
    component loader then gives the actionable error)."""
    import json

    if looks_like_local_path(src):
        path = Path(src).expanduser() / filename
        return json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(src, filename, local_files_only=reads_cache_only(local_files_only))
    except Exception:  # noqa: BLE001 - the component loader below gives the actionable error
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8-sig"))


def model_family(index: dict[str, Any]) -> str:
    """The backbone family of a ``model_index.json``: from its ``_class_name``, else (no pipeline named, as in old
    SD folders) from its components, ``"sd"`` when they name no other family.

    Raises:
        ValueError: ``_class_name`` names a pipeline of no supported family (Kandinsky, Stable Cascade, a
            ControlNet or upscaling pipeline, a custom one); the message lists the supported pipelines.
    """
    name = index.get("_class_name")
    entry = index.get("transformer")  # [library, class]; anything else (damaged) names no class
    transformer = entry[1] if isinstance(entry, list) and len(entry) > 1 else None
    by_transformer = {
        "SD3Transformer2DModel": "sd3",
        "FluxTransformer2DModel": "flux",
        "PixArtTransformer2DModel": "pixart",
    }
    if name:
        if str(name) in PIPELINE_FAMILIES:
            family = PIPELINE_FAMILIES[str(name)]
            listed = by_transformer.get(str(transformer))
            if listed is not None and listed != family:  # it read as a "conditioned model" of the named family
                raise ValueError(
                    f"model_index.json names a {name} ({family}) but lists a {transformer} ({listed}) as its "
                    f"transformer: the file was edited or belongs to another model; set _class_name to the "
                    f"{listed} pipeline, or use the model's own model_index.json"
                )
            return family
        supported = sorted(
            n for n in PIPELINE_FAMILIES if "Img2Img" not in n and "Inpaint" not in n and "Fill" not in n
        )
        raise ValueError(
            f"the model is a {name} (model_index.json's _class_name), which diffsegmenter does not segment with: it "
            f"reads text-to-image models of these pipelines: {', '.join(supported)} (their image-to-image versions "
            "too). For a ControlNet or adapter pipeline, pass its base model"
        )
    if transformer in by_transformer:
        return by_transformer[str(transformer)]
    return "sdxl" if index.get("text_encoder_2") and index.get("unet") else "sd"


def load_backbone(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
):
    """Load any supported family's backbone, chosen from ``model_index.json``.

    Returns:
        `tuple`: (backbone, :class:`~diffsegmenter.settings.ModelSettings` of the folder's ``segmenter_config.json``).
    """
    from . import backbones

    src = resolve_model(model)
    check_not_single_file(src)
    index = read_model_index(src, local_files_only)  # read once: for a hub id it is a cache lookup or a download
    try:
        family = model_family(index)
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    if family == "sdxl":
        _check_not_refiner(src, index)
    if family == "sd":
        _check_sd_components(src, index)
    _check_text_to_image_folder(src, family, local_files_only)  # before gigabytes of weights are read
    _check_scheduler_kind(src, family, index, local_files_only)
    names = ("tokenizer", "scheduler", "text_encoder", "vae", "unet") if family == "sd" else _FAMILY_PARTS[family]
    check_model_files(src, names, optional=_OPTIONAL_PARTS, local_files_only=local_files_only)  # every part, first
    if family == "sd":
        parts = load_components(model, device=device, dtype=dtype, local_files_only=local_files_only)
        names = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
        return backbones.StableDiffusionBackbone(*(parts[n] for n in names)), parts["settings"]
    parts = _load_listed(src, index, _FAMILY_PARTS[family], device, dtype, local_files_only)
    if family == "sdxl":
        zeros = bool(index.get("force_zeros_for_empty_prompt", True))  # StableDiffusionXLPipeline's default
        bb = backbones.StableDiffusionXLBackbone(**parts, force_zeros_for_empty_prompt=zeros)
    elif family == "sd3":
        bb = backbones.StableDiffusion3Backbone(**parts)
    elif family == "flux":
        bb = backbones.FluxBackbone(**parts)
    else:  # PixArt-α's pipeline reads 120 T5 tokens, Σ's 300
        from .backbones.pixart import PIXART_ALPHA_T5_LENGTH, PIXART_T5_LENGTH

        alpha = index.get("_class_name") == "PixArtAlphaPipeline"
        bb = backbones.PixArtBackbone(**parts, max_length=PIXART_ALPHA_T5_LENGTH if alpha else PIXART_T5_LENGTH)
    return bb, _folder_settings(src)


def _check_not_refiner(src: str, index: dict[str, Any]) -> None:
    """Refuse an SDXL refiner folder (``stabilityai/stable-diffusion-xl-refiner-1.0``: no first text encoder, time ids
    with an aesthetic score) before loading anything.

    Raises:
        ValueError: the folder lists no ``text_encoder`` or sets ``requires_aesthetics_score``; the message names the
            base model to use instead.
    """
    entry = index.get("text_encoder")
    no_first_encoder = not (isinstance(entry, list) and len(entry) == 2 and None not in entry)
    if no_first_encoder or index.get("requires_aesthetics_score"):
        why = "it has no first text encoder (text_encoder is null)" if no_first_encoder else ""
        if index.get("requires_aesthetics_score"):
            why += (
                " and " if why else ""
            ) + "its UNet is conditioned on an aesthetic score (requires_aesthetics_score)"
        raise ValueError(
            f"{src} is an SDXL refiner ({index.get('_class_name', 'SDXL')}): {why}. A refiner only polishes the base "
            "model's output at low noise and is not supported for segmentation; use the SDXL base model instead, "
            "e.g. stabilityai/stable-diffusion-xl-base-1.0"
        )


def _check_text_to_image_folder(src: str, family: str, local_files_only: bool | None) -> None:
    """Refuse an inpainting, depth-, image- or control-conditioned model from its configs alone (the denoiser's
    ``in_channels`` against the VAE's ``latent_channels``), before any weights are read; the backbone checks the
    same on the loaded modules. Skipped when a config cannot be read (the component loader reports that).

    Raises:
        ValueError: from :meth:`~diffsegmenter.backbones.DiffusionBackbone.check_text_to_image_inputs`.
    """
    from . import backbones

    cls = {
        "sd": backbones.StableDiffusionBackbone,
        "sdxl": backbones.StableDiffusionXLBackbone,
        "sd3": backbones.StableDiffusion3Backbone,
        "flux": backbones.FluxBackbone,
        "pixart": backbones.PixArtBackbone,
    }[family]
    try:
        given = _read_json(src, f"{cls.denoiser_folder}/config.json", local_files_only).get("in_channels")
        latent = _read_json(src, "vae/config.json", local_files_only).get("latent_channels")
    except (ValueError, AttributeError):  # not JSON, or not an object: the component loader names the file
        return
    if isinstance(given, int) and isinstance(latent, int):
        cls.check_text_to_image_inputs(given, latent)


def _check_sd_components(src: str, index: dict[str, Any]) -> None:
    """Refuse an SD1/SD2 ``model_index.json`` that lists components of other classes than the ones the SD backbone
    loads (a RoBERTa text encoder as in AltDiffusion, a custom UNet) or an SDXL folder's second text encoder under
    ``StableDiffusionPipeline`` (it would be dropped): those would load as the wrong model, or fail mid-run.

    Raises:
        ValueError: naming the component, the class listed and the class the SD backbone needs.
    """
    if index.get("text_encoder_2") or index.get("transformer"):
        extra = "text_encoder_2" if index.get("text_encoder_2") else "transformer"
        raise ValueError(
            f"{src}: model_index.json names {index.get('_class_name', 'no pipeline')} but lists a {extra!r}, which "
            "that pipeline does not have; the folder's model_index.json was edited or mixed up with another model's: "
            "download or copy the model again"
        )
    for name, (lib, classes) in _SD_CLASSES.items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2):
            continue  # absent: the component loader names the missing folder
        if entry[0] != lib or entry[1] not in classes:
            raise ValueError(
                f"{src}: model_index.json lists {name!r} as {entry[0]}.{entry[1]}; a Stable Diffusion 1/2 model's "
                f"{name} is {lib}.{' or '.join(classes)}, the only class diffsegmenter reads it with (it never runs "
                "a model's own code)"
            )


def _check_scheduler_kind(src: str, family: str, index: dict[str, Any], local_files_only: bool | None) -> None:
    """Refuse a scheduler of the other training objective: a flow-matching scheduler in a DDPM family's folder (SD1
    read it as DDIM with diffusers' default linear betas, a different noise level at every timestep; SDXL and PixArt
    failed at the first image) or a DDPM scheduler in SD3's or FLUX's.

    Raises:
        ValueError: naming the scheduler class found and the kind the family needs.
    """
    entry = index.get("scheduler")
    name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else None
    if name is None:
        try:
            name = _read_json(src, "scheduler/scheduler_config.json", local_files_only).get("_class_name")
        except (ValueError, AttributeError):
            return  # not JSON: the component loader names the file
    if not isinstance(name, str):
        return
    flow = name.startswith("FlowMatch")
    if family in _DDPM_FAMILIES and flow:
        need = "a DDPM-family scheduler (DDIM, PNDM, Euler, DPM-Solver...): the denoiser was trained on that noise"
    elif family in _FLOW_FAMILIES and not flow:
        need = "FlowMatchEulerDiscreteScheduler: the denoiser was trained by flow matching"
    else:
        return
    raise ValueError(
        f"{src}: its scheduler is {name}, and a {family} model needs {need}; put the scheduler folder the model was "
        "released with back (download or copy the model again)"
    )


def folder_settings(model: str | os.PathLike[str]) -> ModelSettings:
    """What a local model folder (or a shipped model) recommends, from its ``segmenter_config.json``; empty for a
    hub id or a folder without one. Reads no weights.

    Raises:
        ValueError: the file is not valid (naming it).
        ModelNotFoundError: a shipped model whose files are missing.
    """
    return _folder_settings(resolve_model(model))


def _folder_settings(src: str) -> ModelSettings:
    if looks_like_local_path(src):
        cfg = Path(src).expanduser() / "segmenter_config.json"
        if cfg.is_file():
            return ModelSettings.from_file(cfg)
    return ModelSettings()


def _load_listed(src, index, names, device, dtype, local_files_only) -> dict[str, Any]:
    """Load the named components with the classes ``model_index.json`` lists (from diffusers or transformers only:
    never remote code), safetensors only; an optional component listed as null (SD3 without T5) is None."""
    import importlib

    out: dict[str, Any] = {}
    # SD3 without T5, as `hf download ... --exclude "text_encoder_3/*"` leaves it (in a folder, or in the cache read
    # offline): model_index.json still lists T5
    root = model_root(src, local_files_only)
    no_t5 = root is not None and not (root / "text_encoder_3").is_dir()
    # tokenizers and the scheduler first: a damaged one fails before gigabytes of weights are read
    names = sorted(names, key=lambda n: not n.startswith(("tokenizer", "scheduler")))
    for name in names:
        if name in _OPTIONAL_PARTS and no_t5:
            if name == "text_encoder_3":
                logger.info("%s has no text_encoder_3 folder: loading without T5 (its tokens are zeros)", src)
            out[name] = None
            continue
        entry = index.get(name) or [None, None]
        lib, cls_name = (entry + [None, None])[:2] if isinstance(entry, list) else (None, None)
        if lib is None or cls_name is None:
            if name in _OPTIONAL_PARTS:
                out[name] = None
                continue
            raise ModelNotFoundError(f"{src}: model_index.json lists no {name!r}, which this model family needs")
        if lib not in ("diffusers", "transformers"):
            raise ModelNotFoundError(f"{src}: component {name!r} comes from {lib!r}; only diffusers/transformers load")
        cls = getattr(importlib.import_module(lib), str(cls_name), None)
        if cls is None:
            raise ModelNotFoundError(
                f"{src}: model_index.json lists {name!r} as {lib}.{cls_name}, which this {lib} does not have; "
                f"upgrade {lib} (pip install -U {lib}) or check the file"
            )
        kw: dict[str, Any] = {"local_files_only": local_files_only}
        is_model = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
        if is_model:
            part_dtype = dtype
            if name == "vae" and dtype == torch.float16:  # SDXL's and others' VAEs overflow in fp16 (force_upcast)
                part_dtype = torch.float32
            kw["dtype"] = part_dtype
        out[name] = load_component(cls, src, subfolder=name, strict=is_model, **kw)
        if is_model:
            out[name] = out[name].to(device)
    return out
