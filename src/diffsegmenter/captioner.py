"""Image captioners that continue a text prefix (the paper's BLIP prompt design, method.md §4).

DiffSegmenter builds the prompt for class ``c`` as ``"a photograph of c++ <continuation>"``, where the continuation
is what BLIP writes after the prefix ``"a photograph of c"`` when captioning the image conditionally. The released code
calls BLIP once per (image, class) and cuts the prefix off by character count (``s[len(p0):]``), which breaks as soon
as BLIP re-tokenises the prefix differently (upper case, hyphens, accents, unknown characters).

:class:`BlipCaptioner` runs the vision encoder once per image and generates the continuations of **all** prefixes of
that image in one batched, left-padded ``generate`` call, and strips the prefix by comparing normalised word sequences
(:func:`strip_prefix`). Any object with a ``continue_captions`` method (the :class:`Captioner` protocol) can replace it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
DEFAULT_CAPTION_PROMPTS: tuple[str, ...] = ("", "a picture of")

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@runtime_checkable
class Captioner(Protocol):
    """Anything that continues text prefixes given an image."""

    def continue_captions(self, image: np.ndarray, prefixes: list[str]) -> list[str]:
        """Continue each prefix into a caption of ``image``.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image, values in [0, 255].
            prefixes (`list[str]`): text prefixes, e.g. ``["a photograph of cat", "a photograph of sofa"]``.

        Returns:
            `list[str]`: one entry per prefix, in order: only the text generated *after* the prefix, lower-case and
            stripped (e.g. ``"sitting on a couch"``); may be ``""``.
        """
        ...


def _fold(token: str) -> str:
    """Lower-case and strip accents (what BERT's uncased tokenizer does) for comparing words."""
    decomposed = unicodedata.normalize("NFKD", token.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalized_words(text: str) -> list[str]:
    """Split text into normalised word and punctuation tokens, ignoring whitespace.

    Args:
        text (`str`): any text.

    Returns:
        `list[str]`: lower-cased, accent-stripped tokens; runs of word characters and single punctuation marks, e.g.
        ``"A T-shirt, Café"`` -> ``["a", "t", "-", "shirt", ",", "cafe"]``.
    """
    return [_fold(m.group(0)) for m in _WORD_RE.finditer(text)]


def strip_prefix(caption: str, prefix: str) -> str | None:
    """Return what ``caption`` says after ``prefix``, comparing normalised word sequences, not characters.

    Both strings are split with :func:`normalized_words` (case, accents, whitespace and spacing around punctuation
    do not matter), so ``strip_prefix("a t - shirt on a bed", "A T-shirt")`` is ``"on a bed"``. If the caption's word
    at the prefix's last position *extends* the prefix's last word (BLIP appended a word piece, e.g. prefix
    ``"... of cat"`` and caption ``"... of cats sitting"``), that whole word is taken as the echo of the prefix and
    the continuation starts after it (``"sitting"``).

    Args:
        caption (`str`): a full caption that should start with the prefix.
        prefix (`str`): the text prefix the captioner was given.

    Returns:
        `str` or `None`: the continuation, lower-cased and stripped (``""`` when nothing follows the prefix), or
        `None` when the caption does not start with the prefix (the captioner did not echo it). Callers decide what
        to do then; :class:`BlipCaptioner` never gets `None` because it compares against the prefix as BLIP itself
        re-tokenised and decoded it.
    """
    prefix_words = normalized_words(prefix)
    if not prefix_words:
        return caption.strip().lower()
    matches = list(_WORD_RE.finditer(caption))
    n = len(prefix_words)
    if len(matches) < n:
        return None
    caption_words = [_fold(m.group(0)) for m in matches[:n]]
    if caption_words[: n - 1] != prefix_words[: n - 1]:
        return None
    last = caption_words[n - 1]
    if last != prefix_words[-1] and not (last.startswith(prefix_words[-1]) and last.isalnum()):
        return None
    return caption[matches[n - 1].end() :].strip().lower()


def _as_image_array(image: Any) -> np.ndarray:
    """Validate an RGB uint8 ``(H, W, 3)`` array (a PIL image is converted as ``segment`` reads it:
    :func:`~diffsegmenter.images.load_image`, so 16-bit and float modes are scaled and EXIF orientation applied)."""
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image as PILImage
        except ImportError:  # pragma: no cover
            PILImage = None  # noqa: N806
        if PILImage is not None and isinstance(image, PILImage.Image):
            from .images import load_image  # PIL's convert("RGB") clipped an I;16 image to near-white

            return load_image(image)
        raise ValueError(
            f"image must be an RGB numpy array of shape (H, W, 3) and dtype uint8 (or a PIL image), got "
            f"{type(image).__name__}; load files with diffsegmenter.images first."
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must have shape (H, W, 3) and dtype uint8, got shape {image.shape} and dtype {image.dtype}; "
            "convert grayscale/RGBA/16-bit images to RGB uint8 (diffsegmenter.images does this)."
        )
    return image


def _to_pil(image: np.ndarray) -> Image.Image:
    from PIL import Image as PILImage

    return PILImage.fromarray(np.ascontiguousarray(image), mode="RGB")


def _blip_image_processor_class() -> type:
    """The PIL/numpy BLIP image processor: ``BlipImageProcessorPil`` (transformers >= 5) else ``BlipImageProcessor``.

    Neither needs torchvision (the default ``BlipImageProcessor`` of transformers 5 does).
    """
    import transformers

    return getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor


@dataclass(frozen=True)
class _Generation:
    prompt_ids: list[int]  # [bos] + prefix tokens, as fed to the decoder
    new_ids: list[int]  # generated tokens, up to (excluding) the end-of-caption token


class BlipCaptioner:
    """BLIP conditional captioner, batched over the prefixes of an image.

    Generation follows the released code (transformers defaults of the time): greedy decoding (``do_sample=False``,
    ``num_beams=1``) and ``max_length=20`` tokens in total, *counting the prefix* (``[DEC]`` + prefix tokens), so a
    4-token prefix leaves 15 tokens of continuation. Prefixes of one image are generated together: the vision encoder
    runs once, the prefixes are left-padded into one batch (position ids follow the attention mask, so each row
    decodes exactly as it would alone), and each row's continuation is cut at its own length budget.

    The continuation of each row is found by decoding the full sequence and stripping the prefix *as BLIP decodes
    it* (lower-cased, re-tokenised; unknown characters dropped) with :func:`strip_prefix`, so the echo always
    matches. A prefix that already fills ``max_length`` tokens gets ``""``.

    Args:
        model (`transformers.BlipForConditionalGeneration`): the captioning model, already on its device and dtype.
        processor: a ``BlipProcessor`` (or any object with ``image_processor`` and ``tokenizer`` attributes).
        max_length (`int`, *optional*, defaults to 20): total decoder length (prefix + continuation), in tokens.
    """

    def __init__(self, model: Any, processor: Any, *, max_length: int = 20) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens (start token + one generated), got {max_length}.")
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ValueError(
                "processor must be a transformers BlipProcessor (an object with `image_processor` and `tokenizer`), "
                f"got {type(processor).__name__}."
            )
        positions = getattr(
            getattr(getattr(model, "config", None), "text_config", None), "max_position_embeddings", None
        )
        if isinstance(positions, int) and max_length > positions:  # else every image failed with an IndexError
            raise ValueError(
                f"max_length {max_length} is more tokens than this BLIP's decoder has positions ({positions}); give "
                f"at most {positions} (SegmenterConfig.caption_max_tokens; the paper's is 20)"
            )
        self.model = model
        self.processor = processor
        self.max_length = int(max_length)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_BLIP,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        *,
        max_length: int = 20,
        **load_kwargs: Any,
    ) -> BlipCaptioner:
        """Load BLIP from a Hub id or a local folder (safetensors only; honours ``HF_HUB_OFFLINE``).

        Args:
            name_or_path (`str`, *optional*, defaults to ``"Salesforce/blip-image-captioning-large"``): Hub id or
                folder holding the model, tokenizer and image-processor files.
            device (`str` or `torch.device`, *optional*, defaults to ``"cpu"``): where to run BLIP.
            dtype (`torch.dtype`, *optional*): e.g. ``torch.float16`` on GPU; defaults to the checkpoint's float32.
            max_length (`int`, *optional*, defaults to 20): see the class docstring.
            **load_kwargs: forwarded to ``from_pretrained`` (``cache_dir``, ``revision``, ``local_files_only``).

        Returns:
            `BlipCaptioner`: in eval mode on ``device``.

        Raises:
            ModelNotFoundError: the model is not available locally and cannot be downloaded (see
                :func:`diffsegmenter.hub.load_component`).
        """
        from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipProcessor

        from diffsegmenter.hub import load_component

        model = load_component(BlipForConditionalGeneration, name_or_path, **load_kwargs)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
        model.eval()
        tokenizer = load_component(AutoTokenizer, name_or_path, **load_kwargs)
        image_processor = load_component(_blip_image_processor_class(), name_or_path, **load_kwargs)
        processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return cls(model, processor, max_length=max_length)

    # -- public API ---------------------------------------------------------------------------------------------

    def continue_captions(self, image: np.ndarray, prefixes: list[str]) -> list[str]:
        """Continue every prefix into a caption of ``image``, in one batched generate call.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image (a PIL image is accepted too).
            prefixes (`list[str]`): text prefixes, e.g. ``["a photograph of cat", "a photograph of sofa"]``.

        Returns:
            `list[str]`: for each prefix, only the generated continuation, lower-case and stripped (may be ``""``).
        """
        prefixes = self._check_prompts(prefixes)
        if not prefixes:
            return []
        tokenizer = self.processor.tokenizer
        out: list[str] = []
        for gen in self._generate(image, prefixes):
            echoed = tokenizer.decode(gen.prompt_ids, skip_special_tokens=True)
            full = tokenizer.decode(gen.prompt_ids + gen.new_ids, skip_special_tokens=True)
            continuation = strip_prefix(full, echoed)
            if continuation is None:  # cannot happen with a BERT tokenizer; guard against exotic decoders
                logger.warning("BLIP output %r does not start with its prefix %r; using no continuation", full, echoed)
                continuation = ""
            out.append(continuation)
        return out

    def caption(self, image: np.ndarray, prompts: Sequence[str] = DEFAULT_CAPTION_PROMPTS) -> list[str]:
        """Full captions (prefix included, as BLIP decodes it), one per prompt, in one batched generate call.

        With the default prompts this is the unconditional caption and the ``"a picture of ..."`` caption used by the
        paper's category filter (method.md §5.3).

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image.
            prompts (`Sequence[str]`, *optional*, defaults to ``("", "a picture of")``): prefixes; ``""`` captions
                unconditionally.

        Returns:
            `list[str]`: lower-case captions, e.g. ``["a cat sitting on a couch", "a picture of a cat on a couch"]``.
        """
        prompts = self._check_prompts(list(prompts))
        if not prompts:
            return []
        tokenizer = self.processor.tokenizer
        return [
            tokenizer.decode(g.prompt_ids + g.new_ids, skip_special_tokens=True).strip().lower()
            for g in self._generate(image, prompts)
        ]

    # -- internals ------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_prompts(prompts: list[str]) -> list[str]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prefixes must be a list of strings, got {prompts!r}.")
        return list(prompts)

    def _prompt_ids(self, prompt: str) -> list[int]:
        """Decoder input for one prompt, exactly as ``BlipForConditionalGeneration.generate`` builds it.

        The processor tokenises ``[CLS] prompt [SEP]``; BLIP replaces ``[CLS]`` by its start token ``[DEC]``
        (``text_config.bos_token_id``) and drops the trailing ``[SEP]``.
        """
        ids = list(self.processor.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        ids[0] = self.model.config.text_config.bos_token_id
        return ids[:-1]

    def _generate(self, image: Any, prompts: list[str]) -> list[_Generation]:
        import torch

        image = _as_image_array(image)
        text_config = self.model.config.text_config
        eos_id = text_config.sep_token_id
        pad_id = text_config.pad_token_id
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        budgets = [self.max_length - len(ids) for ids in prompt_ids]  # new tokens each row may generate
        rows = [i for i, b in enumerate(budgets) if b > 0]
        for i, b in enumerate(budgets):
            if b <= 0:
                logger.warning(
                    "prefix %r is %d tokens long, which fills max_length=%d; it gets no continuation",
                    prompts[i],
                    len(prompt_ids[i]),
                    self.max_length,
                )
        results = [_Generation(ids, []) for ids in prompt_ids]
        if not rows:
            return results

        param = next(self.model.parameters())
        pixel_values = self.processor.image_processor(images=_to_pil(image), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        width = max(len(prompt_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding: generation appends on the right
            n = len(prompt_ids[i])
            input_ids[r, width - n :] = torch.tensor(prompt_ids[i], dtype=torch.long)
            attention_mask[r, width - n :] = 1
        with torch.inference_mode():
            image_embeds = self.model.vision_model(pixel_values=pixel_values)[0]  # (1, N, D): run once per image
            image_embeds = image_embeds.expand(len(rows), -1, -1)
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            out = self.model.text_decoder.generate(
                input_ids=input_ids.to(param.device),
                attention_mask=attention_mask.to(param.device),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                max_new_tokens=max(budgets[i] for i in rows),
                do_sample=False,
                num_beams=1,
            )
        new = out[:, width:].tolist()
        for r, i in enumerate(rows):
            tokens = new[r][: budgets[i]]  # the row's own max_length budget
            if eos_id in tokens:
                tokens = tokens[: tokens.index(eos_id)]
            results[i] = _Generation(prompt_ids[i], tokens)
        return results
