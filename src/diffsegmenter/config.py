"""The method's hyperparameters, in one place, with the paper's defaults.

Sources (see ``shared/docs/method.md``): [CODE] = the released scripts at HEAD b3a8686.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "COMPILE_MODES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MAX_SEED",
    "PAPER_LEVEL_WEIGHTS",
    "PAMR_DILATIONS",
    "READOUTS",
    "REFINEMENTS",
    "RELEASED_SCRIPT_RULES",
    "SegmenterConfig",
    "add_override_argument",
    "check_refine",
    "check_slot_template",
    "check_tau",
    "parse_override",
]

#: ``compile=`` values besides True/False (``torch.compile``'s modes; :mod:`diffsegmenter.runtime`).
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

MAX_SEED = 2**63 - 2
"""The largest ``seed`` a config (and a call's or an edit's seed) takes."""

#: Fusion weight per downsampling factor of the latent: 1/8, 1/4, 1/2, 1/1 -> 0.3, 0.5, 0.1, 0.1 ([CODE] L452;
#: for SD1.5 at 512² these are the 8x8, 16x16, 32x32 and 64x64 levels).
PAPER_LEVEL_WEIGHTS: dict[int, float] = {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1}
#: The read-outs ``SegmenterConfig.readout`` accepts (:mod:`diffsegmenter.readouts`).
READOUTS = ("paper", "rescaled", "weighted", "single-block", "concept")
#: The post-processing steps ``SegmenterConfig.refine`` accepts (:mod:`diffsegmenter.refinement`).
REFINEMENTS = ("none", "pamr")
#: PAMR's neighbourhood dilations in its paper's setting (Araslanov & Roth, CVPR 2020): 8 neighbours at each.
PAMR_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)

#: How each released evaluation script words its prompts and picks the class token ([CODE]
#: `open_vocabulary/{voc12,voc10,coco}`, ``shared/docs/method.md`` §3 steps 4 and 8). SegmenterConfig's defaults are
#: the VOC12 script's; ``diffsegmenter eval --protocol paper`` applies the script of the dataset being evaluated.
RELEASED_SCRIPT_RULES: dict[str, dict[str, Any]] = {
    "voc12": {"template": "a photograph of {}", "token_rule": "first", "ing_heuristic": True, "ing_offset": 1},
    "context": {"template": "a photography of {}", "token_rule": "last", "ing_heuristic": True, "ing_offset": 1},
    "coco": {"template": "a photography of {}", "token_rule": "last", "ing_heuristic": True, "ing_offset": 2},
}

#: Default :attr:`SegmenterConfig.max_image_pixels`: 40 megapixels (e.g. 8000 x 5000). That is above phone photos
#: (12 MP by default, up to 50 MP) and most camera photos (24 MP typical); 45-61 MP camera files need a higher
#: ``--max-pixels``. Memory grows with the input's pixels because labels and score maps are returned at the input's
#: size: measured on the shapes model, 2.0 GB peak for 16 MP and 4 classes (about 100 bytes per pixel with 4 classes,
#: some 25 more per extra class), so 40 MP with a few classes stays within about 4-8 GB, while the 11000 x 11000
#: case that prompted the limit needed 11.6 GB. The model itself only sees a resize to its resolution (512 for SD).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


@dataclass
class SegmenterConfig:
    """Every knob of the segmentation method. Library defaults live here and only here.

    ``SegmenterConfig()`` reproduces the released VOC12 script (``ptp_stable_best.py``) on SD1/SD2 models: sampled
    VAE posterior, plain bilinear resize, the "-ing" rule, the first sub-token, emphasis on the last word. Each
    departure is a named field, off by default.

    A model folder may carry ``segmenter_config.json`` with values recommended for that model (chosen on
    validation data); explicit arguments override it.
    """

    # Input side length the image is resized to before VAE encoding, aspect not kept ([CODE]: 512 for SD1.5).
    # None = the UNet's sample_size x the VAE's downsampling factor.
    resolution: int | None = None
    # Diffusion timestep the latent is noised to; one UNet forward at this t ([CODE] `times = [100]`). DDPM families
    # (SD1/SD2/SDXL/PixArt) noise with their scheduler's add_noise at t. Flow-matching families (SD3, FLUX) read it as
    # "t of 1000 on SD's DDPM schedule" and noise to the sigma of equal signal-to-noise ratio:
    # sigma = sqrt(1 - abar_t) / (sqrt(abar_t) + sqrt(1 - abar_t)); t = 100 -> sigma 0.256 (backbones.flow).
    timestep: int = 100
    # Seed of the noise; the same noise is used for every class of an image ([CODE] used unseeded noise).
    seed: int = 0
    # Encode with a sample of the VAE posterior, as the released scripts do ([CODE] L480 `latent_dist.sample()`); the
    # draw is seeded (eps from Generator(seed + 1)), so results stay deterministic. False = the posterior mean (the
    # demo notebook's choice; on a trained SD VAE the two differ little, on a random one they differ a lot).
    vae_sample: bool = True
    # Antialias when resizing the image to `resolution`. False = plain bilinear, align_corners=False, as the released
    # scripts ([CODE] L478); it aliases when a side is larger than `resolution` (COCO, photos). True is a departure.
    antialias: bool = False
    # Prompt template; "{}" receives the class phrase ([CODE] VOC12: "a photograph of {c}").
    template: str = "a photograph of {}"
    # How one class is written inside the template ("{}" = the bare name, as the paper; e.g. "a {}").
    class_phrase: str = "{}"
    # "per_class": one prompt and one UNet sample per class (paper). "single": all classes of an image named in one
    # prompt, one UNet sample per image (FA-Seg style; faster, chunked when the names exceed the prompt length).
    prompt_mode: Literal["per_class", "single"] = "per_class"
    # Separator between class phrases in "single" mode.
    joiner: str = " and "
    # Class emphasis: z_empty + w * (z - z_empty) on the emphasised tokens (Compel "++" = 1.1**2 = 1.21, [CODE]).
    # 1.0 disables it.
    emphasis: float = 1.21
    # Which tokens the emphasis weights. "last_word": the sub-tokens of the class name's last whitespace word, as
    # Compel reads the released "{class}++" ("traffic light++" weights only "light"). "class_tokens": every sub-token
    # of the class name (a departure). The two agree for one-word names.
    emphasis_scope: Literal["last_word", "class_tokens"] = "last_word"
    # Which sub-token map stands for a class name of several tokens: "first" ([CODE] VOC12 script: fixed index 4),
    # "last" ([CODE] VOC10/Context and COCO scripts: index 3 + len), or "mean" of all (a departure).
    token_rule: Literal["mean", "last", "first"] = "first"
    # Released-code "-ing" rule ([CODE] VOC12 L515-518, always on): when the prompt word right after the word holding
    # the class token ends in "ing" (usually the captioner's first continuation word, e.g. "sitting"), the map of the
    # token `ing_offset` places after the class token is averaged in. Only a continued prompt can trigger it.
    ing_heuristic: bool = True
    # Distance of that extra token from the class token: 1 in the VOC12 and Context scripts, 2 in the COCO script
    # ([CODE] `[3+embs_len, 5+embs_len]`, which skips one token).
    ing_offset: int = 1
    # Fusion weights keyed by downsampling factor, renormalised over the levels a model has ([CODE] L452).
    level_weights: dict[int, float] = field(default_factory=lambda: dict(PAPER_LEVEL_WEIGHTS))
    # NOT in the paper. None (default, the paper): each class's fused, completed map decides both where the class is
    # and which class a pixel gets. Given (weights keyed like level_weights): the paper's maps still decide *where*
    # (their maximum over the classes against tau), and the raw cross-attention fused with these weights decides
    # *which* class: score_c = max_k S_k x C_c / max_k C_k (aggregation.split_where_and_which). For models whose
    # coarse levels bind words to objects while their fine levels only localise (the shipped shapes model).
    class_level_weights: dict[int, float] | None = None
    # NOT in the paper. Only with class_level_weights: input side length of a second UNet pass whose cross-attention
    # decides *which* class, while the paper's pass at `resolution` decides *where*. None = one pass for both. For
    # models that bind words at the object scale they were trained on but localise more finely on a larger input
    # (the shipped shapes model: where at 160, which at its native 64).
    class_resolution: int | None = None
    # Transformer families only (SD3, FLUX, PixArt: no resolution levels, every block at one token grid): indices of
    # the blocks whose image->text attention is averaged (FLUX counts double-stream blocks first, then single-stream
    # ones). None = the family's default (backbones.*.family_defaults). Must stay None on UNet families.
    attention_blocks: list[int] | None = None
    # Transformer families only: blocks whose image self-attention completes the maps. None = the family's default.
    self_attention_blocks: list[int] | None = None
    # How the captured attention becomes class maps (readouts.py). "paper": the released method (fixed level weights,
    # per-class min-max, completion; the SD1/SD2 default). NOT in the paper: "rescaled" (GoCA's per-pixel token
    # rescaling over the prompt's content tokens; any backbone), "weighted" (GoCA's automatic head and layer
    # weighting + rescaling; any backbone; level_weights unused), "single-block" (Seg4Diff: one block's raw
    # image->text probabilities, argmax; SD3, FLUX), "concept" (ConceptAttention: classes as extra token streams;
    # FLUX). Every family keeps "paper" by default: a successor's read-out becomes a family's default only once it is
    # measured on that family (none is yet: no real SDXL, SD3, FLUX or PixArt weights could be run here).
    readout: Literal["paper", "rescaled", "weighted", "single-block", "concept"] = "paper"
    # The single-block read-out's block index (as attention_blocks counts them); None = the family's default
    # (readouts.single_block_default: SD3 block 9 of 24, FLUX double-stream block 12 of 19, scaled to the depth).
    readout_block: int | None = None
    # Times the fused map is multiplied by the mean finest-level self-attention ([CODE]: once; 0 = no completion).
    self_attention_steps: int = 1
    # Downsampling factor of the self-attention layers used for completion; None = the finest level that has
    # self-attention ([CODE]: the 64x64 layers of SD1.5). A small model whose finest self-attention is still
    # unstructured may recommend a coarser level in its segmenter_config.json.
    self_attention_factor: int | None = None
    # Constant background score: a pixel is background unless a class scores above it. The released evaluation
    # swept 0.30-0.74 on the evaluation split itself; 0.4 is a fixed prior inside that range, NOT tuned on any
    # evaluation split. Model folders may recommend their own value chosen on validation data.
    tau: float = 0.4
    # NOT in the paper. Test-time augmentation (mmsegmentation's flip test): also segment the image mirrored left to
    # right, with the same prompts and noise, and average the two views' final score maps (the mirrored view's maps
    # mirrored back) before the background decision. Twice the VAE and denoiser work. Off by default; the shipped
    # shapes model recommends it (val mIoU 0.852 -> 0.889, research/shapes/runs/flip/).
    flip: bool = False
    # NOT in the paper ([CODE]: no CRF, no PAMR). "pamr": pixel-adaptive mask refinement (refinement.pamr) of the
    # final score maps with the image's colours, before the background decision: `refine_iterations` rounds of an
    # average over each pixel's neighbours at `refine_dilations`, weighted by colour similarity. It runs on the image
    # and maps shrunk (aspect kept) to at most `refine_max_side` pixels on the longer side; the refined maps are then
    # resized to the image's size. The field reports it separately from its main tables (protocols.md); the defaults
    # are the PAMR paper's. "none" = the paper's bilinear upsampling only.
    refine: Literal["none", "pamr"] = "none"
    refine_iterations: int = 10
    refine_dilations: list[int] = field(default_factory=lambda: list(PAMR_DILATIONS))
    refine_max_side: int = 512
    # Use the captioner (when one is loaded) to continue the prompt after the class word ([CODE]: BLIP-large).
    use_captioner: bool = True
    # BLIP's decoder length in tokens, the prefix ([DEC] + "a photograph of <class>") included, as generate's
    # max_length counts ([CODE]: transformers' default 20); used when from_pretrained loads the captioner by name.
    caption_max_tokens: int = 20
    # UNet samples per forward; None = as many as fit the memory budget (DiffSegmenter._run_batched), halved
    # automatically on out-of-memory.
    batch_size: int | None = None
    # Largest input accepted, in pixels (height x width); a larger image is refused before it is decoded, with an
    # error naming this setting (CLI --max-pixels). None = no limit. Does not change any result. See
    # DEFAULT_MAX_IMAGE_PIXELS for the memory it bounds.
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # NumPy scalars (np.int64(64), np.float32(1.2)) as Python numbers
            value = getattr(self, f.name)
            if isinstance(value, bool) or type(value) in (int, float):
                continue
            if isinstance(value, numbers.Integral):
                setattr(self, f.name, int(value))
            elif isinstance(value, numbers.Real):
                setattr(self, f.name, float(value))
        self.level_weights = _check_weights("level_weights", self.level_weights)
        if self.class_level_weights is not None:
            self.class_level_weights = _check_weights("class_level_weights", self.class_level_weights)
        for name in ("template", "class_phrase", "joiner"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        check_slot_template("template", self.template, "the class phrase")
        check_slot_template("class_phrase", self.class_phrase, "the class name")
        if self.prompt_mode not in ("per_class", "single"):
            raise ValueError(f"prompt_mode must be 'per_class' or 'single', got {self.prompt_mode!r}")
        if self.token_rule not in ("mean", "last", "first"):
            raise ValueError(f"token_rule must be 'mean', 'last' or 'first', got {self.token_rule!r}")
        if self.emphasis_scope not in ("last_word", "class_tokens"):
            raise ValueError(f"emphasis_scope must be 'last_word' or 'class_tokens', got {self.emphasis_scope!r}")
        for name in ("vae_sample", "antialias", "ing_heuristic", "use_captioner", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_int("ing_offset", self.ing_offset, 1, 8, "1 in the VOC12/Context scripts, 2 in COCO's")
        self.tau = check_tau(self.tau)
        _check_int("timestep", self.timestep, 1, 999, "the diffusion timestep the latent is noised to, e.g. 100")
        _check_int("seed", self.seed, 0, MAX_SEED, "any non-negative integer, e.g. 0")
        if not _is_number(self.emphasis) or not 0 < self.emphasis <= 10:
            raise ValueError(
                f"emphasis must be a number in (0, 10] (1.0 = off, 1.21 = the paper's), got {self.emphasis!r}"
            )
        _check_int("self_attention_steps", self.self_attention_steps, 0, 16, "0 = no completion, 1 = the paper's")
        _check_int(
            "caption_max_tokens", self.caption_max_tokens, 2, 512, "the paper's is 20; 2 = the start token + one"
        )
        _check_int("resolution", self.resolution, 8, 8192, "None = the model's own, e.g. 512", optional=True)
        _check_int(
            "self_attention_factor", self.self_attention_factor, 1, 64, "None = the finest level", optional=True
        )
        _check_int("batch_size", self.batch_size, 1, 1 << 20, "None = as many as fit in memory", optional=True)
        _check_int("max_image_pixels", self.max_image_pixels, 1, 1 << 40, "None = no limit", optional=True)
        for name in ("attention_blocks", "self_attention_blocks"):
            blocks = getattr(self, name)
            if blocks is not None:
                if (
                    not isinstance(blocks, (list, tuple))
                    or not blocks
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)
                ):
                    raise ValueError(f"{name} must be a non-empty list of block indices >= 0 or None, got {blocks!r}")
                setattr(self, name, [int(b) for b in blocks])
        if self.readout not in READOUTS:
            raise ValueError(
                f"readout must be one of {', '.join(repr(r) for r in READOUTS)} ('paper' = the released method), "
                f"got {self.readout!r}"
            )
        check_refine(self.refine)
        _check_int("refine_iterations", self.refine_iterations, 0, 100, "the PAMR paper's is 10")
        _check_int("refine_max_side", self.refine_max_side, 16, 8192, "the longer side PAMR runs at, e.g. 512")
        dilations = self.refine_dilations
        if (
            not isinstance(dilations, (list, tuple))
            or not dilations
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 256 for d in dilations)
        ):
            raise ValueError(
                f"refine_dilations must be a non-empty list of integers in 1..256 (the PAMR paper's "
                f"{list(PAMR_DILATIONS)}), got {dilations!r}"
            )
        self.refine_dilations = [int(d) for d in dilations]
        _check_int("readout_block", self.readout_block, 0, 1023, "None = the family's default", optional=True)
        if self.readout_block is not None and self.readout != "single-block":
            raise ValueError("readout_block only applies to readout='single-block': leave it None")
        if self.readout in ("single-block", "concept") and self.class_level_weights is not None:
            raise ValueError(
                f"readout={self.readout!r} makes its own class decision: leave class_level_weights (and "
                "class_resolution) None; a model folder's segmenter_config.json may set them, so with from_pretrained "
                "pass class_level_weights=None, class_resolution=None as well"
            )
        if self.class_resolution is not None:
            _check_int("class_resolution", self.class_resolution, 8, 8192, "None = one pass for where and which")
            if self.class_level_weights is None:
                raise ValueError(
                    "class_resolution only applies to the separate class decision: set class_level_weights too, "
                    "or leave class_resolution None"
                )

    def unused_captioner_reason(self) -> str | None:
        """Why a captioner would write no prompt under this config (None when it would continue the prompts):
        ``prompt_mode="single"`` (one prompt naming every class) or ``use_captioner=False``."""
        if self.prompt_mode == "single":
            return "prompt_mode is 'single' (one prompt naming every class; the captioner continues per-class prompts)"
        if not self.use_captioner:
            return "use_captioner is False"
        return None

    def with_seed(self, seed: Any) -> SegmenterConfig:
        """This config with a per-call ``seed`` (None: unchanged), checked by the config's rule; NumPy integers are
        taken as ints, booleans are not.

        Raises:
            ValueError: the seed is not an integer in range.
        """
        if seed is None:
            return self
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            seed = int(seed)  # NumPy integers too
        return self.replace(seed=seed)

    def replace(self, **changes: Any) -> SegmenterConfig:
        """A copy with some fields changed; unknown names raise ``ValueError`` listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown SegmenterConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> SegmenterConfig:
        """Load the SegmenterConfig fields of a ``segmenter_config.json``, with ``overrides`` on top.

        The file's other keys (``_classes``, ``_diffusion_filter``, ``_provenance``, ...) are what the model folder
        recommends beyond the method's settings: :class:`~diffsegmenter.settings.ModelSettings` reads all of it.
        """
        from .settings import ModelSettings

        return ModelSettings.from_file(path).segmenter_config(**overrides)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_tau(tau: Any, *, allow_no_background: bool = False) -> float:
    """The one rule for the background score ``tau``: a finite number in [0, 1].

    A pixel is background unless some class scores strictly above ``tau``; scores lie in [0, 1], so ``tau >= 1``
    would make every pixel background. With ``allow_no_background`` (a per-call ``tau`` of ``segment``/``relabel``)
    a negative value is accepted too and means "background never wins" (label sets without a background class).

    Returns:
        `float`: ``tau`` as a float.

    Raises:
        ValueError: a non-number, NaN, infinity or a value outside the range, naming the range.
    """
    low = -math.inf if allow_no_background else 0.0
    if isinstance(tau, numbers.Real) and not isinstance(tau, bool):
        tau = float(tau)  # NumPy scalars too (np.float32(0.3) was refused)
    if not _is_number(tau) or not low <= tau <= 1.0:
        extra = " (or negative: background never wins)" if allow_no_background else ""
        raise ValueError(
            f"tau must be a number in [0, 1]{extra}: the background score a class must beat, e.g. 0.4; got {tau!r}"
        )
    return float(tau)


def check_refine(refine: Any) -> str:
    """The one rule for ``refine``: one of :data:`REFINEMENTS` (the config field and a per-call ``segment`` value).

    Returns:
        `str`: ``refine``.

    Raises:
        ValueError: any other value, naming the accepted ones.
    """
    if refine not in REFINEMENTS:
        raise ValueError(
            f"refine must be one of {', '.join(repr(r) for r in REFINEMENTS)} ('none' = the paper's bilinear "
            f"upsampling only), got {refine!r}"
        )
    return str(refine)


def _check_int(name: str, value: Any, low: int, high: int, hint: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer in {low}..{high}{none} ({hint}), got {value!r}")


def check_slot_template(field: str, value: str, what: str, *, apart: bool = True) -> None:
    """Refuse a template that does not hold exactly one ``{}`` (with ``apart``: standing apart from its neighbouring
    words).

    The segmenter tokenises the class apart from the text around it (to know its token positions), so text glued to
    the slot (``"{}s"``) would be read as another word ("cat s", not "cats"); other braces would reach the text
    encoder as written, or break ``str.format`` (the captioner's prefix).

    Raises:
        ValueError: naming `field`, what is wrong, and how to write it.
    """
    count = value.count("{}")
    if count != 1:
        raise ValueError(
            f"{field} {value!r} must contain '{{}}' exactly once, where {what} goes (it has {count}); e.g. "
            "'a photograph of {}'"
        )
    before, _, after = value.partition("{}")
    if "{" in before + after or "}" in before + after:
        raise ValueError(f"{field} {value!r} has braces besides its one '{{}}'; write the text without other braces")
    touching = (before[-1:] + after[:1]).strip()
    # a Latin letter or digit: scripts written without spaces (Chinese, Japanese) may touch it
    if apart and any(ch.isascii() and ch.isalnum() for ch in touching):
        raise ValueError(
            f"{field} {value!r}: a letter or digit touches '{{}}'; {what} is a word of its own, so put a space or "
            "punctuation around it (e.g. 'a photo of {}', not 'a photo of {}s')"
        )


def _check_weights(name: str, weights: Any) -> dict[int, float]:
    """Level weights: a non-empty mapping downsampling factor (a positive integer) -> finite weight >= 0, sum > 0."""
    example = "e.g. {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1}"
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{name} must map downsampling factors to weights, {example}; got {weights!r}")
    out: dict[int, float] = {}
    for key, value in weights.items():
        try:
            factor = int(key)
        except (TypeError, ValueError):
            factor = 0
        if factor < 1 or str(factor) != str(key).strip():
            raise ValueError(f"{name} keys must be downsampling factors (1, 2, 4, 8...), {example}; got {key!r}")
        if not _is_number(value) or value < 0:
            raise ValueError(f"{name} values must be finite weights >= 0, {example}; got {value!r} for {key!r}")
        out[factor] = float(value)
    if sum(out.values()) <= 0:
        raise ValueError(f"{name} must have at least one positive weight, {example}; got {weights!r}")
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command line's ``FIELD=VALUE`` for one SegmenterConfig field.

    VALUE is read as JSON when it parses (``true``, ``0.5``, ``[1, 2]``), else kept as text. The field name is checked
    later, by :meth:`SegmenterConfig.replace`.

    Raises:
        argparse.ArgumentTypeError: no ``=`` or an empty field name (argparse shows the message as is).
    """
    field_name, sep, raw = text.partition("=")
    if not sep or not field_name.strip():
        raise argparse.ArgumentTypeError(f"--set expects FIELD=VALUE, got {text!r} (e.g. --set token_rule=last)")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return field_name.strip(), value


def add_override_argument(parser: argparse._ActionsContainer, dest: str, help: str) -> None:
    """Add the repeatable ``--set FIELD=VALUE`` option (parsed by :func:`parse_override`) to a parser or group.

    The parsed value is a list of ``(field, value)`` pairs, or None when the option is not given.
    """
    parser.add_argument(
        "--set", dest=dest, metavar="FIELD=VALUE", type=parse_override, action="append", default=None, help=help
    )
