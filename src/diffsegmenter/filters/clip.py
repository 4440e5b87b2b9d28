"""The paper's category filter: BLIP captions + CLIP image-text and text-text similarity (method.md §5.3).

For an image and a vocabulary:

1. **Captions.** BLIP-large captions the image with the prompts ``""`` and ``"a picture of"``.
2. **Image similarity.** CLIP ViT-L/14 scores every class by ``logit = 100 * cos(image embedding, text embedding of
   "A photo of a {class}")``; a class is kept when ``logit >= img_rel_threshold * max logit`` (0.97), so the best
   class is always kept.
3. **Text similarity.** Each class name and each caption word (stop words removed) is embedded by the CLIP text
   transformer: ``last_hidden_state`` of the string padded to 15 tokens, mean over the word's own tokens (BOS/EOS
   excluded), L2-normalised. A class is kept when its cosine with any caption word is ``> text_threshold`` (0.8).
4. The kept set is the union of 2 and 3.

This reproduces the first author's ``classification.py`` (``VCG-team/elbo-t2ialign@d6283ef``), the likely generator
of the released ``predict_syn_txt_0.8_img_0.97.json``, with these differences, all documented where they happen:

- **No spaCy.** The original took the lemmas of spaCy NOUN/PROPN tokens. Here caption words are lower-cased, stop
  words (a built-in list) and, with ``noun_heuristic=True``, frequent caption verbs/adjectives/adverbs are removed,
  and each plural is matched in both its written and a rule-based singular form (``"dogs"`` -> ``"dog"``).
  Multi-word class names written verbatim in a caption (``"traffic light"``) count as a caption word too.
- **Prompt words are not caption words** by default (``words_from_prompts=False``): ``"picture"`` in ``"a picture
  of ..."`` comes from the prompt, not the image.
- **Scores for any logit sign.** The image score is ``logit / max logit`` (what the 0.97 threshold compares), computed
  as ``1 - (max - logit) / |max|`` and clipped to [0, 1], which is the same for a positive max (always the case for
  trained CLIP) and keeps the best class at 1 otherwise.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffsegmenter.captioner import (
    DEFAULT_BLIP,
    DEFAULT_CAPTION_PROMPTS,
    _as_image_array,
    _to_pil,
    strip_prefix,
)
from diffsegmenter.config import check_slot_template
from diffsegmenter.filters.base import FilterDecision, validate_vocabulary
from diffsegmenter.filters.words import (  # noqa: F401
    CAPTION_NON_NOUNS,
    STOP_WORDS,
    _fold_name,
    caption_words,
    is_phrase,
    singularize,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_WORD_CACHE_LIMIT = 50_000  # cached caption-word embeddings (768 floats each for ViT-L/14) before a reset


def _clip_image_processor_class() -> type:
    """The PIL/numpy CLIP image processor: ``CLIPImageProcessorPil`` (transformers >= 5) else ``CLIPImageProcessor``.

    Neither needs torchvision (the default ``CLIPImageProcessor`` of transformers 5 does).
    """
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


@dataclass
class ClipBlipDecision:
    """Everything :meth:`ClipBlipFilter.explain` computed for one image, for inspection and for the JSON writer.

    Attributes:
        vocabulary (`list[str]`): the classes scored, in order.
        captions (`list[str]`): BLIP captions, one per prompt (empty without a captioner).
        words (`list[str]`): the caption words compared with the class names.
        image_logits (`dict[str, float]`): ``logit_scale * cos(image, "A photo of a {class}")`` per class (the scale
            is 100 for trained CLIP).
        image_scores (`dict[str, float]`): logit / max logit, in [0, 1]; 1 for the best class.
        text_scores (`dict[str, float]`): best cosine, in [-1, 1], between the class name and a caption word (-1 when
            there are no caption words).
        best_words (`dict[str, str | None]`): the caption word behind each text score.
        image_kept (`list[str]`): classes kept by image similarity (vocabulary order).
        text_kept (`list[str]`): classes kept by text similarity (vocabulary order).
        kept (`list[str]`): their union (vocabulary order).
        scores (`dict[str, float]`): presence scores: 1.0 for classes kept by text, else the image score.
    """

    vocabulary: list[str]
    captions: list[str]
    words: list[str]
    image_logits: dict[str, float]
    image_scores: dict[str, float]
    text_scores: dict[str, float]
    best_words: dict[str, str | None]
    image_kept: list[str]
    text_kept: list[str]
    kept: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def sources(self) -> dict[str, list[str]]:
        """Per-source class lists in the released JSON's naming (see :func:`~diffsegmenter.filters.save_candidates`).

        Returns:
            `dict[str, list[str]]`: ``{"image_similarity": [...], "text_similarity": [...]}``.
        """
        return {"image_similarity": list(self.image_kept), "text_similarity": list(self.text_kept)}


class ClipBlipFilter:
    """Keep the vocabulary classes that CLIP finds in the image or that BLIP's captions mention (method.md §5.3).

    Implements :class:`~diffsegmenter.filters.base.CategoryFilter`. Class-text embeddings are computed once per
    vocabulary and cached (keyed by ``tuple(vocabulary)``, the last ``cache_size`` vocabularies kept); caption-word
    embeddings are cached per word.

    Args:
        clip_model (`transformers.CLIPModel`): CLIP, already on its device and dtype, in eval mode.
        tokenizer (`transformers.CLIPTokenizer`): CLIP's tokenizer.
        image_processor (`transformers.CLIPImageProcessor` or ``CLIPImageProcessorPil``): CLIP's image processor.
        captioner (*optional*): any object with ``caption(image, prompts) -> list[str]`` (e.g.
            :class:`~diffsegmenter.captioner.BlipCaptioner`). Without it only image similarity is used.
        img_rel_threshold (`float`, *optional*, defaults to 0.97): keep classes whose image score (logit / max logit)
            is ``>=`` this; 0 keeps every class, values above 1 keep none by image similarity.
        text_threshold (`float` or `None`, *optional*, defaults to 0.8): keep classes whose name has cosine ``>``
            this with a caption word; `None` disables text similarity.
        caption_prompts (`Sequence[str]`, *optional*, defaults to ``("", "a picture of")``): BLIP prompts.
        class_template (`str`, *optional*, defaults to ``"A photo of a {}"``): CLIP text for image similarity.
        word_max_length (`int`, *optional*, defaults to 15): padded token length of words and class names for text
            similarity.
        stop_words (`Iterable[str]`, *optional*, defaults to :data:`STOP_WORDS`): words never used as caption words.
        noun_heuristic (`bool`, *optional*, defaults to `True`): also drop :data:`CAPTION_NON_NOUNS`.
        words_from_prompts (`bool`, *optional*, defaults to `False`): also take caption words from the prompt text
            BLIP echoes (the original did: ``"picture"`` was a caption noun).
        cache_size (`int`, *optional*, defaults to 8): vocabularies whose class embeddings are kept.
    """

    def __init__(
        self,
        clip_model: Any,
        tokenizer: Any,
        image_processor: Any,
        captioner: Any | None = None,
        *,
        img_rel_threshold: float = 0.97,
        text_threshold: float | None = 0.8,
        caption_prompts: Sequence[str] = DEFAULT_CAPTION_PROMPTS,
        class_template: str = "A photo of a {}",
        word_max_length: int = 15,
        stop_words: Iterable[str] = STOP_WORDS,
        noun_heuristic: bool = True,
        words_from_prompts: bool = False,
        cache_size: int = 8,
    ) -> None:
        if not math.isfinite(img_rel_threshold):
            raise ValueError(f"img_rel_threshold must be a finite number (paper: 0.97), got {img_rel_threshold}.")
        if text_threshold is not None and not math.isfinite(text_threshold):
            raise ValueError(f"text_threshold must be a finite number (paper: 0.8) or None, got {text_threshold}.")
        check_slot_template("class_template", class_template, "the class name", apart=False)
        if word_max_length < 3:
            raise ValueError(f"word_max_length must be >= 3 (BOS + a token + EOS), got {word_max_length}.")
        if captioner is not None and not callable(getattr(captioner, "caption", None)):
            raise ValueError(
                f"captioner must have a caption(image, prompts) method (e.g. BlipCaptioner), got {type(captioner)}."
            )
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}.")
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.captioner = captioner
        self.img_rel_threshold = float(img_rel_threshold)
        self.text_threshold = None if text_threshold is None else float(text_threshold)
        self.caption_prompts = list(caption_prompts)
        self.class_template = class_template
        self.word_max_length = int(word_max_length)
        self.stop_words = frozenset(stop_words)
        self.noun_heuristic = bool(noun_heuristic)
        #: What made this filter, as run records compare it (:meth:`from_pretrained` names its models; None here).
        self.fingerprint: dict[str, Any] | None = None
        self.words_from_prompts = bool(words_from_prompts)
        self.cache_size = int(cache_size)
        self._class_cache: OrderedDict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._word_cache: dict[tuple[str, int], torch.Tensor] = {}  # by (word, word_max_length)

    @classmethod
    def from_pretrained(
        cls,
        clip: str = DEFAULT_CLIP,
        blip: str | None = DEFAULT_BLIP,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        captioner: Any | None = None,
        *,
        load_kwargs: dict[str, Any] | None = None,
        **filter_kwargs: Any,
    ) -> ClipBlipFilter:
        """Load CLIP (and BLIP unless a captioner is given) from Hub ids or local folders, safetensors only.

        Args:
            clip (`str`, *optional*, defaults to ``"openai/clip-vit-large-patch14"``): CLIP Hub id or folder.
            blip (`str` or `None`, *optional*, defaults to ``"Salesforce/blip-image-captioning-large"``): BLIP Hub id
                or folder, loaded only when ``captioner`` is `None`; `None` means no captioner (image similarity
                only).
            device (`str` or `torch.device`, *optional*, defaults to ``"cpu"``): where the models run.
            dtype (`torch.dtype`, *optional*): e.g. ``torch.float16`` on GPU; defaults to float32.
            captioner (*optional*): an existing captioner (e.g. the segmenter's ``BlipCaptioner``) to reuse.
            load_kwargs (`dict`, *optional*): forwarded to every ``from_pretrained`` (``cache_dir``, ``revision``).
            **filter_kwargs: constructor options (``img_rel_threshold``, ``text_threshold``, ...).

        Returns:
            `ClipBlipFilter`

        Raises:
            ModelNotFoundError: a model is missing locally and cannot be downloaded.
        """
        from transformers import AutoTokenizer, CLIPModel

        from diffsegmenter.hub import load_component

        load_kwargs = dict(load_kwargs or {})
        model = load_component(CLIPModel, clip, **load_kwargs)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
        model.eval()
        tokenizer = load_component(AutoTokenizer, clip, **load_kwargs)
        image_processor = load_component(_clip_image_processor_class(), clip, **load_kwargs)
        given_captioner = captioner is not None
        if captioner is None and blip is not None:
            from diffsegmenter.captioner import BlipCaptioner

            captioner = BlipCaptioner.from_pretrained(blip, device=device, dtype=dtype, **load_kwargs)
        flt = cls(model, tokenizer, image_processor, captioner, **filter_kwargs)
        blip_id = "the segmenter's captioner" if given_captioner else (None if blip is None else str(blip))
        flt.fingerprint = {"filter": "clip", "clip": str(clip), "blip": blip_id, **filter_kwargs}
        return flt

    # -- CategoryFilter ---------------------------------------------------------------------------------------------

    def select(self, image: np.ndarray, vocabulary: list[str]) -> FilterDecision:
        """The kept classes and their scores (in [0, 1]) from one run of BLIP and CLIP on the image."""
        decision = self.explain(image, vocabulary)
        return FilterDecision(list(decision.kept), dict(decision.scores))

    def scores(self, image: np.ndarray, vocabulary: list[str]) -> dict[str, float]:
        """Presence score per class, in [0, 1]: 1.0 if kept by text similarity, else logit / max logit.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image.
            vocabulary (`list[str]`): unique class names.

        Returns:
            `dict[str, float]`: in vocabulary order.
        """
        return self.explain(image, vocabulary).scores

    def predict(self, image: np.ndarray, vocabulary: list[str]) -> list[str]:
        """Classes kept by image or text similarity, in vocabulary order.

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image.
            vocabulary (`list[str]`): unique class names.

        Returns:
            `list[str]`: never empty while ``img_rel_threshold <= 1`` (the best class is always kept).
        """
        return self.explain(image, vocabulary).kept

    def explain(self, image: np.ndarray, vocabulary: list[str]) -> ClipBlipDecision:
        """Run the whole recipe on one image and return every intermediate result.

        Each call runs BLIP and CLIP (nothing of the image is remembered; class and word embeddings are cached).

        Args:
            image (`np.ndarray` of shape `(H, W, 3)`, dtype `uint8`): RGB image (a PIL image is accepted too).
            vocabulary (`list[str]`): unique class names.

        Returns:
            `ClipBlipDecision`

        Raises:
            ValueError: bad image or vocabulary.
        """
        import torch

        vocab = validate_vocabulary(vocabulary)
        image = _as_image_array(image)
        sentence_emb, name_emb = self._class_embeddings(vocab)

        # (a) image-text similarity, relative to the best class
        with torch.inference_mode():
            image_emb = self._image_embedding(_to_pil(image))  # (P,) float32, unit norm
            cos = sentence_emb @ image_emb  # (K,)
            logits = cos * float(self.clip_model.logit_scale.exp().float())
        best = float(logits.max())
        ratio = (1.0 - (best - logits) / max(abs(best), 1e-12)).clamp(0.0, 1.0)
        image_scores = {c: float(r) for c, r in zip(vocab, ratio.tolist())}
        image_kept = [c for c in vocab if image_scores[c] >= self.img_rel_threshold]

        # (b) text-text similarity between class names and caption words
        captions: list[str] = []
        words: list[str] = []
        text_scores = dict.fromkeys(vocab, -1.0)
        best_words: dict[str, str | None] = dict.fromkeys(vocab)
        if self.captioner is not None and self.text_threshold is not None:
            captions = list(self.captioner.caption(image, self.caption_prompts))
            words = self._words(captions, vocab)
            if words:
                with torch.inference_mode():
                    sim = name_emb @ self._encode_words(words).T  # (K, n_words)
                values, idx = sim.max(dim=1)
                for c, v, i in zip(vocab, values.tolist(), idx.tolist()):
                    text_scores[c] = float(v)
                    best_words[c] = words[i]
        text_kept = (
            [c for c in vocab if text_scores[c] > self.text_threshold] if self.text_threshold is not None else []
        )
        kept_set = set(image_kept) | set(text_kept)
        kept = [c for c in vocab if c in kept_set]
        scores = {c: 1.0 if c in text_kept else image_scores[c] for c in vocab}
        logger.debug("captions=%s words=%s kept=%s", captions, words, kept)
        decision = ClipBlipDecision(
            vocabulary=vocab,
            captions=captions,
            words=words,
            image_logits={c: float(v) for c, v in zip(vocab, logits.tolist())},
            image_scores=image_scores,
            text_scores=text_scores,
            best_words=best_words,
            image_kept=image_kept,
            text_kept=text_kept,
            kept=kept,
            scores=scores,
        )
        return decision

    def clear_cache(self) -> None:
        """Drop the cached class and word embeddings (e.g. after moving the model)."""
        self._class_cache.clear()
        self._word_cache.clear()

    # -- internals --------------------------------------------------------------------------------------------------

    def _words(self, captions: list[str], vocab: list[str]) -> list[str]:
        texts = []
        for caption, prompt in zip(captions, self.caption_prompts):
            rest = None if self.words_from_prompts else strip_prefix(caption, prompt)
            texts.append(caption if rest is None else rest)
        return caption_words(
            texts,
            stop_words=self.stop_words,
            non_nouns=CAPTION_NON_NOUNS if self.noun_heuristic else (),
            phrases=[c for c in vocab if is_phrase(c)],
            keep=vocab,
        )

    @property
    def _device(self) -> torch.device:
        return next(self.clip_model.parameters()).device

    def _class_embeddings(self, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sentence embeddings (K, P), name embeddings (K, D))``, float32, unit norm; cached per vocabulary."""
        import torch

        key = (*vocab, self.class_template, str(self.word_max_length))  # tuple(vocabulary) + what shapes the text
        if key in self._class_cache:
            self._class_cache.move_to_end(key)
            return self._class_cache[key]
        with torch.inference_mode():
            sentences = self._encode_sentences([self.class_template.format(c) for c in vocab])
            names = self._encode_words(vocab)
        self._class_cache[key] = (sentences, names)
        while len(self._class_cache) > self.cache_size:
            self._class_cache.popitem(last=False)
        return sentences, names

    def _encode_sentences(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (projected, pooled at EOS), float32 (len(texts), P), unit norm."""
        import torch.nn.functional as F

        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self._device)
        out = self.clip_model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        emb = self.clip_model.text_projection(out.pooler_output).float()
        return F.normalize(emb, dim=-1)

    def _image_embedding(self, image: Any) -> torch.Tensor:
        """CLIP image embedding (projected), float32 (P,), unit norm."""
        import torch.nn.functional as F

        param = next(self.clip_model.parameters())
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        out = self.clip_model.vision_model(pixel_values=pixels.to(device=param.device, dtype=param.dtype))
        emb = self.clip_model.visual_projection(out.pooler_output).float()[0]
        return F.normalize(emb, dim=-1)

    def _encode_words(self, words: list[str], *, use_cache: bool = True) -> torch.Tensor:
        """Word embeddings for text similarity, float32 (len(words), D), unit norm (zeros for untokenisable words).

        Each word is tokenised alone, padded/truncated to ``word_max_length`` tokens and run through the CLIP text
        transformer; the embedding is the mean ``last_hidden_state`` over the word's own tokens (BOS and EOS
        excluded). CLIP's text attention is causal, so padding and batching do not change a word's states.
        """
        import torch
        import torch.nn.functional as F

        length = int(self.word_max_length)  # part of the key: a word is truncated to it
        todo = [w for w in dict.fromkeys(words) if not (use_cache and (w, length) in self._word_cache)]
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            batch = self.tokenizer(
                todo, padding="max_length", max_length=self.word_max_length, truncation=True, return_tensors="pt"
            )
            lengths = [
                min(len(self.tokenizer(w)["input_ids"]) - 2, self.word_max_length - 2) for w in todo
            ]  # tokens of the word itself
            hidden = self.clip_model.text_model(input_ids=batch["input_ids"].to(self._device)).last_hidden_state
            hidden = hidden.float()
            for j, (w, n) in enumerate(zip(todo, lengths)):
                if n < 1:
                    logger.debug("word %r has no tokens; it matches nothing", w)
                    fresh[w] = torch.zeros(hidden.shape[-1], device=hidden.device)
                else:
                    fresh[w] = F.normalize(hidden[j, 1 : 1 + n].mean(dim=0), dim=-1)
            if use_cache:
                if len(self._word_cache) + len(fresh) > _WORD_CACHE_LIMIT:
                    self._word_cache.clear()
                self._word_cache.update({(w, length): z for w, z in fresh.items()})
        return torch.stack([fresh[w] if w in fresh else self._word_cache[(w, length)] for w in words])
