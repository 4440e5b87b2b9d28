"""The method's hyperparameters, in one place, with the paper's defaults.

Sources (see ``shared/docs/method.md``): [CODE] = the released scripts at HEAD b3a8686.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "SegmenterConfig",
    "PAPER_LEVEL_WEIGHTS",
    "RELEASED_SCRIPT_RULES",
    "parse_override",
    "add_override_argument",
]

#: Fusion weight per downsampling factor of the latent: 1/8, 1/4, 1/2, 1/1 -> 0.3, 0.5, 0.1, 0.1 ([CODE] L452;
#: for SD1.5 at 512² these are the 8x8, 16x16, 32x32 and 64x64 levels).
PAPER_LEVEL_WEIGHTS: dict[int, float] = {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1}

#: How each released evaluation script words its prompts and picks the class token ([CODE]
#: `open_vocabulary/{voc12,voc10,coco}`, ``shared/docs/method.md`` §3 steps 4 and 8). SegmenterConfig's defaults are
#: the VOC12 script's; ``diffsegmenter eval --protocol paper`` applies the script of the dataset being evaluated.
RELEASED_SCRIPT_RULES: dict[str, dict[str, Any]] = {
    "voc12": {"template": "a photograph of {}", "token_rule": "first", "ing_heuristic": True, "ing_offset": 1},
    "context": {"template": "a photography of {}", "token_rule": "last", "ing_heuristic": True, "ing_offset": 1},
    "coco": {"template": "a photography of {}", "token_rule": "last", "ing_heuristic": True, "ing_offset": 2},
}


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
    # Diffusion timestep the latent is noised to; one UNet forward at this t ([CODE] `times = [100]`).
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
    # Use the captioner (when one is loaded) to continue the prompt after the class word ([CODE]: BLIP-large).
    use_captioner: bool = True
    # Maximum tokens the captioner generates ([CODE]: transformers' default max_length 20).
    caption_max_tokens: int = 20
    # UNet samples per forward; None = all samples of a call, halved automatically on out-of-memory.
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self.level_weights = {int(k): float(v) for k, v in self.level_weights.items()}
        if self.class_level_weights is not None:
            self.class_level_weights = {int(k): float(v) for k, v in self.class_level_weights.items()}
        if "{}" not in self.template:
            raise ValueError(f"template {self.template!r} must contain '{{}}' where the class phrase goes")
        if "{}" not in self.class_phrase:
            raise ValueError(f"class_phrase {self.class_phrase!r} must contain '{{}}' where the class name goes")
        if self.prompt_mode not in ("per_class", "single"):
            raise ValueError(f"prompt_mode must be 'per_class' or 'single', got {self.prompt_mode!r}")
        if self.token_rule not in ("mean", "last", "first"):
            raise ValueError(f"token_rule must be 'mean', 'last' or 'first', got {self.token_rule!r}")
        if self.emphasis_scope not in ("last_word", "class_tokens"):
            raise ValueError(f"emphasis_scope must be 'last_word' or 'class_tokens', got {self.emphasis_scope!r}")
        if self.ing_offset < 1:
            raise ValueError(
                f"ing_offset must be >= 1 (1 in the VOC12/Context scripts, 2 in COCO's), got {self.ing_offset}"
            )
        if not 0 < self.timestep < 1000:
            raise ValueError(f"timestep must be in 1..999, got {self.timestep}")
        if self.self_attention_steps < 0:
            raise ValueError(f"self_attention_steps must be >= 0, got {self.self_attention_steps}")
        if self.self_attention_factor is not None and self.self_attention_factor < 1:
            raise ValueError(f"self_attention_factor must be >= 1 or None, got {self.self_attention_factor}")
        if self.class_resolution is not None:
            if self.class_resolution < 1:
                raise ValueError(f"class_resolution must be >= 1 or None, got {self.class_resolution}")
            if self.class_level_weights is None:
                raise ValueError(
                    "class_resolution only applies to the separate class decision: set class_level_weights too, "
                    "or leave class_resolution None"
                )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

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
