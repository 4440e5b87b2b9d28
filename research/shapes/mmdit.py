"""The joint-attention (MM-DiT, SD3-class) shapes-world model: its components, text encoding and folder layout.

The same world and captions as the UNet model (:mod:`.components`), with Stable Diffusion 3's component classes at a
small size, so that the segmenter reads it through its SD3 backbone (:class:`diffsegmenter.backbones.sd3.
StableDiffusion3Backbone`) and ``StableDiffusion3Pipeline`` samples from it:

- ``AutoencoderKL``: the shipped shapes VAE (64×64×3 ↔ 32×32×4), reused and frozen, its config given SD3's
  ``shift_factor`` (the mean of its latents on training scenes) beside the ``scaling_factor`` (1 / their std), so
  that the transformer sees centred latents of unit variance.
- ``SD3Transformer2DModel`` on 32×32×4 latents, 2×2 patches (a 16×16 token grid), 7 joint blocks of width 160
  (5 heads of 32), RMS q/k norms (SD3.5's), about 6.3M parameters.
- Two ``CLIPTextModelWithProjection`` encoders (SD3's CLIP-L and CLIP-G slots), 2 layers of width 128 each, random,
  seeded and frozen, their token embeddings redrawn with std 1.0 as the UNet model's encoder (so that shape words stay
  distinct in context); SD3 reads the penultimate layer (after one layer, as the UNet model's single-layer encoder),
  the pooled projections come from the last. Their 128 + 128 features fill the joint width of 256.
- No T5: ``text_encoder_3`` is None and the pipeline (and the backbone) put 256 zero tokens in its place, which the
  model is trained with too.
- ``FlowMatchEulerDiscreteScheduler`` (shift 1.0: a 16×16 token grid is SD3's 256-token base case).

Training (:mod:`.train_mmdit`) is pure rectified-flow denoising: ``x_s = (1 - s) z + s eps``, the transformer predicts
``eps - z`` at timestep ``1000 s``, with ``s`` logit-normal (SD3's default sampling).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import components as C

#: ``StableDiffusion3Pipeline``'s ``max_sequence_length``: the T5 slot's zero tokens (the backbone uses the same).
T5_LENGTH = 256

TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 7,
    "attention_head_dim": 32,
    "num_attention_heads": 5,
    "joint_attention_dim": 256,
    "caption_projection_dim": 160,
    "pooled_projection_dim": 256,
    "pos_embed_max_size": 40,  # inputs up to 160² (a 40×40 token grid) for a larger "where" pass
    "qk_norm": "rms_norm",
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 128,
}
#: Seed offset of the second text encoder (distinct weights from the first).
TEXT_ENCODER_2_SEED_OFFSET = 1000

SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}

#: Much smaller models of the same structure, for tests.
TINY_TRANSFORMER_OVERRIDES: dict[str, Any] = {
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "caption_projection_dim": 16,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
}
TINY_TEXT_ENCODER_OVERRIDES: dict[str, Any] = {"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16}


def build_text_encoders(
    tokenizer: Any, seed: int = 0, tiny: bool = False, token_embedding_std: float = 1.0, num_layers: int | None = None
):
    """The two frozen ``CLIPTextModelWithProjection`` encoders (SD3's CLIP-L and CLIP-G slots).

    Args:
        tokenizer (`CLIPTokenizer`): the shapes tokenizer (vocabulary size, special ids).
        seed (`int`, *optional*, defaults to 0): seed of the first; the second uses ``seed + 1000``.
        tiny (`bool`, *optional*, defaults to `False`): the ``TINY_TEXT_ENCODER_OVERRIDES`` sizes (tests).
        token_embedding_std (`float`, *optional*, defaults to 1.0): std of the redrawn token embeddings.
        num_layers (`int`, *optional*): transformer layers of each (default ``TEXT_ENCODER_CONFIG``'s 2). With 1 the
            pipeline's states (the penultimate hidden states) are the token and position embeddings themselves: no
            token carries another's word, so the end-token padding carries no caption.

    Returns:
        `tuple`: two ``CLIPTextModelWithProjection``, float32, eval mode, ``requires_grad`` off.
    """
    from transformers import CLIPTextModelWithProjection

    kw = {**TEXT_ENCODER_CONFIG, **(TINY_TEXT_ENCODER_OVERRIDES if tiny else {})}
    if num_layers is not None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        kw["num_hidden_layers"] = int(num_layers)
    return tuple(
        C.seeded_text_encoder(CLIPTextModelWithProjection, tokenizer, s, token_embedding_std, **kw)
        for s in (seed, seed + TEXT_ENCODER_2_SEED_OFFSET)
    )


def build_transformer(seed: int = 0, tiny: bool = False, **overrides: Any):
    """The ``SD3Transformer2DModel`` (random weights), float32 on the CPU.

    Args:
        seed (`int`, *optional*, defaults to 0): torch seed of the initial weights.
        tiny (`bool`, *optional*, defaults to `False`): the ``TINY_TRANSFORMER_OVERRIDES`` sizes (tests).
        **overrides: entries replacing those of ``TRANSFORMER_CONFIG``.
    """
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **(TINY_TRANSFORMER_OVERRIDES if tiny else {}), **overrides})


def silence_pooled_projections(transformer) -> None:
    """Make the transformer ignore ``pooled_projections``: the last layer of its pooled-text embedder
    (``time_text_embed.text_embedder.linear_2``) is set to zero and the embedder frozen, so the adaLN conditioning
    is the timestep's alone, at training and at inference, and the caption reaches the image only through joint
    attention (as in the UNet model, which has no pooled input). The folder layout is unchanged.

    Args:
        transformer (`SD3Transformer2DModel`): changed in place, before its optimizer and EMA copy are made.
    """
    embedder = transformer.time_text_embed.text_embedder
    with torch.no_grad():
        embedder.linear_2.weight.zero_()
        embedder.linear_2.bias.zero_()
    embedder.requires_grad_(False)


def transformer_overrides(
    num_layers: int | None = None, num_heads: int | None = None, patch_size: int | None = None, tiny: bool = False
) -> dict[str, Any]:
    """``TRANSFORMER_CONFIG`` entries for a transformer of another size (``None``: keep the default).

    Args:
        num_layers (`int`, *optional*): joint blocks.
        num_heads (`int`, *optional*): attention heads of ``attention_head_dim`` (32) each; the width of both streams
            (``caption_projection_dim``) follows, ``num_heads * attention_head_dim``.
        patch_size (`int`, *optional*): latent patch size (2: a 16×16 token grid on 32×32 latents; 4: 8×8).
        tiny (`bool`, *optional*, defaults to `False`): widths from the tiny test model's head size.
    """
    head_dim = (TINY_TRANSFORMER_OVERRIDES if tiny else TRANSFORMER_CONFIG)["attention_head_dim"]
    out: dict[str, Any] = {}
    if num_layers is not None:
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (the last block is context_pre_only), got {num_layers}")
        out["num_layers"] = int(num_layers)
    if num_heads is not None:
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        out["num_attention_heads"] = int(num_heads)
        out["caption_projection_dim"] = int(num_heads) * int(head_dim)
    if patch_size is not None:
        if patch_size not in (1, 2, 4, 8):
            raise ValueError(f"patch_size must divide the 32x32 latents (1, 2, 4 or 8), got {patch_size}")
        out["patch_size"] = int(patch_size)
    return out


class CollapsedZeroTokensProcessor:
    """Training-only joint attention in which the last context token stands for ``copies`` identical ones.

    The pipeline (and the segmenter's backbone) put ``T5_LENGTH`` zero tokens in T5's place. SD3 gives text tokens
    no position, so those tokens enter every block equal and stay equal: each block maps equal inputs to equal
    outputs, and every query sees ``copies`` equal keys with equal values, which is one key whose logit is raised by
    ``log(copies)``. With one zero token and that bias, the transformer computes the same function of its weights as
    with ``copies`` of them (so the same loss and gradients) on about 40 % fewer tokens. The saved model is unchanged:
    this processor is installed on the training copy only, never saved, and the EMA copy keeps diffusers' own.

    Args:
        copies (`int`): how many equal zero tokens the last context token stands for (``T5_LENGTH``).
    """

    def __init__(self, copies: int) -> None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.log_copies = math.log(copies)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, context_bias: torch.Tensor | None = None,
                 **kwargs: Any):  # fmt: skip
        """``JointAttnProcessor2_0``'s computation (image tokens first, then context) with the additive key bias.

        Args:
            attn (`Attention`): the block's joint attention module.
            hidden_states (`torch.Tensor`): (B, N, C) image tokens.
            encoder_hidden_states (`torch.Tensor`): (B, L, C) context tokens; the last one is the collapsed zeros.
            context_bias (`torch.Tensor`, *optional*): (B, L) float, added to every query's logits for the context
                keys (``train_mmdit --sink-anneal-steps``: :func:`sink_bias`; the transformer passes it through
                ``joint_attention_kwargs``). None: no extra bias, the pipeline's function.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]` (image, context) outputs, or the image output alone for a block
            without context.
        """
        import torch.nn.functional as F

        b, n = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        bias = None
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
            bias = q.new_zeros(1, 1, 1, k.shape[2])
            bias[..., -1] = self.log_copies
            if context_bias is not None:
                extra = torch.cat([context_bias.new_zeros(b, n), context_bias], dim=1).to(q.dtype)
                bias = bias + extra[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(q.dtype)
        image, context = out[:, :n], out[:, n:]
        image = attn.to_out[1](attn.to_out[0](image))
        if encoder_hidden_states is None:
            return image
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return image, context


def collapse_zero_tokens(transformer: torch.nn.Module, copies: int = T5_LENGTH) -> None:
    """Install :class:`CollapsedZeroTokensProcessor` on every joint attention of a training transformer (feed it
    ``encode_text(..., t5_length=1)``)."""
    transformer.set_attn_processor(CollapsedZeroTokensProcessor(copies))


def sink_bias(input_ids: torch.Tensor, eos_token_id: int, t5_length: int, strength: float) -> torch.Tensor:
    """The training-only key bias of ``train_mmdit --sink-anneal-steps``: ``-strength`` on the context positions that
    carry no word, the CLIP padding after each caption's first end token and the T5 zero tokens, 0 elsewhere.

    Without T5, 256 equal zero keys and about 65 padding keys take most of a fresh transformer's image-to-text
    attention, and the class words get their uniform share (``runs/mmdit_cpu_text_routes/``). Lowering those keys'
    logits early in training, then raising the bias to 0 (the pipeline's function), was meant to give the words a larger
    share of the gradient while the model learns to use them; on the CPU it did not make the model bind
    (``runs/mmdit_cpu_sink/``: the start token became the sink).

    Args:
        input_ids (`torch.Tensor`): (B, 77) int64, the CLIP token ids the states were encoded from.
        eos_token_id (`int`): the tokenizer's end token.
        t5_length (`int`): zero tokens after the 77 CLIP positions (1 when collapsed).
        strength (`float`): >= 0, how far those keys' logits are lowered.

    Returns:
        `torch.Tensor`: (B, 77 + t5_length) float32, values in {-strength, 0}.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    is_eos = input_ids == eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), input_ids.shape[1] - 1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    padding = positions[None, :] > first_eos[:, None]
    wordless = torch.cat([padding, padding.new_ones(input_ids.shape[0], t5_length)], dim=1)
    return wordless.float() * -float(strength)


def build_scheduler():
    """``FlowMatchEulerDiscreteScheduler`` (shift 1.0), saved with the model for sampling."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def load_vae(folder: str | Path, shift_factor: float, scaling_factor: float):
    """The shapes VAE of a model folder (float32, frozen), its config given SD3's latent shift and scale.

    Args:
        folder (`str` or `Path`): a shapes model folder with a ``vae/``, or ``"shapes"`` (the shipped one).
        shift_factor (`float`): mean of its unscaled latents on training scenes.
        scaling_factor (`float`): 1 / their std.
    """
    from diffusers import AutoencoderKL

    from diffsegmenter.loading import resolve_model

    vae = AutoencoderKL.from_pretrained(resolve_model(str(folder)), subfolder="vae", dtype=torch.float32)
    vae.register_to_config(shift_factor=float(shift_factor), scaling_factor=float(scaling_factor))
    return vae.eval().requires_grad_(False)


def encode_text(
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module,
    input_ids: torch.Tensor,
    joint_attention_dim: int,
    t5_length: int = T5_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``StableDiffusion3Pipeline.encode_prompt`` gives for token ids without T5 (both CLIPs get the same ids:
    the shapes tokenizer pads with its end token, as the pipeline's second tokenizer would with this vocabulary).

    Args:
        text_encoder, text_encoder_2 (`CLIPTextModelWithProjection`): the two encoders.
        input_ids (`torch.Tensor`): (B, 77) int64 token ids (start, words, end, padding).
        joint_attention_dim (`int`): the transformer's text width; the CLIP states are zero-padded to it.
        t5_length (`int`, *optional*, defaults to 256): zero tokens in T5's place.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``encoder_hidden_states`` (B, 77 + t5_length, joint_attention_dim)
        (the penultimate states of both CLIPs side by side, then zeros) and ``pooled_projections`` (B, P1 + P2).
    """
    o1 = text_encoder(input_ids, output_hidden_states=True)
    o2 = text_encoder_2(input_ids, output_hidden_states=True)
    clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, joint_attention_dim - clip.shape[-1]))
    zeros = clip.new_zeros(clip.shape[0], t5_length, joint_attention_dim)
    return torch.cat([clip, zeros], dim=1), torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)


def _cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    clone = copy.deepcopy(model).cpu()
    with torch.no_grad():  # cast tensors directly: ModelMixin.to(dtype) warns about fp32-kept modules
        for t in [*clone.parameters(), *clone.buffers()]:
            if t.is_floating_point():
                t.data = t.data.to(dtype)
    return clone


def save_model_folder(
    out_dir: str | Path,
    vae: torch.nn.Module,
    transformer: torch.nn.Module,
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module,
    tokenizer: Any,
    scheduler: Any,
    dtype: torch.dtype = torch.float16,
    extra_files: Mapping[str, str] | None = None,
    tokenizer_dir: str | Path | None = None,
    check_sizes: bool = True,
) -> int:
    """Write the model with ``StableDiffusion3Pipeline.save_pretrained`` (safetensors; no T5, ``text_encoder_3``
    and ``tokenizer_3`` null in ``model_index.json``), written beside ``out_dir`` and moved into place.

    Args:
        out_dir (`str` or `Path`): the model folder (an existing model folder there is replaced; any other
            non-empty folder is refused).
        vae, transformer, text_encoder, text_encoder_2: the models; copies are cast to ``dtype``.
        tokenizer (`CLIPTokenizer`): saved as both ``tokenizer`` and ``tokenizer_2``.
        scheduler (`FlowMatchEulerDiscreteScheduler`): the sampling scheduler.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float16`): dtype of the saved weights.
        extra_files (`Mapping[str, str]`, *optional*): text files for the folder's root (``README.md``,
            ``segmenter_config.json``).
        tokenizer_dir (`str` or `Path`, *optional*): the tokenizer's source folder (``components.build_tokenizer``);
            its ``vocab.json`` and ``merges.txt`` are added beside the ``tokenizer.json`` that transformers 5 writes,
            so that transformers 4.x (which this package allows) can read the tokenizers too.
        check_sizes (`bool`, *optional*, defaults to `True`): refuse files over ``components.MAX_FILE_BYTES`` or a
            folder over ``components.MAX_FOLDER_BYTES``.

    Returns:
        `int`: the folder's size in bytes.
    """
    from diffusers import StableDiffusion3Pipeline

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise ValueError(f"{out} exists and is not a model folder; refusing to replace it")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        pipe = StableDiffusion3Pipeline(
            transformer=_cast_copy(transformer, dtype),
            scheduler=scheduler,
            vae=_cast_copy(vae, dtype),
            text_encoder=_cast_copy(text_encoder, dtype),
            tokenizer=tokenizer,
            text_encoder_2=_cast_copy(text_encoder_2, dtype),
            tokenizer_2=tokenizer,
            text_encoder_3=None,
            tokenizer_3=None,
        )
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        del pipe
        for sub in ("tokenizer", "tokenizer_2"):
            for fname in ("vocab.json", "merges.txt") if tokenizer_dir is not None else ():
                if not (tmp / sub / fname).exists():
                    shutil.copyfile(Path(tokenizer_dir) / fname, tmp / sub / fname)
        for fname, content in (extra_files or {}).items():
            (tmp / fname).write_text(content, encoding="utf-8")
        stray = [p.name for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        if stray:
            raise ValueError(f"non-safetensors weight files written: {stray}")
        total, largest = C.folder_size(tmp)
        if check_sizes and (largest >= C.MAX_FILE_BYTES or total > C.MAX_FOLDER_BYTES):
            raise ValueError(
                f"model folder too large: {total} bytes in all (limit {C.MAX_FOLDER_BYTES}), largest file {largest} "
                f"bytes (limit {C.MAX_FILE_BYTES})"
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return total


def segmenter_settings(num_blocks: int, provenance: str, patch_size: int = 2) -> dict[str, Any]:
    """The ``segmenter_config.json`` a freshly trained folder gets: the shapes behaviour and prompts of the UNet
    model's tuned settings, the family's default read-out (every block averaged, completion with the middle block),
    t = 100 and tau 0.4 until a tuning run on val replaces them.

    Args:
        num_blocks (`int`): the transformer's blocks.
        patch_size (`int`, *optional*, defaults to 2): the transformer's patch, the one level its attention lands at.
        provenance (`str`): how the values were chosen (written as ``_provenance``).
    """
    from .quality import SHAPES_BEHAVIOUR
    from .world import CLASS_NAMES

    return {
        "_classes": list(CLASS_NAMES[1:]),
        **SHAPES_BEHAVIOUR,
        "prompt_mode": "single",
        "template": "{}",
        "class_phrase": "a {}",
        "joiner": " and ",
        "emphasis": 1.0,
        "timestep": 100,
        "level_weights": {str(patch_size): 1.0},
        "attention_blocks": list(range(num_blocks)),
        "self_attention_blocks": [num_blocks // 2],
        "tau": 0.4,
        "_provenance": provenance,
    }


def dumps(obj: Any) -> str:
    """JSON text as the model folders write it."""
    return json.dumps(obj, indent=2) + "\n"
