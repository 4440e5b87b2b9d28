"""Attention passes: one denoiser forward with attention capture -> class maps, and the batcher that runs many.

:func:`attention_pass` is the method's core step (paper steps 8-10): one forward of the backbone's denoiser on
conditional prompts only, capturing every cross-attention layer and the self-attention of one level, then per sample
and class: average the class's token maps per level, fuse the levels, complete with the mean self-attention.
:func:`run_batched` runs it over (image, prompt) work items in batches and hands back each class's maps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .attention import AttentionStore
from .backbones.base import DiffusionBackbone
from .prompts import ClassPrompt, select_positions
from .readouts import content_token_mask, readout_for
from .transfer import to_device

logger = logging.getLogger(__name__)

__all__ = ["CPU_BATCH_BYTES", "PassSpec", "PassMaps", "ClassMaps", "attention_pass", "run_batched", "cpu_batch_limit"]

#: On the CPU, without ``config.batch_size``, the denoiser batch is sized so that its estimated memory stays within
#: this budget (and within half the free RAM). Bigger CPU batches are not faster: on the shapes model 300 classes took
#: 16.7 s with 4 UNet samples per batch and 22.9 s with 32, so a large vocabulary is run in bounded chunks (1000
#: classes on a 64 x 64 image: 1.7 GB peak, where sizing to half the free RAM peaked at 6.2 GB).
CPU_BATCH_BYTES = 1 << 30


@dataclass(frozen=True)
class PassSpec:
    """What one attention pass computes.

    Attributes:
        timestep (`int`): the denoiser's timestep (the latents are noised to it).
        level_weights (`dict[int, float]`): fusion weight per downsampling factor for the *where* maps.
        self_attention_steps (`int`): times the fused map is multiplied by the mean self-attention (0 = none).
        self_attention_factor (`int`, *optional*): downsampling factor of the self-attention layers read; None = the
            finest level that has self-attention.
        where (`bool`): compute the fused, completed maps (the paper's maps).
        which_weights (`dict[int, float]`, *optional*): also fuse the raw cross-attention with these weights into
            class-decision maps (no completion); None = no class-decision maps.
        attention_blocks, self_attention_blocks (`list[int]`, *optional*): transformer families: the blocks read
            for the class maps and for completion; None = the backbone's default (UNet families: must be None).
        readout (`str`): how the captured attention becomes class maps (:mod:`diffsegmenter.readouts`).
        readout_block (`int`, *optional*): the single-block read-out's block; None = the family's default.
    """

    timestep: int
    level_weights: dict[int, float]
    self_attention_steps: int = 1
    self_attention_factor: int | None = None
    where: bool = True
    which_weights: dict[int, float] | None = None
    attention_blocks: list[int] | None = None
    self_attention_blocks: list[int] | None = None
    readout: str = "paper"
    readout_block: int | None = None

    @classmethod
    def from_config(cls, config, *, where: bool = True, which_weights: dict[int, float] | None = None) -> PassSpec:
        """The pass a :class:`~diffsegmenter.config.SegmenterConfig` describes (``where`` and ``which_weights`` come
        from the class decision, :mod:`diffsegmenter.decision`)."""
        return cls(
            timestep=config.timestep,
            level_weights=config.level_weights,
            self_attention_steps=config.self_attention_steps,
            self_attention_factor=config.self_attention_factor,
            where=where,
            which_weights=which_weights,
            attention_blocks=config.attention_blocks,
            self_attention_blocks=config.self_attention_blocks,
            readout=config.readout,
            readout_block=config.readout_block,
        )


@dataclass
class PassMaps:
    """The maps of one attention pass.

    Attributes:
        where (`torch.Tensor`, *optional*): (B, C, h, w) float32 in [0, 1], each sample's classes' fused, completed
            maps at the latent resolution (at the self-attention level's resolution when that level is coarser);
            None unless ``spec.where``.
        which (`torch.Tensor`, *optional*): (B, C, h, w) float32 in [0, 1], the class-decision maps at the latent
            resolution; None unless ``spec.which_weights``.
    """

    where: torch.Tensor | None = None
    which: torch.Tensor | None = None


def attention_pass(
    backbone: DiffusionBackbone,
    latents: torch.Tensor,
    text: torch.Tensor,
    token_groups: list[list[list[int]]],
    spec: PassSpec,
    *,
    cfg_reference: bool = False,
    content: list[torch.Tensor] | None = None,
) -> PassMaps:
    """One denoiser forward; per sample, the maps of each of its classes.

    Args:
        backbone (`DiffusionBackbone`): the model.
        latents (`torch.Tensor`): (B, c, h, w) noisy latents in the backbone's dtype on its device.
        text (`torch.Tensor`): (B, T, D) prompt embeddings.
        token_groups (`list[list[list[int]]]`): per sample, per class, the token positions to average (every sample
            names the same number of classes C).
        spec (`PassSpec`): the timestep, fusion weights, completion and which maps to compute.
        cfg_reference (`bool`, *optional*): run the released code's [empty prompt, prompt] batch of 2B and read the
            conditional half (for equivalence tests and the reference benchmark; twice the cost).
        content (`list[torch.Tensor]`, *optional*): per sample, its prompt's content-token mask
            (:func:`~diffsegmenter.readouts.content_token_mask`); needed by the rescaled and weighted read-outs.

    Returns:
        `PassMaps`: the where maps and/or the class-decision maps, on the backbone's device.
    """
    readout = readout_for(spec.readout, spec.readout_block)
    readout.check_family(backbone.family)
    if readout.needs_content and content is None:
        raise ValueError(
            f"the {spec.readout!r} read-out needs each prompt's content-token mask: pass content=[content_token_mask("
            "tokenizer, prompt.input_ids, keep=<its class token positions>) per sample] (DiffSegmenter.segment "
            "does this)"
        )
    b = latents.shape[0]
    store = AttentionStore(latent_size=tuple(latents.shape[-2:]))
    readout.prepare(store)
    capture = readout.capture(backbone, store, spec, text, token_groups)
    if cfg_reference:
        empty = backbone.empty_embedding().unsqueeze(0).expand(b, -1, -1)
        latents = torch.cat([latents, latents])
        text = torch.cat([empty, text])
        store.keep_batch = slice(b, 2 * b)
    with capture:
        backbone.denoise(latents, spec.timestep, text)
    mask = torch.stack(content) if content is not None else None
    where, which = readout.maps(store, token_groups, mask, spec)
    return PassMaps(where=where, which=which)


@dataclass
class ClassMaps:
    """Per (image index, class index), one class's maps from :func:`run_batched`, on the latents' device.

    Attributes:
        where (`dict[tuple[int, int], torch.Tensor]`): (h, w) where maps (empty unless the pass computed them).
        which (`dict[tuple[int, int], torch.Tensor]`): (h, w) class-decision maps (likewise).
    """

    where: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    which: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def update(self, other: ClassMaps) -> ClassMaps:
        """Add another pass's maps (a second pass at another size); returns self."""
        self.where.update(other.where)
        self.which.update(other.which)
        return self


def cpu_batch_limit(backbone: DiffusionBackbone, latents: torch.Tensor) -> int:
    """Denoiser samples per forward whose estimated memory fits :data:`CPU_BATCH_BYTES` and half the free host RAM.

    Estimate per sample: :meth:`DiffusionBackbone.sample_bytes` at the latents' size (for SD, 8 x latent pixels x
    the sum of the UNet's block widths x 4 bytes: about 460 MB for SD1.5 at 512², 59 MB for the shapes model where
    43 MB were measured; meant as an over-estimate).
    """
    free = _free_ram_bytes()
    budget = CPU_BATCH_BYTES if free is None else min(CPU_BATCH_BYTES, free // 2)
    per_sample = backbone.sample_bytes(tuple(latents.shape[-2:]))
    return max(1, int(budget // per_sample))


def run_batched(
    backbone: DiffusionBackbone,
    work: Sequence[tuple[int, ClassPrompt]],
    latents: torch.Tensor,
    spec: PassSpec,
    *,
    encode: Callable[[ClassPrompt], torch.Tensor],
    token_rule: str,
    batch_size: int | None = None,
) -> ClassMaps:
    """Run :func:`attention_pass` over work items in batches; on out-of-memory halve the batch and retry.

    Without ``batch_size`` the first batch size is all items on a GPU (halved on CUDA out-of-memory) and, on the CPU,
    as many as fit half the free RAM by :func:`cpu_batch_limit` (a process that exhausts host memory is killed before
    any exception could be caught).

    Args:
        backbone (`DiffusionBackbone`): the model.
        work (`Sequence[tuple[int, ClassPrompt]]`): (image index, prompt) items; a prompt names one or more classes.
        latents (`torch.Tensor`): (N, c, h, w) noisy latents of the N images, in the backbone's dtype on its device.
        spec (`PassSpec`): what each pass computes.
        encode (`Callable[[ClassPrompt], torch.Tensor]`): a prompt's (T, D) text embedding (emphasis applied).
        token_rule (`str`): which sub-tokens stand for a class name (:func:`~diffsegmenter.prompts.select_positions`).
        batch_size (`int`, *optional*): denoiser samples per forward; None = as described above.

    Returns:
        `ClassMaps`: every (image, class) named by the work items.
    """
    maps = ClassMaps()
    # prompts naming the same number of classes batch together (select_token_maps needs equal C per batch)
    groups: dict[int, list[tuple[int, ClassPrompt]]] = {}
    for item in work:
        groups.setdefault(len(item[1].class_indices), []).append(item)
    for items in groups.values():
        bs = batch_size or len(items)
        if batch_size is None and backbone.device.type == "cpu":
            bs = min(bs, cpu_batch_limit(backbone, latents))
        start = 0
        while start < len(items):
            chunk = items[start : start + bs]
            content = None
            if readout_for(spec.readout, spec.readout_block).needs_content:
                content = [
                    content_token_mask(backbone.tokenizer, p.input_ids, keep=[i for t in p.class_tokens for i in t])
                    for _, p in chunk
                ]
            rows = to_device(torch.tensor([i for i, _ in chunk], dtype=torch.long), latents.device)
            try:
                out = attention_pass(
                    backbone,
                    latents[rows],  # a tensor index (advanced indexing, as before: the same values bit for bit)
                    torch.stack([encode(p) for _, p in chunk]),
                    [
                        [select_positions(t, e, token_rule) for t, e in zip(p.class_tokens, p.extra_tokens)]
                        for _, p in chunk
                    ],
                    spec,
                    content=content,
                )
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)
                logger.warning("out of memory; retrying with %d UNet samples per batch", bs)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            where, which = out.where, out.which  # left on the device: the caller brings results back in one copy
            for k, (i, p) in enumerate(chunk):
                for j, ci in enumerate(p.class_indices):
                    if where is not None:
                        maps.where[(i, ci)] = where[k, j]
                    if which is not None:
                        maps.which[(i, ci)] = which[k, j]
            start += len(chunk)
    return maps


def _free_ram_bytes() -> int | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None
    return int(psutil.virtual_memory().available)
