"""The DiffSegmenter facade: a frozen text-to-image diffusion model used as a semantic segmenter.

The facade holds the method's settings (:class:`~diffsegmenter.config.SegmenterConfig`) and follows its recipe
(``shared/docs/method.md`` §3) in :meth:`DiffSegmenter.segment`; the model itself is a
:class:`~diffsegmenter.backbones.DiffusionBackbone`, one attention pass is :func:`~diffsegmenter.passes.attention_pass`,
and which passes run and how their maps become class scores is a :mod:`~diffsegmenter.decision` strategy.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backbones import DiffusionBackbone, StableDiffusionBackbone
from .classes import check_class_names, class_lists_per_image, short_name
from .config import SegmenterConfig, check_refine, check_tau
from .decision import PassPlan, class_decision
from .passes import ClassMaps, PassSpec, attention_pass, run_batched
from .prompts import ClassPrompt, build_prompts, emphasis_positions, per_class_prompt, select_positions
from .readouts import readout_for
from .refinement import Refiner
from .result import SegmentationResult, build_results, check_full_size_memory
from .settings import ModelSettings
from .tokens import ClassTokenError
from .transfer import DEFAULT_DTYPE, to_device

if TYPE_CHECKING:
    from .filters.base import FilterDecision

logger = logging.getLogger(__name__)

__all__ = ["DiffSegmenter", "SegmentationResult", "recommended_config"]


def _component(name: str) -> property:
    return property(lambda self: getattr(self.backbone, name), doc=f"The backbone's ``{name}`` (SD backbones).")


def _one_call_at_a_time(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` holding its segmenter's :attr:`~diffsegmenter.backbones.DiffusionBackbone.call_lock`: calls
    from several threads (a web server's workers) wait for each other instead of reading each other's attention."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.backbone.call_lock:
            return method(self, *args, **kwargs)

    return locked


def _warn_replaced_recommendations(
    config: SegmenterConfig, recommended: SegmenterConfig, source: str | None, backbone: Any
) -> None:
    """Warn when a full ``config`` leaves at the class defaults fields that the model folder or the backbone family
    would set otherwise, and that change the results: ``config=`` replaces every setting, which is easy to take for
    "these fields on top". Blocks left None are the family's own; fusion weights are compared over the levels the
    family reads (its default weights' levels), normalised: the paper's four weights on a one-level transformer are
    its one weight."""
    defaults = SegmenterConfig()
    levels = set(backbone.default_level_weights)
    family = backbone.family_defaults()

    def effective(name: str, value: Any) -> Any:
        if name in ("level_weights", "class_level_weights") and isinstance(value, dict):
            kept = {k: float(v) for k, v in value.items() if k in levels}
            total = sum(kept.values())
            return {k: round(v / total, 9) for k, v in kept.items() if v > 0} if total > 0 else kept
        return value

    dropped = {}
    for f in dataclasses.fields(SegmenterConfig):
        given, wanted = getattr(config, f.name), getattr(recommended, f.name)
        if given != getattr(defaults, f.name) or wanted == given:
            continue
        if f.name in ("attention_blocks", "self_attention_blocks") and given is None:
            given = family.get(f.name)  # None reads the family's own blocks
        if effective(f.name, given) != effective(f.name, wanted):
            dropped[f.name] = wanted
    if dropped:
        where = f"{source} (or the backbone family's defaults)" if source else "the backbone family's defaults"
        shown = ", ".join(f"{k}={v!r}" for k, v in dropped.items())
        logger.warning(
            "config= replaces every setting: %s keep SegmenterConfig's defaults instead of the values from %s "
            "(%s); to change single settings and keep the rest, pass them as keywords "
            "(from_pretrained(model, tau=0.5)) or start from the loaded segmenter's config.replace(...)",
            ", ".join(dropped),
            where,
            shown,
        )


class DiffSegmenter:
    r"""Training-free open-vocabulary semantic segmentation with a frozen latent diffusion model.

    Args:
        vae, unet, text_encoder, tokenizer, scheduler: the Stable Diffusion components (``AutoencoderKL``,
            ``UNet2DConditionModel``, ``CLIPTextModel``, ``CLIPTokenizer``, a scheduler with ``add_noise``), wrapped
            in a :class:`~diffsegmenter.backbones.StableDiffusionBackbone`; or give ``backbone`` instead.
        config (`SegmenterConfig`, *optional*): method settings; the paper's defaults if not given.
        captioner (*optional*): an object with ``continue_captions(image, prefixes) -> list[str]`` (e.g.
            :class:`~diffsegmenter.captioner.BlipCaptioner`); used when ``config.use_captioner``.
        default_classes (`list[str]`, *optional*): classes used when ``segment`` gets none; defaults to
            ``model_settings.classes``.
        model_settings (`ModelSettings` or `dict`, *optional*): what the model folder recommends beyond
            SegmenterConfig fields (:class:`~diffsegmenter.settings.ModelSettings`; a dict in the
            ``segmenter_config.json`` layout is read as one).
        backbone (`DiffusionBackbone`, *optional*): the model, instead of the five components.

    Threads: one call at a time per model. ``segment``, ``edit`` and a ``session`` hold the backbone's
    ``call_lock``, so calls from several threads (a web server's workers; segmenters sharing one backbone) wait for
    each other and each gets the result a call alone gives. Do not assign ``config`` while another thread's call
    runs (a call with per-call settings puts the config it found back when it ends).

    Example:
        ```python
        >>> seg = DiffSegmenter.from_pretrained("shapes")
        >>> res = seg.segment(image, classes=["circle", "square"])
        >>> res.labels.shape, res.scores.shape
        ((64, 64), (2, 64, 64))
        ```
    """

    vae = _component("vae")
    unet = _component("unet")
    text_encoder = _component("text_encoder")
    scheduler = _component("scheduler")

    def __init__(
        self,
        vae=None,
        unet=None,
        text_encoder=None,
        tokenizer=None,
        scheduler=None,
        config: SegmenterConfig | None = None,
        captioner=None,
        default_classes: list[str] | None = None,
        model_settings: ModelSettings | dict[str, Any] | None = None,
        *,
        backbone: DiffusionBackbone | None = None,
    ) -> None:
        parts = (vae, unet, text_encoder, tokenizer, scheduler)
        if backbone is None:
            if any(p is None for p in parts):
                raise ValueError(
                    "give the five components (vae, unet, text_encoder, tokenizer, scheduler) or backbone="
                )
            backbone = StableDiffusionBackbone(*parts)
        elif any(p is not None for p in parts):
            raise ValueError("give either backbone= or the five components, not both")
        self.backbone = backbone
        self.config = config or recommended_config(backbone)
        # a read-out this family cannot run, or settings it cannot read, are refused here, not at the first image
        _check_fit(backbone, self.config)
        self.captioner = captioner
        if captioner is not None and (unused := self.config.unused_captioner_reason()):
            logger.warning("The captioner is not used: %s (a call's config may still use it).", unused)
        self.model_settings = model_settings
        if default_classes is not None:  # a plain string was read letter by letter: "cat" as c, a, t
            default_classes = check_class_names(default_classes, example="default_classes=['cat', 'sofa']")
        classes = default_classes if default_classes is not None else self.model_settings.classes
        self.default_classes = list(classes) if classes else None
        self._filters: dict[str, Any] = {}  # built-in filters built by name on first use (filters.build_filter)
        self._warned_reads: set[tuple[str, str, str, str]] = set()  # names read from one token: warned once each

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "shapes",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = DEFAULT_DTYPE,
        config: SegmenterConfig | None = None,
        captioner: Any = None,
        local_files_only: bool | None = None,
        compile: bool | str = False,
        channels_last: bool = False,
        **config_overrides: Any,
    ) -> DiffSegmenter:
        """Load a segmenter from ``"shapes"`` (the shipped model), a hub id, or a local diffusers folder.

        The backbone family (SD1/SD2, SDXL, SD3 with or without T5, FLUX, PixArt-Σ) is chosen from the folder's
        ``model_index.json``; only the components segmentation needs are loaded (no safety checker), from
        safetensors only. Settings: explicit ``config``/overrides > the folder's ``segmenter_config.json`` > the
        family's defaults (:meth:`DiffusionBackbone.family_defaults`; none for SD1/SD2) > the class defaults.

        Args:
            model (`str` or `Path`): ``"shapes"``, a hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``,
                or a folder in the diffusers layout.
            device (`str` or `torch.device`, *optional*, defaults to "cpu").
            dtype (`torch.dtype` or `str`, *optional*, defaults to float32): e.g. ``torch.float16`` (or
                ``"float16"``/``"fp16"``) on a GPU; float32, float16 or bfloat16.
            config (`SegmenterConfig`, *optional*): full settings, used as given (the folder's and the family's
                recommendations are not applied: a warning names those it leaves at the class defaults); otherwise
                the model folder's ``segmenter_config.json`` over the family's defaults over the class defaults.
            captioner (*optional*): a captioner object, or a BLIP hub id / folder to load
                (e.g. ``"Salesforce/blip-image-captioning-large"``); None = no captioner (template prompts).
            local_files_only (`bool`, *optional*): never contact the hub (default: the ``HF_HUB_OFFLINE`` setting).
            compile (`bool` or `str`, *optional*, defaults to False): ``torch.compile`` the denoiser and the VAE
                encoder (True, or a mode: ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``...); see
                :meth:`optimize`. A runtime option: the maps agree with the uncompiled model to float rounding.
            channels_last (`bool`, *optional*, defaults to False): channels-last memory for the UNet and VAE
                convolutions (faster fp16 convolutions on recent NVIDIA GPUs); see :meth:`optimize`.
            **config_overrides: single SegmenterConfig fields to change, e.g. ``tau=0.5``.

        Raises:
            ModelNotFoundError: the model is neither a local folder nor reachable/cached on the hub; the message says
                where it looked and how to fix it.
            ValueError: a device this machine does not have (:func:`~diffsegmenter.transfer.check_device`) or a dtype
                that is not float32, float16 or bfloat16 (:func:`~diffsegmenter.transfer.check_dtype`), before
                anything is loaded.
        """
        from .loading import folder_settings, load_backbone
        from .runtime import check_compile
        from .transfer import check_device, check_dtype

        device = check_device(device)
        dtype = check_dtype(dtype)
        check_compile(compile)  # not after minutes of loading
        # the settings' names and values, checked before any weight is read (a hub model is gigabytes); the family's
        # defaults (level weights, blocks) take part in no check across fields
        (config or SegmenterConfig().replace(**folder_settings(model).segmenter)).replace(**config_overrides)
        if dtype == torch.float16 and torch.device(device).type == "cpu":
            logger.warning(
                "float16 on the CPU is slower than float32 (most CPUs have no float16 arithmetic) and saves only "
                "memory; use float32, or bfloat16 on a CPU that has it"
            )

        backbone, settings = load_backbone(model, device=device, dtype=dtype, local_files_only=local_files_only)
        # precedence: explicit arguments > the folder's segmenter_config.json > the family's defaults > the class
        # defaults (for SD1/SD2 the family adds nothing: the released code's values)
        recommended = recommended_config(backbone, settings)
        if config is None:
            config = recommended
        else:
            _warn_replaced_recommendations(config, recommended, settings.source, backbone)
        config = config.replace(**config_overrides)
        if isinstance(captioner, (str, Path)):
            unused = config.unused_captioner_reason()
            if unused:  # BLIP-large is 1.8 GB: not loaded to be ignored
                raise ValueError(
                    f"captioner {str(captioner)!r} would not be used: {unused}; set prompt_mode='per_class' and "
                    "use_captioner=True (segment: --prompt-mode per_class), or leave the captioner out (for the CLIP "
                    "filter's BLIP, give it to the filter: blip=..., segment --blip)"
                )
            from .captioner import BlipCaptioner

            captioner = BlipCaptioner.from_pretrained(
                captioner,
                device=device,
                dtype=dtype,
                local_files_only=local_files_only,
                max_length=config.caption_max_tokens,
            )
        try:
            seg = cls(config=config, captioner=captioner, model_settings=settings, backbone=backbone)
        except ValueError as exc:  # a setting the family cannot read: name the file that set it, if one did
            from_file = _set_by_file(backbone, config, settings) if settings.source is not None else []
            if not from_file:
                raise
            raise ValueError(
                f"{exc} ({', '.join(from_file)} set by {settings.source}; override with a keyword or --set, or edit "
                "the file)"
            ) from None
        if compile or channels_last:
            seg.optimize(compile=compile, channels_last=channels_last)
        return seg

    @property
    def tokenizer(self):
        """The backbone's tokenizer (prompts are built with it)."""
        return self.backbone.tokenizer

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def model_settings(self) -> ModelSettings:
        """What the model folder recommends (:class:`~diffsegmenter.settings.ModelSettings`); a dict set here in
        the ``segmenter_config.json`` layout is read as one."""
        return self._model_settings

    @model_settings.setter
    def model_settings(self, value: ModelSettings | dict[str, Any] | None) -> None:
        self._model_settings = ModelSettings.coerce(value)

    @property
    def resolution(self) -> int:
        """Side length images are resized to before encoding: ``config.resolution`` or :attr:`native_resolution`."""
        return int(self.config.resolution) if self.config.resolution else self.native_resolution

    @property
    def native_resolution(self) -> int:
        """The input side length the model was trained at (512 for SD1.5, 64 for the shapes model)."""
        return self.backbone.native_resolution

    # ------------------------------------------------------------------ public API
    @_one_call_at_a_time
    def segment(
        self,
        images,
        classes: Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        filter: Any = None,
        seed: int | None = None,
        tau: float | None = None,
        refine: str | None = None,
    ):
        """Segment one image or a list of images.

        Args:
            images: a path, a PIL image or an (H, W[, C]) array (uint8, uint16 or float in [0, 1]); or a list.
            classes (`list[str]` or `list[list[str]]`, *optional*): class names for every image, or one list per
                image. With a filter, the vocabulary to choose from. Defaults to the model's own classes, if any.
            filter (*optional*): None (keep all classes), ``"clip"``, ``"diffusion"`` (built once by
                :func:`~diffsegmenter.filters.build_filter`), or a filter object with
                ``select(image, vocabulary) -> FilterDecision`` (or ``scores()`` and ``predict()``).
            seed (`int`, *optional*): noise seed; defaults to ``config.seed``. Same seed, same output.
            tau (`float`, *optional*): background score in [0, 1]; defaults to ``config.tau``. A negative value means
                background never wins (every pixel gets its best class, for label sets without background).
            refine (`str`, *optional*): ``"none"`` or ``"pamr"`` for this call; defaults to ``config.refine`` (the
                rounds, dilations and working size are always the config's). Not in the paper: see
                :mod:`~diffsegmenter.refinement`.

        Returns:
            `SegmentationResult` for one image, or a list of them for a list.

        Raises:
            ValueError: bad classes (empty list, empty or duplicate name, a name the tokenizer cannot place or that
                does not fit the prompt; checked once, before any image is read), a tau outside its range, an
                unknown ``refine``, an image
                over ``config.max_image_pixels`` (:class:`~diffsegmenter.images.ImageTooLargeError`, refused before
                it is decoded) or an image that cannot be read (:class:`~diffsegmenter.images.ImageLoadError`).
            MemoryError: the full-size score maps of the call could not fit this machine's memory (refused up front).
        """
        from .images import load_image

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        cfg = self.config.replace()  # checked again: a field set in place (seg.config.tau = "0.3") skipped the checks
        if tau is not None:
            tau = check_tau(tau, allow_no_background=True)
        refine = cfg.refine if refine is None else check_refine(refine)
        # 1. the class lists, checked once before any image; the images as RGB uint8 arrays (refused over the pixel
        #    limit before decoding); a category filter keeps the classes present
        class_lists = class_lists_per_image(classes, len(items), self.default_classes)
        for names in dict.fromkeys(tuple(c) for c in class_lists):
            self.check_classes(list(names))
        _check_fit(self.backbone, cfg)  # a config set since construction: refused before any image
        # a per-call seed follows the config's rule and message
        call_config = cfg.with_seed(seed)
        seed = call_config.seed
        # the whole call reads the checked copy (with the call's seed): every method below reads self.config
        with self._using(call_config):
            arrays = [load_image(x, max_pixels=cfg.max_image_pixels) for x in items]
            # a filter that draws noise (the diffusion one) draws this call's
            class_lists, decisions = self._filter_classes(filter, arrays, class_lists)
            check_full_size_memory([a.shape[:2] for a in arrays], class_lists)
            tau = cfg.tau if tau is None else float(tau)
            # 2. the views: the images, and with `flip` their mirror images after them (view n + i mirrors image i);
            #    resize, VAE-encode and noise to `timestep` (the same seeded noise for all classes of an image); on a GPU
            #    the latents stay there
            # .copy(), not ascontiguousarray: a 1-pixel-wide mirror is "contiguous" with a negative stride, which
            # torch.from_numpy refuses
            views = arrays + [a[:, ::-1].copy() for a in arrays] if cfg.flip else arrays
            latents = self.encode_images(views, seed)
            # 3. the prompts: one per class (or one naming all classes), continued by the captioner if any; a mirrored
            #    view gets its image's prompts
            work = self._work(arrays, class_lists)
            view_work = work + [(i + len(arrays), p) for i, p in work] if cfg.flip else work
            # 4. the passes the class decision asks for: one denoiser forward per batch of conditional prompts, capturing
            #    attention (the capturing processors installed once for the call, or for the run in a session()); per
            #    class: its tokens' maps per level, fused, completed with the mean self-attention
            decision = class_decision(cfg, self.resolution)
            maps = ClassMaps()
            with self.backbone.capture_session():
                for plan in decision.passes():
                    pass_latents = (
                        latents if plan.resolution is None else self.encode_images(views, seed, plan.resolution)
                    )
                    maps.update(self._run_pass(view_work, pass_latents, plan))
            # 5. per image: upsample to its size, min-max per class, decide the class (with `flip`, the mean of the
            #    image's and its mirror's scores; with `refine`, PAMR with the image's colours), label against the
            #    background tau (on the maps' device; the results come back to the host in few copies)
            refiner = (
                Refiner(cfg.refine_iterations, tuple(cfg.refine_dilations), cfg.refine_max_side)
                if refine == "pamr"
                else None
            )
            results = build_results(arrays, class_lists, work, maps, decision, tau, flip=cfg.flip, refiner=refiner)
            for res, decision in zip(results, decisions):
                if decision is not None:
                    res.candidates, res.filter_best_guess = decision.scores, decision.best_guess
            if cfg.readout == "single-block":
                _warn_if_raw_scores_under_tau(results)
            return results[0] if single else results

    @contextmanager
    def session(self) -> Iterator[DiffSegmenter]:
        """A run of many :meth:`segment` calls with the capturing attention processors installed once (instead of
        once per call) and switched on per pass; the model's own processors are back on exit, also after an
        exception. Results are the same as without it.

        Example:
            ```python
            >>> with seg.session():
            ...     for batch in batches:
            ...         results = seg.segment(batch, classes=["cat", "sofa"])
            ```
        """
        with self.backbone.call_lock, self.backbone.capture_session():  # other threads' calls wait for the run
            yield self

    def optimize(self, *, compile: bool | str = False, channels_last: bool = False) -> DiffSegmenter:
        """Speed options that change no setting of the method (:func:`~diffsegmenter.runtime.optimize_backbone`):
        ``torch.compile`` of the denoiser and the VAE encoder (``compile=True`` or a mode such as
        ``"max-autotune"``), and channels-last memory for the UNet and VAE convolutions. Maps agree with the plain
        model to float rounding. Returns self.
        """
        from .runtime import optimize_backbone

        optimize_backbone(self.backbone, compile=compile, channels_last=channels_last)
        return self

    def __call__(self, images, classes=None, **kwargs):
        """Same as :meth:`segment`."""
        return self.segment(images, classes, **kwargs)

    @_one_call_at_a_time
    def edit(
        self,
        image,
        target: str,
        prompt: str,
        *,
        classes: Sequence[str] | None = None,
        new_class: str | None = None,
        tau: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        **settings: Any,
    ):
        """Segment ``target`` and regenerate only its region from ``prompt`` with this model (blended latent
        diffusion; :mod:`~diffsegmenter.editing`). Pixels outside the dilated mask are returned exactly.

        Args:
            image: a path, a PIL image or an array, as :meth:`segment` reads them.
            target (`str`): the class to replace, e.g. ``"cat"``.
            prompt (`str`): what to put there, e.g. ``"a tiger"``.
            classes (`list[str]`, *optional*): classes competing with the target for each pixel (must hold it);
                defaults to the model's own classes when they hold the target, else the target alone.
            new_class (`str`, *optional*): the class the prompt makes, e.g. ``"tiger"``; needed with
                ``candidates > 1``: each candidate is segmented again and the one most labelled ``new_class`` kept.
            tau (`float`, *optional*): background score in [0, 1] for the mask; defaults to ``config.tau``.
            seed (`int`, *optional*): seed of the segmentation and the edit; same seed, same output.
            progress (`bool`, *optional*): show a progress bar over the denoising steps.
            **settings: :class:`~diffsegmenter.editing.EditSettings` fields: ``dilate``, ``feather``, ``steps``,
                ``guidance``, ``strength``, ``resolution``, ``candidates``.

        Returns:
            :class:`~diffsegmenter.editing.EditResult`: ``image`` (H, W, 3) uint8 at the input size, ``mask`` (the
            paste-back weight), ``region``, ``segmentation``.
        """
        from .editing import EditSettings, edit_images

        fields = [f.name for f in dataclasses.fields(EditSettings)]
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise TypeError(
                f"edit() got {', '.join(map(repr, unknown))}, which is not an edit setting; the edit settings are "
                f"{', '.join(fields)}. A segmentation setting goes in the "
                "segmenter's config (DiffSegmenter.from_pretrained(..., name=value), or seg.config = "
                "seg.config.replace(name=value))"
            )
        return edit_images(
            self,
            [image],
            [target],
            [prompt],
            classes=classes,
            new_classes=new_class,
            tau=tau,
            settings=EditSettings(**settings),
            seed=seed,
            progress=progress,
        )[0]

    # ------------------------------------------------------------------ recipe steps, public for tests and tools
    def preprocess(self, image: np.ndarray, resolution: int | None = None) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> (3, R, R) float32 in [-1, 1] (bilinear, aspect not kept); R = ``resolution`` or
        :attr:`resolution`. Plain bilinear as released unless ``config.antialias``."""
        return self.backbone.preprocess(image, resolution or self.resolution, antialias=self.config.antialias)

    def encode_latents(self, images: list[np.ndarray], seed: int, resolution: int | None = None) -> torch.Tensor:
        """VAE-encode RGB uint8 (H, W, 3) images at ``resolution`` (None = :attr:`resolution`) to clean, scaled
        latents: (N, c, h, w) float32 on the CPU; the posterior sample seeded by ``seed`` when
        ``config.vae_sample``, else its mean."""
        cfg = self.config
        return self.backbone.encode_latents(
            images, resolution or self.resolution, sample=cfg.vae_sample, seed=seed, antialias=cfg.antialias
        )

    def noise_like(self, latents: torch.Tensor, seed: int) -> torch.Tensor:
        """Per-image seeded noise, (N, c, h, w) float32 on the CPU (:meth:`DiffusionBackbone.noise_like`)."""
        return self.backbone.noise_like(latents, seed)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray], seed: int, resolution: int | None = None) -> torch.Tensor:
        """:meth:`encode_latents`, noised to ``config.timestep`` with :meth:`noise_like` of ``seed`` (the same noise
        for all classes of an image): (N, c, h, w) in the backbone's dtype on its device."""
        cfg = self.config
        kw = {"keep_on_device": True} if _takes_keep_on_device(type(self.backbone)) else {}
        z0 = self.backbone.encode_latents(
            images, resolution or self.resolution, sample=cfg.vae_sample, seed=seed, antialias=cfg.antialias, **kw
        )
        noise = to_device(self.noise_like(z0, seed), z0.device)  # drawn on the CPU: the same noise on any device
        zt = self.backbone.add_noise(z0, noise, cfg.timestep)
        return zt.to(self.device, self.dtype)

    def build_prompts(self, image: np.ndarray, classes: list[str]) -> list[ClassPrompt]:
        """The prompts for one image's classes (:func:`~diffsegmenter.prompts.build_prompts` with this config and
        captioner)."""
        return build_prompts(self.tokenizer, image, classes, self.config, self.captioner)

    def encode_prompt(self, prompt: ClassPrompt) -> torch.Tensor:
        """Text embedding of a prompt with its class emphasis applied (``config.emphasis`` on the tokens
        ``config.emphasis_scope`` picks): (T, D) in the backbone's dtype, cached by the backbone."""
        cfg = self.config
        positions = emphasis_positions(prompt, cfg.emphasis_scope)
        return self.backbone.encode_text(
            prompt.input_ids, emphasis=cfg.emphasis, positions=positions, text=prompt.text
        )

    @torch.inference_mode()
    def attention_maps(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        token_groups: list[list[list[int]]],
        cfg_reference: bool = False,
        content: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One attention pass with this config (:func:`~diffsegmenter.passes.attention_pass`): per sample, the fused
        and completed map of each of its classes.

        Args:
            latents (`torch.Tensor`): (B, c, h, w) noisy latents.
            text (`torch.Tensor`): (B, T, D) prompt embeddings.
            token_groups (`list[list[list[int]]]`): per sample, per class, the token positions to average.
            cfg_reference (`bool`, *optional*): run the released code's [empty prompt, prompt] batch of 2B and read
                the conditional half (for equivalence tests and the reference benchmark; twice the cost).
            content (`list[torch.Tensor]`, *optional*): per sample, its prompt's content tokens, (T,) bool
                (:func:`~diffsegmenter.readouts.content_token_mask` of its ``input_ids``, keeping its class tokens);
                needed by the ``"rescaled"`` and ``"weighted"`` read-outs.

        Returns:
            `torch.Tensor`: (B, C, h, w) float32 maps in [0, 1] at the latent resolution (at the self-attention
            level's resolution when ``config.self_attention_factor`` names a coarser one).
        """
        spec = PassSpec.from_config(self.config)
        return attention_pass(
            self.backbone, latents, text, token_groups, spec, cfg_reference=cfg_reference, content=content
        ).where

    def check_classes(self, classes: Sequence[str]) -> list[str]:
        """Check a class list once, before any image: the shared list rule
        (:func:`~diffsegmenter.classes.check_class_names`), then that this model's tokenizer can place every name in
        a prompt of the configured template (readable after tokenising, not cut off by the text encoder's length),
        and that no two names are the same tokens to it (they would get identical maps). With a prompt per class on
        a causal text encoder (SD, SDXL), it warns when two are read (``token_rule``) from the same token after the
        same words ("red car" and "red cat" under ``"first"``: near-identical maps).

        The command line calls it right after loading the model, so a bad name is reported once, up front.

        Args:
            classes (`Sequence[str]`): class names (a filter's vocabulary included).

        Returns:
            `list[str]`: the names as :func:`~diffsegmenter.classes.clean_class_name` keeps them.

        Raises:
            ValueError: the message names the offending class and how to fix it (``ClassTokenError`` for names the
                tokenizer cannot place).
        """
        names = check_class_names(classes)
        cfg = self.config
        read_as: dict[tuple[int, ...], str] = {}
        read_through: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {}
        same_read: tuple[str, str, str] | None = None
        for name in names:
            try:
                # a single-mode prompt naming one class has exactly these segments too
                prompt = per_class_prompt(self.tokenizer, name, 0, cfg.template, cfg.class_phrase)
            except ClassTokenError as exc:
                if repr(short_name(name)) in str(exc):
                    raise
                raise ClassTokenError(f"class {short_name(name)!r}: {exc}") from None
            tokens = tuple(prompt.input_ids[i] for i in prompt.class_tokens[0])
            if tokens in read_as:  # e.g. two names whose other characters the tokenizer does not know
                raise ClassTokenError(
                    f"classes {short_name(read_as[tokens])!r} and {short_name(name)!r} are the same tokens to this "
                    "model's tokenizer, so they would get identical maps; rename one with words it can read"
                )
            read_as[tokens] = name
            if cfg.prompt_mode == "per_class" and getattr(self.backbone, "causal_text_encoder", False):
                # each class has its own prompt: two names whose read tokens (token_rule) come after the same words
                # get the same embeddings there from a causal text encoder, e.g. "traffic light" and "traffic
                # circle" under "first"; their maps differ only by the softmax over the other tokens. A warning, not
                # a refusal: evaluations of such vocabularies under the default rule are still what was asked.
                picked = select_positions(prompt.class_tokens[0], [], cfg.token_rule)
                key = (tuple(prompt.input_ids[: max(picked) + 1]), tuple(picked))
                if key in read_through and not same_read:
                    same_read = (read_through[key], name, self.tokenizer.decode([prompt.input_ids[i] for i in picked]))
                read_through.setdefault(key, name)
        warned = None if same_read is None else (*same_read, cfg.token_rule)
        if warned is not None and warned not in self._warned_reads:  # segment() checks the list at every call
            self._warned_reads.add(warned)
            first, second, read = same_read
            logger.warning(
                "classes %r and %r are both read from %r after the same words (token_rule=%r), so their maps will be "
                "near-identical; set token_rule='mean' (--set token_rule=mean) or 'last', or rename one",
                short_name(first), short_name(second), read.strip(), cfg.token_rule,
            )  # fmt: skip
        return names

    def _get_filter(self, filter: Any):
        """A filter object from a name (built once by :func:`~diffsegmenter.filters.build_filter`) or the object."""
        if not isinstance(filter, str):
            return filter
        if filter not in self._filters:
            from .filters.base import build_filter

            self._filters[filter] = build_filter(filter, self)
        return self._filters[filter]

    def _run_pass(self, work: list[tuple[int, ClassPrompt]], latents: torch.Tensor, plan: PassPlan) -> ClassMaps:
        spec = PassSpec.from_config(self.config, where=plan.where, which_weights=plan.which_weights)
        cfg = self.config
        return run_batched(
            self.backbone,
            work,
            latents,
            spec,
            encode=self.encode_prompt,
            token_rule=cfg.token_rule,
            batch_size=cfg.batch_size,
        )

    @contextmanager
    def _using(self, config: SegmenterConfig) -> Iterator[None]:
        """``self.config`` is ``config`` inside (what filters read), and the config as it was afterwards, always."""
        previous, self.config = self.config, config
        try:
            yield
        finally:
            self.config = previous

    def _filter_classes(
        self, filter: Any, arrays: list[np.ndarray], class_lists: list[list[str]]
    ) -> tuple[list[list[str]], list[FilterDecision | None]]:
        """Each image's kept classes and the filter's decision, as results record it: kept in vocabulary order,
        a float score for every vocabulary class (``candidates``), ``best_guess``; None without a filter."""
        if filter is None:
            return class_lists, [None] * len(arrays)
        from .filters.base import FilterDecision, select_classes

        flt = self._get_filter(filter)
        decisions = []
        for img, vocab in zip(arrays, class_lists):
            got = select_classes(flt, img, vocab)  # one filter run per image
            kept = set(got.kept)
            decisions.append(
                FilterDecision(
                    [c for c in vocab if c in kept],
                    {c: float(got.scores.get(c, 0.0)) for c in vocab},
                    bool(getattr(got, "best_guess", False)),
                )
            )
        return [d.kept for d in decisions], decisions

    def _work(self, arrays: list[np.ndarray], class_lists: list[list[str]]) -> list[tuple[int, ClassPrompt]]:
        """(image index, prompt) items; without a captioner the prompts of a class list are built once per call."""
        cfg = self.config
        per_image = self.captioner is not None and cfg.unused_captioner_reason() is None
        built: dict[tuple[str, ...], list[ClassPrompt]] = {}
        work = []
        for i, (im, names) in enumerate(zip(arrays, class_lists)):
            key = tuple(names)
            if per_image or key not in built:
                built[key] = self.build_prompts(im, names)
            work.extend((i, p) for p in built[key])
        return work


def recommended_config(backbone: DiffusionBackbone, settings: ModelSettings | None = None) -> SegmenterConfig:
    """The settings a model recommends: the library's defaults, then the backbone family's, then its folder's
    ``segmenter_config.json`` (`settings`), as ``from_pretrained`` takes them when given no config."""
    config = SegmenterConfig().replace(**backbone.family_defaults())
    return config.replace(**settings.segmenter) if settings is not None else config


def _check_fit(backbone: DiffusionBackbone, config: SegmenterConfig) -> None:
    """Refuse settings the backbone cannot read (:meth:`~diffsegmenter.readouts.Readout.check_backbone`) and input
    sizes it cannot take: what the first attention pass would otherwise refuse, after the images were read
    (ValueError)."""
    spec = PassSpec.from_config(config, which_weights=config.class_level_weights)
    readout_for(config.readout, config.readout_block).check_backbone(backbone, spec)
    for setting in ("resolution", "class_resolution"):
        if getattr(config, setting) is not None:
            backbone.check_resolution(int(getattr(config, setting)), setting)


def _set_by_file(backbone: DiffusionBackbone, config: SegmenterConfig, settings: ModelSettings) -> list[str]:
    """The settings of a model folder's file (kept in `config`) whose family or class default instead would make
    `config` fit `backbone`: the ones to blame when it does not (found by trying, not by reading the message)."""
    base = recommended_config(backbone)
    blamed = []
    for key, value in settings.segmenter.items():
        if getattr(config, key, None) != value or getattr(base, key, None) == value:
            continue
        try:
            _check_fit(backbone, config.replace(**{key: getattr(base, key)}))
        except (TypeError, ValueError):
            continue
        blamed.append(key)
    return blamed


@functools.cache
def _takes_keep_on_device(backbone_class: type) -> bool:
    """Whether a backbone class's ``encode_latents`` has the ``keep_on_device`` option (a backbone from outside this
    package may not); looked up once per class."""
    return "keep_on_device" in inspect.signature(backbone_class.encode_latents).parameters


def _warn_if_raw_scores_under_tau(results: list[SegmentationResult]) -> None:
    """The single-block read-out's scores are raw probabilities, often far below a tau chosen for min-max maps: say so
    when an image came out all background because every score is at most its tau."""
    low = [(i, float(r.scores.max())) for i, r in enumerate(results) if r.background_note() is not None]
    if low:
        i, peak = low[0]
        logger.warning(
            "readout='single-block': every score of %d image(s) is at most tau=%g (image %d peaks at %.4g), so they "
            "are all background; its scores are raw attention probabilities: give a small tau (e.g. tau=%.2g)",
            len(low),
            results[i].tau,
            i,
            peak,
            peak / 2,
        )
