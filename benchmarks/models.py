"""Random-weight models for the benchmarks, built from configs in ``benchmarks/configs`` (nothing is downloaded).

Random weights cost exactly what trained ones cost: the same layers, shapes and kernels run. Two things depend on
content and are pinned here so that random weights do not run cheaper than real ones:

* **Caption length.** A trained BLIP may stop early; the released code lets it run to ``max_length=20`` tokens, so
  :func:`build_blip_large_captioner` sets ``min_new_tokens`` on the text decoder's generation config: every caption
  runs to the full 20-token budget, whatever the random weights say.
* **Attention sharpness.** Default random init gives attention logits with a standard deviation of about 0.3, so
  every softmax is nearly uniform: the self-attention completion returns an almost constant map (range ~1e-3 around
  0.5 at 512²), and the final min-max normalisation then blows float32 rounding up a thousandfold, which would make
  any two correct implementations "differ" by ~5e-4. Trained SD attends sharply. :func:`sharpen_attention` scales
  every attention layer's query and key projections by 4 (logits x16), which gives trained-like peaked maps; the
  shapes, kernels and so the cost are unchanged.
* **Tokens.** There is no SD or BLIP vocabulary here (no download), so the tokenizers are the test fixtures
  (``tests/fixtures/clip_tokenizer``, ``tests/fixtures/bert_tokenizer``). Token *ids* therefore differ from SD's 49k
  vocabulary, but the text encoder always runs on 77 positions, so its cost does not change. BLIP's LM head keeps
  the real 30,524-word width (the full matrix product runs every step); only words that both fixture tokenizers
  read as one token may be emitted (``suppress_tokens``), so a continuation costs as many CLIP tokens as a real
  caption (one per word) and always fits the 77-token prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
FIXTURES = REPO / "tests" / "fixtures"

__all__ = [
    "CONFIGS",
    "FIXTURES",
    "build_sd15",
    "build_blip_large_captioner",
    "build_tiny",
    "count_parameters",
    "sharpen_attention",
]


def _config(path: Path) -> dict[str, Any]:
    """A JSON config without its comment/metadata keys (those starting with ``_``)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def sharpen_attention(unet: torch.nn.Module, factor: float) -> int:
    """Scale the query and key projections of every attention layer by ``factor`` (logits by ``factor**2``).

    Args:
        unet (`torch.nn.Module`): a diffusers UNet.
        factor (`float`): 1 leaves the model unchanged.

    Returns:
        `int`: the number of attention layers changed.
    """
    from diffusers.models.attention_processor import Attention

    n = 0
    for module in unet.modules():
        if isinstance(module, Attention) and factor != 1.0:
            module.to_q.weight.mul_(factor)
            module.to_k.weight.mul_(factor)
            n += 1
    return n


def build_sd15(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attention_sharpness: float = 4.0,
) -> dict[str, Any]:
    """The Stable Diffusion v1.5 architecture with random weights (UNet ~860M, VAE, CLIP ViT-L/14 text encoder).

    Args:
        device (`str` or `torch.device`, *optional*, defaults to "cpu").
        dtype (`torch.dtype`, *optional*, defaults to float32).
        seed (`int`, *optional*, defaults to 0): seed of the random initialisation.
        attention_sharpness (`float`, *optional*, defaults to 4): :func:`sharpen_attention` factor for the UNet
            (1 = plain random init).

    Returns:
        `dict`: ``vae``, ``unet``, ``text_encoder``, ``tokenizer`` (the fixture CLIP tokenizer) and ``scheduler``,
        ready for :class:`diffsegmenter.DiffSegmenter`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")
    unet = UNet2DConditionModel.from_config(_config(CONFIGS / "sd15" / "unet.json"))
    sharpen_attention(unet, attention_sharpness)
    vae = AutoencoderKL.from_config(_config(CONFIGS / "sd15" / "vae.json"))
    text_cfg = _config(CONFIGS / "sd15" / "text_encoder.json")
    text_cfg.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text_cfg.pop("architectures", None)
    text_cfg.pop("model_type", None)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    scheduler = DDIMScheduler.from_config(_config(CONFIGS / "sd15" / "scheduler.json"))
    parts: dict[str, Any] = {"tokenizer": tokenizer, "scheduler": scheduler}
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        parts[name] = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return parts


def _blip_allowed_words(bert_tokenizer, clip_tokenizer) -> list[int]:
    """BERT fixture ids of plain words that the CLIP fixture tokenizer reads as one token."""
    allowed = []
    for word, idx in bert_tokenizer.get_vocab().items():
        if word.startswith("[") or word.startswith("##") or not word.isalpha():
            continue
        if len(clip_tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
            allowed.append(idx)
    return sorted(allowed)


def build_blip_large_captioner(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_length: int = 20,
):
    """A BLIP-large captioner (ViT-L/16 at 384², BERT-base decoder) with random weights, in a ``BlipCaptioner``.

    Generation always runs to ``max_length`` tokens (``min_new_tokens``), as the released code's budget allows.

    Args:
        device (`str` or `torch.device`, *optional*, defaults to "cpu").
        dtype (`torch.dtype`, *optional*, defaults to float32).
        seed (`int`, *optional*, defaults to 0): seed of the random initialisation.
        max_length (`int`, *optional*, defaults to 20): decoder length including the prefix (transformers' default,
            which the released code used).

    Returns:
        `diffsegmenter.captioner.BlipCaptioner`.
    """
    import transformers
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor, CLIPTokenizer

    from diffsegmenter.captioner import BlipCaptioner

    tokenizer = BertTokenizer.from_pretrained(FIXTURES / "bert_tokenizer")
    cfg = _config(CONFIGS / "blip_large.json")
    cfg.pop("model_type", None)
    text = {k: v for k, v in cfg.pop("text_config").items() if k != "model_type"}
    vision = {k: v for k, v in cfg.pop("vision_config").items() if k != "model_type"}
    text.update(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, **cfg))
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # pin the cost: full-length captions, made of words that exist in both fixture vocabularies
    clip = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")
    allowed = set(_blip_allowed_words(tokenizer, clip))
    gen = model.text_decoder.generation_config
    gen.min_new_tokens = max_length
    gen.suppress_tokens = [i for i in range(text["vocab_size"]) if i not in allowed]
    image_processor_cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    size = vision["image_size"]
    image_processor = image_processor_cls.from_pretrained(
        FIXTURES / "bert_tokenizer", size={"height": size, "width": size}
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return BlipCaptioner(model, processor, max_length=max_length)


def build_tiny(seed: int = 0) -> dict[str, Any]:
    """The tiny random components of the test suite (``tests/conftest.py``)."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.conftest import build_tiny_components

    return build_tiny_components(seed)
