"""The DiffSegmenter facade: a frozen text-to-image diffusion model used as a semantic segmenter.

Recipe per image (see ``shared/docs/method.md`` §3 and :class:`~diffsegmenter.config.SegmenterConfig`):

0. load the image as RGB uint8, resize to the model's resolution (aspect not kept), VAE-encode, scale;
1. noise the latent to ``timestep`` with a seeded generator (the same noise for all classes of the image);
2. build one prompt per class (or one for all classes in ``"single"`` mode), optionally continued by a captioner,
   and emphasise the class tokens;
3. run ONE UNet forward on the conditional prompts only, all prompts of all images in one batch, capturing
   cross-attention (all layers) and finest-level self-attention through attention processors;
4. per class: average its tokens' maps per level, fuse levels, complete with the mean self-attention;
5. upsample to the image size, min-max per class, label by argmax against the background score ``tau``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .aggregation import (
    complete_with_self_attention,
    fuse_levels,
    label_with_background,
    select_token_maps,
    split_where_and_which,
    upsample_scores,
)
from .attention import AttentionStore, capture_attention
from .classes import check_class_names, short_name
from .config import SegmenterConfig, check_tau
from .prompts import (
    ClassPrompt,
    apply_emphasis,
    emphasis_positions,
    per_class_prompt,
    select_positions,
    single_prompts,
)
from .tokens import ClassTokenError

logger = logging.getLogger(__name__)

__all__ = ["DiffSegmenter", "SegmentationResult"]

#: On the CPU, without ``config.batch_size``, the UNet batch is sized so that its estimated memory stays within this
#: budget (and within half the free RAM). Bigger CPU batches are not faster: on the shapes model 300 classes took
#: 16.7 s with 4 UNet samples per batch and 22.9 s with 32, so a large vocabulary is run in bounded chunks (1000
#: classes on a 64 x 64 image: 1.7 GB peak, where sizing to half the free RAM peaked at 6.2 GB).
CPU_BATCH_BYTES = 1 << 30

#: Estimated bytes per input pixel of :meth:`DiffSegmenter.segment`'s full-size work: per class (score maps, their
#: upsampling and labelling copies) and per image (the decoded image, its resize, labels). An over-estimate of the
#: measured 100 bytes per pixel for 4 classes; a call whose estimate exceeds the machine's RAM is refused up front.
BYTES_PER_PIXEL_PER_CLASS = 28
BYTES_PER_PIXEL = 64


@dataclass
class SegmentationResult:
    """Segmentation of one image.

    Attributes:
        labels (`np.ndarray`): (H, W) int32 at the input's size; 0 = background, i = ``classes[i-1]``.
        scores (`np.ndarray`): (K, H, W) float32 in [0, 1], one map per class in ``classes`` order; each map
            reaches 1 at its peak (per-class min-max, as the paper). With ``config.class_level_weights`` set, a map
            is the foreground evidence times the class's share of the class evidence
            (:func:`~diffsegmenter.aggregation.split_where_and_which`), so it need not reach 1.
        classes (`list[str]`): the classes segmented, in order (after the category filter, if one ran).
        prompts (`list[str]`): the exact text prompt whose attention gave each class's map.
        tau (`float`): the background score used for ``labels``.
        candidates (`dict[str, float] | None`): presence score of every vocabulary class when a filter ran.
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    prompts: list[str]
    tau: float
    candidates: dict[str, float] | None = None

    def relabel(self, tau: float) -> np.ndarray:
        """Labels for another background score, from the stored score maps (no model call).

        Args:
            tau (`float`): background score.

        Returns:
            `np.ndarray`: (H, W) int32 labels.
        """
        tau = check_tau(tau, allow_no_background=True)
        return label_with_background(torch.from_numpy(self.scores), tau).numpy().astype(np.int32)


class DiffSegmenter:
    r"""Training-free open-vocabulary semantic segmentation with a frozen latent diffusion model.

    Args:
        vae (`AutoencoderKL`): the image encoder (its decoder is never used).
        unet (`UNet2DConditionModel`): the denoiser whose attention is read.
        text_encoder (`CLIPTextModel`): the prompt encoder.
        tokenizer (`CLIPTokenizer`): its tokenizer.
        scheduler: a diffusers scheduler with ``add_noise`` (DDIM/DDPM/PNDM all share SD's noise schedule).
        config (`SegmenterConfig`, *optional*): method settings; the paper's defaults if not given.
        captioner (*optional*): an object with ``continue_captions(image, prefixes) -> list[str]`` (e.g.
            :class:`~diffsegmenter.captioner.BlipCaptioner`); used when ``config.use_captioner``.
        default_classes (`list[str]`, *optional*): classes used when ``segment`` gets none (a model folder's own).
        model_settings (`dict`, *optional*): everything the model folder's ``segmenter_config.json`` recommends
            beyond SegmenterConfig fields (e.g. ``"_diffusion_filter"`` thresholds chosen on validation data).

    Example:
        ```python
        >>> seg = DiffSegmenter.from_pretrained("shapes")
        >>> res = seg.segment(image, classes=["circle", "square"])
        >>> res.labels.shape, res.scores.shape
        ((64, 64), (2, 64, 64))
        ```
    """

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        config: SegmenterConfig | None = None,
        captioner=None,
        default_classes: list[str] | None = None,
        model_settings: dict[str, Any] | None = None,
    ) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.config = config or SegmenterConfig()
        self.captioner = captioner
        self.default_classes = list(default_classes) if default_classes else None
        self.model_settings = dict(model_settings or {})
        self.filters: dict[str, Any] = {}
        self._text_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "shapes",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: SegmenterConfig | None = None,
        captioner: Any = None,
        local_files_only: bool | None = None,
        **config_overrides: Any,
    ) -> DiffSegmenter:
        """Load a segmenter from ``"shapes"`` (the shipped model), a hub id, or a local diffusers folder.

        Only the components segmentation needs are loaded (vae, unet, text_encoder, tokenizer, scheduler; no safety
        checker), from safetensors only.

        Args:
            model (`str` or `Path`): ``"shapes"``, a hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``,
                or a folder in the diffusers layout.
            device (`str` or `torch.device`, *optional*, defaults to "cpu").
            dtype (`torch.dtype`, *optional*, defaults to float32): e.g. ``torch.float16`` on a GPU.
            config (`SegmenterConfig`, *optional*): full settings; otherwise the model folder's
                ``segmenter_config.json`` if any, else the paper's defaults.
            captioner (*optional*): a captioner object, or a BLIP hub id / folder to load
                (e.g. ``"Salesforce/blip-image-captioning-large"``); None = no captioner (template prompts).
            local_files_only (`bool`, *optional*): never contact the hub (default: the ``HF_HUB_OFFLINE`` setting).
            **config_overrides: single SegmenterConfig fields to change, e.g. ``tau=0.5``.

        Raises:
            ModelNotFoundError: the model is neither a local folder nor reachable/cached on the hub; the message says
                where it looked and how to fix it.
        """
        from .loading import load_components

        parts = load_components(model, device=device, dtype=dtype, local_files_only=local_files_only)
        if config is None:
            config = (
                SegmenterConfig.from_json(parts["segmenter_config"])
                if parts.get("segmenter_config")
                else SegmenterConfig()
            )
        if config_overrides:
            config = config.replace(**config_overrides)
        if isinstance(captioner, (str, Path)):
            from .captioner import BlipCaptioner

            captioner = BlipCaptioner.from_pretrained(
                captioner, device=device, dtype=dtype, local_files_only=local_files_only
            )
        return cls(
            parts["vae"],
            parts["unet"],
            parts["text_encoder"],
            parts["tokenizer"],
            parts["scheduler"],
            config=config,
            captioner=captioner,
            default_classes=parts.get("classes"),
            model_settings=parts.get("settings"),
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def resolution(self) -> int:
        """Side length images are resized to before encoding: ``config.resolution`` or :attr:`native_resolution`."""
        if self.config.resolution:
            return int(self.config.resolution)
        return self.native_resolution

    @property
    def native_resolution(self) -> int:
        """The input side length the model was trained at: the UNet's sample size times the VAE's downsampling
        (512 for SD1.5, 64 for the shapes model)."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * scale

    # ------------------------------------------------------------------ public API
    def segment(
        self,
        images,
        classes: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        filter: Any = None,
        seed: int | None = None,
        tau: float | None = None,
    ):
        """Segment one image or a list of images.

        Args:
            images: a path, a PIL image or an (H, W[, C]) array (uint8, uint16 or float in [0, 1]); or a list.
            classes (`list[str]` or `list[list[str]]`, *optional*): class names for every image, or one list per
                image. With a filter, the vocabulary to choose from. Defaults to the model's own classes, if any.
            filter (*optional*): None (keep all classes), ``"clip"``, ``"diffusion"``, or a category-filter object
                with ``scores(image, vocabulary) -> dict`` and ``predict(image, vocabulary) -> list``.
            seed (`int`, *optional*): noise seed; defaults to ``config.seed``. Same seed, same output.
            tau (`float`, *optional*): background score in [0, 1]; defaults to ``config.tau``. A negative value means
                background never wins (every pixel gets its best class, for label sets without background).

        Returns:
            `SegmentationResult` for one image, or a list of them for a list.

        Raises:
            ValueError: bad classes (empty list, empty or duplicate name, a name the tokenizer cannot place or that
                does not fit the prompt; checked once, before any image is read), a tau outside its range, an image
                over ``config.max_image_pixels`` (:class:`~diffsegmenter.images.ImageTooLargeError`, refused before
                it is decoded) or an image that cannot be read (:class:`~diffsegmenter.images.ImageLoadError`).
            MemoryError: the full-size score maps of the call could not fit this machine's memory (refused up front).
        """
        from .images import load_image

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        if tau is not None:
            tau = check_tau(tau, allow_no_background=True)
        class_lists = self._class_lists(classes, len(items))
        for names in dict.fromkeys(tuple(c) for c in class_lists):
            self.check_classes(list(names))
        arrays = [load_image(x, max_pixels=self.config.max_image_pixels) for x in items]
        candidates: list[dict[str, float] | None] = [None] * len(arrays)
        if filter is not None:
            flt = self._get_filter(filter)
            for i, (img, vocab) in enumerate(zip(arrays, class_lists)):
                scores = flt.scores(img, vocab)
                kept = set(flt.predict(img, vocab))  # filters remember the last image's scores
                candidates[i] = {c: float(scores.get(c, 0.0)) for c in vocab}
                class_lists[i] = [c for c in vocab if c in kept]
        results = self._segment_arrays(arrays, class_lists, seed=seed, tau=tau)
        for r, cand in zip(results, candidates):
            r.candidates = cand
        return results[0] if single else results

    def __call__(self, images, classes=None, **kwargs):
        """Same as :meth:`segment`."""
        return self.segment(images, classes, **kwargs)

    def check_classes(self, classes: Sequence[str]) -> list[str]:
        """Check a class list once, before any image: the shared list rule
        (:func:`~diffsegmenter.classes.check_class_names`), then that this model's tokenizer can place every name in
        a prompt of the configured template (not empty after tokenising, not cut off by the text encoder's length).

        The command line calls it right after loading the model, so a bad name is reported once, up front.

        Args:
            classes (`Sequence[str]`): class names (a filter's vocabulary included).

        Returns:
            `list[str]`: the names, whitespace-normalised.

        Raises:
            ValueError: the message names the offending class and how to fix it (``ClassTokenError`` for names the
                tokenizer cannot place).
        """
        names = check_class_names(classes)
        cfg = self.config
        for name in names:
            try:
                # a single-mode prompt naming one class has exactly these segments too
                per_class_prompt(self.tokenizer, name, 0, cfg.template, cfg.class_phrase)
            except ClassTokenError as exc:
                if repr(short_name(name)) in str(exc):
                    raise
                raise ClassTokenError(f"class {short_name(name)!r}: {exc}") from None
        return names

    # ------------------------------------------------------------------ steps
    def _class_lists(self, classes, n: int) -> list[list[str]]:
        if classes is None:
            if not self.default_classes:
                raise ValueError(
                    "no classes given: pass classes=['cat', 'sofa', ...] (with filter='clip' or 'diffusion' to pick "
                    "the present ones from a vocabulary)"
                )
            classes = self.default_classes
        per_image = not isinstance(classes, str) and isinstance(classes, Sequence) and classes
        if per_image and all(isinstance(c, (list, tuple)) for c in classes):
            if len(classes) != n:
                raise ValueError(f"got {len(classes)} class lists for {n} images; give one list per image or one list")
            return [check_class_names(c) for c in classes]
        validated = check_class_names(classes)
        return [list(validated) for _ in range(n)]

    def _get_filter(self, filter: Any):
        """A filter object from a name ("diffusion", "clip") or the object itself; loaded once and kept."""
        if not isinstance(filter, str):
            return filter
        if filter not in self.filters:
            if filter == "diffusion":
                from .filters.diffusion import DiffusionFilter

                self.filters[filter] = DiffusionFilter(self)
            elif filter == "clip":
                from .captioner import BlipCaptioner
                from .filters.clip import ClipBlipFilter

                blip = self.captioner if isinstance(self.captioner, BlipCaptioner) else None
                self.filters[filter] = ClipBlipFilter.from_pretrained(
                    device=self.device, dtype=self.dtype, captioner=blip
                )
            else:
                raise ValueError(
                    f"unknown filter {filter!r}: use None, 'clip' (BLIP + CLIP, the paper's recipe), 'diffusion' "
                    "(the diffusion model alone), or pass a filter object with scores() and predict()"
                )
        return self.filters[filter]

    def preprocess(self, image: np.ndarray, resolution: int | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> (3, R, R) float in [-1, 1] (bilinear, aspect not kept); R = ``resolution`` or
        :attr:`resolution`. Plain bilinear as released unless ``config.antialias``."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        r = int(resolution) if resolution else self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=self.config.antialias)
        return (x[0] * 2.0 - 1.0).clamp(-1.0, 1.0)

    @torch.inference_mode()
    def encode_latents(self, images: list[np.ndarray], seed: int, resolution: int | None = None) -> torch.Tensor:
        """VAE-encode images to clean, scaled latents.

        Args:
            images (`list[np.ndarray]`): RGB uint8 (H, W, 3) arrays.
            seed (`int`): seed of the posterior sample when ``config.vae_sample`` (unused otherwise).
            resolution (`int`, *optional*): input side length; None = :attr:`resolution`.

        Returns:
            `torch.Tensor`: (N, c, h, w) float32 latents on the CPU, scaled by the VAE's scaling factor.
        """
        pixels = torch.stack([self.preprocess(im, resolution) for im in images]).to(self.device, self.vae.dtype)
        dist = self.vae.encode(pixels).latent_dist
        z0 = dist.mean.float().cpu()
        if self.config.vae_sample:
            eps = torch.stack(
                [torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed + 1)) for _ in images]
            )
            z0 = z0 + dist.std.float().cpu() * eps
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z0 - shift) * self.vae.config.scaling_factor

    def noise_like(self, latents: torch.Tensor, seed: int) -> torch.Tensor:
        """Per-image noise: every image gets ``torch.randn`` of ``torch.Generator().manual_seed(seed)``, so its
        result does not depend on which other images share the batch. (N, c, h, w) float32 on the CPU."""
        return torch.stack(
            [
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed))
                for _ in range(latents.shape[0])
            ]
        )

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray], seed: int, resolution: int | None = None) -> torch.Tensor:
        """VAE-encode images and noise them to ``config.timestep`` (the same noise for all classes of an image).

        Args:
            images (`list[np.ndarray]`): RGB uint8 (H, W, 3) arrays.
            seed (`int`): noise seed (see :meth:`noise_like`).
            resolution (`int`, *optional*): input side length; None = :attr:`resolution`.

        Returns:
            `torch.Tensor`: (N, c, h, w) noisy latents in the UNet's dtype on its device.
        """
        z0 = self.encode_latents(images, seed, resolution)
        t = torch.tensor([self.config.timestep] * len(images), dtype=torch.long)
        zt = self.scheduler.add_noise(z0, self.noise_like(z0, seed), t)
        return zt.to(self.device, self.dtype)

    def build_prompts(self, image: np.ndarray, classes: list[str]) -> list[ClassPrompt]:
        """The prompts for one image's classes (per-class or single-prompt mode, captioner if configured)."""
        cfg = self.config
        if cfg.prompt_mode == "single":
            return single_prompts(self.tokenizer, classes, cfg.template, cfg.class_phrase, cfg.joiner)
        conts = [""] * len(classes)
        if self.captioner is not None and cfg.use_captioner and classes:
            prefixes = [cfg.template.format(cfg.class_phrase.format(c)) for c in classes]
            conts = list(self.captioner.continue_captions(image, prefixes))
        return [
            per_class_prompt(
                self.tokenizer,
                c,
                i,
                cfg.template,
                cfg.class_phrase,
                conts[i],
                ing_heuristic=cfg.ing_heuristic,
                token_rule=cfg.token_rule,
                ing_offset=cfg.ing_offset,
                emphasised=cfg.emphasis != 1.0,
            )
            for i, c in enumerate(classes)
        ]

    @torch.inference_mode()
    def encode_prompt(self, prompt: ClassPrompt) -> torch.Tensor:
        """Text-encoder output of a prompt with its class emphasis applied (``config.emphasis_scope``): (T, D) in the
        UNet's dtype."""
        positions = emphasis_positions(prompt, self.config.emphasis_scope)
        key = (self.config.emphasis, *prompt.input_ids, -1, *positions)
        if key not in self._text_cache:
            z = self._encode_ids(prompt.input_ids)
            if self.config.emphasis != 1.0:
                z = apply_emphasis(z, self._empty_embedding(), positions, self.config.emphasis)
            if len(self._text_cache) > 4096:
                self._text_cache.clear()
            self._text_cache[key] = z
        return self._text_cache[key]

    def _encode_ids(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.text_encoder.device)
        return self.text_encoder(x)[0][0].to(self.dtype)

    def _empty_embedding(self) -> torch.Tensor:
        """Text-encoder output of the empty prompt, (T, D); encoded once (emphasis, CFG reference, filters)."""
        key = ("",)
        if key not in self._text_cache:
            ids = self.tokenizer("", padding="max_length", max_length=self.tokenizer.model_max_length)["input_ids"]
            self._text_cache[key] = self._encode_ids(ids)
        return self._text_cache[key]

    @torch.inference_mode()
    def attention_maps(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        token_groups: list[list[list[int]]],
        cfg_reference: bool = False,
    ) -> torch.Tensor:
        """One UNet forward; per sample, the fused and completed map of each of its classes.

        Args:
            latents (`torch.Tensor`): (B, c, h, w) noisy latents.
            text (`torch.Tensor`): (B, T, D) prompt embeddings.
            token_groups (`list[list[list[int]]]`): per sample, per class, the token positions to average.
            cfg_reference (`bool`, *optional*): run the released code's [empty prompt, prompt] batch of 2B and read
                the conditional half (for equivalence tests and the reference benchmark; twice the cost).

        Returns:
            `torch.Tensor`: (B, C, h, w) float32 maps in [0, 1] at the latent resolution (at the self-attention
            level's resolution when ``config.self_attention_factor`` names a coarser one).
        """
        maps, _ = self._attention_maps(latents, text, token_groups, cfg_reference)
        assert maps is not None  # where=True always computes them
        return maps

    def _attention_maps(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        token_groups: list[list[list[int]]],
        cfg_reference: bool = False,
        where: bool = True,
        which: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`attention_maps` (None unless ``where``), and the class-decision maps when ``which`` and
        ``config.class_level_weights`` is set: the raw cross-attention fused with those weights, (B, C, h, w) float32
        in [0, 1] at the latent resolution (else None). One pass of two computes only its half."""
        b = latents.shape[0]
        store = AttentionStore(latent_size=tuple(latents.shape[-2:]))
        if cfg_reference:
            empty = self._empty_embedding().unsqueeze(0).expand(b, -1, -1)
            latents = torch.cat([latents, latents])
            text = torch.cat([empty, text])
            store.keep_batch = slice(b, 2 * b)
        t = torch.tensor(self.config.timestep, device=self.device)
        with capture_attention(self.unet, store, self.config.self_attention_factor):
            self.unet(latents, t, encoder_hidden_states=text, return_dict=False)
        per_level = {f: select_token_maps(m, token_groups) for f, m in store.cross_maps().items()}
        fused = fuse_levels(per_level, self.config.level_weights)
        class_maps = None
        if which and self.config.class_level_weights is not None:
            class_maps = fuse_levels(per_level, self.config.class_level_weights)
        if not where:
            return None, class_maps
        if store.self_qk and self.config.self_attention_steps > 0:
            _, size = store.level_of(store.self_qk[0][0].shape[2])
            if tuple(fused.shape[-2:]) != size:  # completing at a coarser level than the fused maps
                fused = F.interpolate(fused, size=size, mode="area")
        return complete_with_self_attention(fused, store.self_qk, self.config.self_attention_steps), class_maps

    def _segment_arrays(
        self, arrays: list[np.ndarray], class_lists: list[list[str]], seed: int | None, tau: float | None
    ) -> list[SegmentationResult]:
        cfg = self.config
        seed = cfg.seed if seed is None else int(seed)
        tau = cfg.tau if tau is None else float(tau)
        _check_full_size_memory(arrays, class_lists)
        latents = self.encode_images(arrays, seed)
        # work items: (image index, prompt); a prompt names one class (per_class) or several (single)
        work: list[tuple[int, ClassPrompt]] = []
        for i, (img, classes) in enumerate(zip(arrays, class_lists)):
            work.extend((i, p) for p in self.build_prompts(img, classes))
        maps: dict[tuple[int, int], torch.Tensor] = {}
        which_maps: dict[tuple[int, int], torch.Tensor] = {}
        class_res = cfg.class_resolution  # set only with class_level_weights (SegmenterConfig checks)
        if class_res is not None and class_res != self.resolution:
            # two passes: the paper's maps at `resolution` decide where, a pass at class_resolution decides which
            self._run_batched(work, latents, maps, None)
            self._run_batched(work, self.encode_images(arrays, seed, class_res), None, which_maps)
        else:
            self._run_batched(work, latents, maps, which_maps)
        results = []
        for i, (img, classes) in enumerate(zip(arrays, class_lists)):
            h, w = img.shape[:2]
            prompts_by_class = {ci: p.text for (j, p) in work if j == i for ci in p.class_indices}
            if classes:
                low = torch.stack([maps[(i, ci)] for ci in range(len(classes))])
                scores = upsample_scores(low, (h, w))
                if which_maps:  # config.class_level_weights: the class decision comes from other maps
                    which = torch.stack([which_maps[(i, ci)] for ci in range(len(classes))])
                    which = F.interpolate(which[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
                    scores = split_where_and_which(scores, which)
            else:
                scores = torch.zeros(0, h, w)
            labels = label_with_background(scores, tau)
            results.append(
                SegmentationResult(
                    labels=labels.numpy().astype(np.int32),
                    scores=np.asarray(scores.numpy(), dtype=np.float32),  # no copy: a K x H x W array can be large
                    classes=list(classes),
                    prompts=[prompts_by_class[ci] for ci in range(len(classes))],
                    tau=tau,
                )
            )
        return results

    def _cpu_batch_limit(self, latents: torch.Tensor) -> int:
        """UNet samples per forward whose estimated memory fits :data:`CPU_BATCH_BYTES` and half the free host RAM.

        Estimate per sample: 8 x latent pixels x the sum of the UNet's block widths x 4 bytes (about 460 MB
        for SD1.5 at 512², 59 MB for the shapes model where 43 MB were measured; meant as an over-estimate).
        """
        free = _free_ram_bytes()
        budget = CPU_BATCH_BYTES if free is None else min(CPU_BATCH_BYTES, free // 2)
        widths = sum(int(c) for c in self.unet.config.block_out_channels)
        itemsize = torch.finfo(self.dtype).bits // 8
        per_sample = 8 * latents.shape[-2] * latents.shape[-1] * widths * max(4, itemsize)
        return max(1, int(budget // per_sample))

    def _run_batched(
        self,
        work: list[tuple[int, ClassPrompt]],
        latents: torch.Tensor,
        maps: dict[tuple[int, int], torch.Tensor] | None,
        which_maps: dict[tuple[int, int], torch.Tensor] | None,
    ) -> None:
        """Run the UNet over work items in batches; on out-of-memory halve the batch and retry.

        Fills ``maps`` with each (image, class)'s fused, completed map and ``which_maps`` with its class-decision map
        (when ``config.class_level_weights`` is set); a dict given as None is not computed (one pass of two).

        Without ``config.batch_size`` the first batch size is all items on a GPU (halved on CUDA out-of-memory) and,
        on the CPU, as many as fit :data:`CPU_BATCH_BYTES` and half the free RAM by :meth:`_cpu_batch_limit` (a
        process that exhausts host memory is killed before any exception could be caught), so a large vocabulary
        runs in chunks of bounded memory.
        """
        # prompts naming the same number of classes batch together (select_token_maps needs equal C per batch)
        groups: dict[int, list[tuple[int, ClassPrompt]]] = {}
        for item in work:
            groups.setdefault(len(item[1].class_indices), []).append(item)
        for items in groups.values():
            bs = self.config.batch_size or len(items)
            if self.config.batch_size is None and self.device.type == "cpu":
                bs = min(bs, self._cpu_batch_limit(latents))
            start = 0
            while start < len(items):
                chunk = items[start : start + bs]
                try:
                    out, which = self._attention_maps(
                        latents[[i for i, _ in chunk]],
                        torch.stack([self.encode_prompt(p) for _, p in chunk]),
                        [
                            [
                                select_positions(t, e, self.config.token_rule)
                                for t, e in zip(p.class_tokens, p.extra_tokens)
                            ]
                            for _, p in chunk
                        ],
                        where=maps is not None,
                        which=which_maps is not None,
                    )
                except torch.OutOfMemoryError:
                    if bs == 1:
                        raise
                    bs = max(1, bs // 2)
                    logger.warning("out of memory; retrying with %d UNet samples per batch", bs)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                out = out.cpu() if out is not None else None
                which = which.cpu() if which is not None else None
                for k, (i, p) in enumerate(chunk):
                    for j, ci in enumerate(p.class_indices):
                        if out is not None:
                            maps[(i, ci)] = out[k, j]
                        if which is not None:
                            which_maps[(i, ci)] = which[k, j]
                start += len(chunk)


def _check_full_size_memory(arrays: list[np.ndarray], class_lists: list[list[str]]) -> None:
    """Refuse up front a call whose full-size score maps and labels could not fit this machine's memory at all
    (instead of being killed by the system part-way): estimated with :data:`BYTES_PER_PIXEL_PER_CLASS` and
    :data:`BYTES_PER_PIXEL`, against the total RAM."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return
    for img, classes in zip(arrays, class_lists):
        h, w = img.shape[:2]
        need = h * w * (BYTES_PER_PIXEL_PER_CLASS * len(classes) + BYTES_PER_PIXEL)
        if need > total:
            raise MemoryError(
                f"segmenting {len(classes)} classes on a {w}x{h} image needs about {need / 1e9:.1f} GB for its "
                f"full-size score maps, more than this machine's {total / 1e9:.1f} GB of memory: pass fewer classes "
                "per call (or a filter), or downscale the image"
            )


def _free_ram_bytes() -> int | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None
    return int(psutil.virtual_memory().available)
