"""Prompt composition: the paper's per-class prompts, the single-prompt mode, and class emphasis."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .captioner import normalized_words
from .tokens import ClassTokenError, readable_token, tokenise_segments

__all__ = [
    "ClassPrompt",
    "build_prompts",
    "per_class_prompt",
    "single_prompts",
    "apply_emphasis",
    "emphasis_positions",
    "select_positions",
]


@dataclass
class ClassPrompt:
    """One text prompt sent through the UNet, naming one or more classes.

    Attributes:
        text (`str`): the exact prompt text.
        input_ids (`list[int]`): padded token ids.
        class_indices (`list[int]`): which classes of the call (indices into its class list) this prompt names.
        class_tokens (`list[list[int]]`): per named class, the positions of its name's sub-tokens.
        extra_tokens (`list[list[int]]`): per named class, extra positions whose maps are averaged in (the released
            code's "-ing" heuristic); usually empty.
        last_word_tokens (`list[list[int]]`): per named class, the positions of its last whitespace word's
            sub-tokens (what Compel weights for "{class}++"); a suffix of its ``class_tokens``.
    """

    text: str
    input_ids: list[int]
    class_indices: list[int]
    class_tokens: list[list[int]]
    extra_tokens: list[list[int]]
    last_word_tokens: list[list[int]]


def _split(template: str) -> tuple[str, str]:
    before, _, after = template.partition("{}")
    return before, after


_GLUED = (".", ",", "!", "?", "'", "n't")
"""What BERT's decoding clean-up (BLIP's tokenizer) joins to the word before: the released VOC12 prompt has no
space before it."""


def per_class_prompt(
    tokenizer,
    name: str,
    index: int,
    template: str,
    class_phrase: str,
    continuation: str = "",
    ing_heuristic: bool = False,
    token_rule: str = "first",
    ing_offset: int = 1,
    emphasised: bool = True,
) -> ClassPrompt:
    """The paper's prompt for one class: the template around the class phrase, then the captioner's continuation.

    The "-ing" rule of the released scripts ([CODE] VOC12 L515-518, VOC10/COCO): the class token is the sub-token
    ``token_rule`` picks ("mean" counts as its last); when the whitespace word right after the word holding it ends
    in "ing" (case-sensitive, as released), the token ``ing_offset`` places after the class token is averaged in. The
    words are those of the prompt the released code builds, where the emphasised last class word carries "++": so
    for a one-word class the checked word is the first continuation word ("a photograph of cat++ sitting ..."), and
    with ``token_rule="first"`` (the VOC12 script) a continuation that starts with ``, . ! ? '`` joins it to the word
    before, as BLIP decodes it ("cat++, sitting": "sitting" is checked).
    The extra token is positional, as released: after a name of several sub-tokens with ``token_rule="first"`` it is
    the name's second sub-token. The word is read from the text before the text encoder's truncation, as released:
    in a prompt cut right after the class token, the extra position is the end token.

    Args:
        tokenizer: the text encoder's tokenizer.
        name (`str`): class name, e.g. "cat" or "traffic light".
        index (`int`): the class's index in the call's class list.
        template (`str`): e.g. "a photograph of {}".
        class_phrase (`str`): e.g. "{}" or "a {}".
        continuation (`str`, *optional*): text the captioner generated after the prefix (e.g. "sitting on a couch").
        ing_heuristic (`bool`, *optional*): apply the "-ing" rule.
        token_rule (`str`, *optional*, defaults to "first"): the config's token rule; it fixes the class token the
            "-ing" rule counts from.
        ing_offset (`int`, *optional*, defaults to 1): 1 (VOC12, Context scripts) or 2 (COCO script).
        emphasised (`bool`, *optional*, defaults to True): whether the released prompt would carry "++" on the
            class's last word (emphasis on), which keeps that word from matching "ing".

    Returns:
        `ClassPrompt`.
    """
    t_before, t_after = _split(template)
    p_before, p_after = _split(class_phrase)
    segments = [
        (t_before, None),
        (p_before, None),
        (name, "class"),
        (p_after, None),
        (t_after, None),
        (continuation, None),  # the captioner's text: cut to fit, as the text encoder's truncation would
    ]
    segments = [(text, tag) for text, tag in segments if text.strip() or tag == "class"]
    tp = tokenise_segments(tokenizer, segments, truncate_last=bool(continuation.strip()))
    tokens = tp.spans["class"]
    extra: list[int] = []
    if ing_heuristic:
        name_words = name.split()
        if emphasised:
            name_words[-1] += "++"
        following = name_words[1:] if token_rule == "first" else []
        following += p_after.split() + t_after.split()
        generated = continuation.split()
        if token_rule == "first" and generated and generated[0].startswith(_GLUED):
            # the VOC12 prompt is the prefix, "++" and BLIP's decoded text after it, where the decoder's clean-up
            # left no space before this punctuation: in "cat++, sitting" it is part of the word before, and
            # "sitting" is checked. (The Context/COCO scripts drop it from the prompt instead: not reproduced, the
            # rule does not fire there.)
            glued = generated.pop(0)
            if following:
                following[-1] += glued
        following += generated
        ref = tokens[0] if token_rule == "first" else tokens[-1]
        if following and following[0].endswith("ing") and ref + ing_offset < len(tp.input_ids):
            extra = [ref + ing_offset]
    last = _last_word_tokens(tokenizer, name, tokens)
    return ClassPrompt(tp.text, tp.input_ids, [index], [tokens], [extra], [last])


def _last_word_tokens(tokenizer, name: str, tokens: list[int]) -> list[int]:
    """The suffix of a class name's token positions that belongs to its last whitespace word."""
    pieces = tokenizer(name.split()[-1], add_special_tokens=False)["input_ids"]
    n = sum(readable_token(tokenizer, piece) for piece in pieces)  # the class's span leaves unreadable pieces out
    return tokens[-max(1, min(n, len(tokens))) :]


def single_prompts(tokenizer, names: list[str], template: str, class_phrase: str, joiner: str) -> list[ClassPrompt]:
    """All class names in as few prompts as fit the text encoder (FA-Seg style single-prompt mode).

    Classes are packed greedily in order; a prompt is closed when the next name would not fit.

    Args:
        tokenizer: the text encoder's tokenizer.
        names (`list[str]`): class names.
        template (`str`): e.g. "a photograph of {}"; "{}" receives the joined class phrases.
        class_phrase (`str`): how one class is written, e.g. "a {}".
        joiner (`str`): separator between class phrases, e.g. " and ".

    Returns:
        `list[ClassPrompt]`: each naming a contiguous run of classes.
    """
    t_before, t_after = _split(template)
    p_before, p_after = _split(class_phrase)

    def build(idx: list[int]):
        segs: list[tuple[str, str | None]] = [(t_before, None)]
        for j, i in enumerate(idx):
            if j:
                segs.append((joiner, None))
            segs += [(p_before, None), (names[i], f"class{i}"), (p_after, None)]
        segs.append((t_after, None))
        return tokenise_segments(tokenizer, [(t, g) for t, g in segs if t.strip() or g])

    prompts: list[ClassPrompt] = []
    current: list[int] = []
    for i in range(len(names)):
        try:
            build(current + [i])
            current.append(i)
        except ClassTokenError:
            if not current:
                raise
            prompts.append(_to_prompt(tokenizer, names, build(current), current))
            current = [i]
            build(current)
    if current:
        prompts.append(_to_prompt(tokenizer, names, build(current), current))
    return prompts


def _to_prompt(tokenizer, names: list[str], tp, idx: list[int]) -> ClassPrompt:
    spans = [tp.spans[f"class{i}"] for i in idx]
    last = [_last_word_tokens(tokenizer, names[i], span) for i, span in zip(idx, spans)]
    return ClassPrompt(tp.text, tp.input_ids, list(idx), spans, [[] for _ in idx], last)


def select_positions(tokens: list[int], extra: list[int], rule: str) -> list[int]:
    """Token positions whose maps stand for a class: the sub-tokens picked by ``rule`` plus any extra ones.

    Args:
        tokens (`list[int]`): positions of the class name's sub-tokens.
        extra (`list[int]`): extra positions (heuristics).
        rule (`str`): "mean" (all sub-tokens), "last" or "first".
    """
    if rule == "last":
        picked = tokens[-1:]
    elif rule == "first":
        picked = tokens[:1]
    else:
        picked = list(tokens)
    return picked + list(extra)


def emphasis_positions(prompt: ClassPrompt, scope: str) -> list[int]:
    """Token positions the class emphasis weights in a prompt, for all its classes.

    Args:
        prompt (`ClassPrompt`): the prompt.
        scope (`str`): "last_word" (Compel's reading of the released "{class}++") or "class_tokens" (every
            sub-token of each class name).
    """
    groups = prompt.last_word_tokens if scope == "last_word" else prompt.class_tokens
    return [p for toks in groups for p in toks]


def apply_emphasis(z: torch.Tensor, z_empty: torch.Tensor, positions: list[int], weight: float) -> torch.Tensor:
    """Compel-style up-weighting of some tokens: ``z_empty + w * (z - z_empty)`` at those positions.

    Args:
        z (`torch.Tensor`): (T, D) text-encoder output of the prompt.
        z_empty (`torch.Tensor`): (T, D) text-encoder output of the empty prompt.
        positions (`list[int]`): token positions to emphasise.
        weight (`float`): w; 1.0 leaves ``z`` unchanged (Compel "++" = 1.21).

    Returns:
        `torch.Tensor`: (T, D), a new tensor.
    """
    out = z.clone()
    if weight != 1.0 and positions:
        idx = torch.tensor(positions, device=z.device)
        out[idx] = z_empty[idx] + weight * (z[idx] - z_empty[idx])
    return out


def _echoes(continuation: str, prefix: str) -> bool:
    """Whether a continuation starts with its whole prefix, word for word, and the prefix has at least two words
    (a one-word prefix such as "sky" may well be continued by "sky ...")."""
    words = normalized_words(prefix)
    return len(words) >= 2 and normalized_words(continuation)[: len(words)] == words


def build_prompts(tokenizer, image, classes: list[str], config, captioner=None) -> list[ClassPrompt]:
    """The prompts for one image's classes, as a :class:`~diffsegmenter.config.SegmenterConfig` describes them.

    ``"single"`` mode: :func:`single_prompts`. ``"per_class"`` mode: one :func:`per_class_prompt` per class,
    continued by ``captioner.continue_captions(image, prefixes)`` (one call for all classes) when a captioner is given
    and ``config.use_captioner``.

    Args:
        tokenizer: the text encoder's tokenizer.
        image (`np.ndarray`): (H, W, 3) uint8 RGB, for the captioner.
        classes (`list[str]`): class names.
        config (`SegmenterConfig`): template, class phrase, prompt mode and token rules.
        captioner (*optional*): an object with ``continue_captions(image, prefixes) -> list[str]``.

    Returns:
        `list[ClassPrompt]`: per class (per_class mode), or each naming a run of classes (single mode).
    """
    cfg = config
    if cfg.prompt_mode == "single":
        return single_prompts(tokenizer, classes, cfg.template, cfg.class_phrase, cfg.joiner)
    conts = [""] * len(classes)
    if captioner is not None and cfg.unused_captioner_reason() is None and classes:
        prefixes = [cfg.template.format(cfg.class_phrase.format(c)) for c in classes]
        returned = captioner.continue_captions(image, prefixes)
        if not isinstance(returned, list | tuple):  # None gave a bare TypeError
            raise ValueError(
                f"{type(captioner).__name__}.continue_captions(image, prefixes) returned a "
                f"{type(returned).__name__}; a captioner returns a list of one string per prefix"
            )
        conts = list(returned)
        if len(conts) != len(prefixes) or not all(isinstance(c, str) for c in conts):
            got = [type(c).__name__ for c in conts]
            raise ValueError(
                f"{type(captioner).__name__}.continue_captions(image, prefixes) returned {len(conts)} item(s) of "
                f"types {got} for {len(prefixes)} prefixes; a captioner returns one string per prefix (an empty "
                "string for no continuation)"
            )
        if all(_echoes(c, p) for c, p in zip(conts, prefixes)):
            # whole captions (e.g. a wrapped pipeline's output) made "a photograph of cat a photograph of cat ..."
            raise ValueError(
                f"{type(captioner).__name__}.continue_captions(image, prefixes) returned whole captions (e.g. "
                f"{conts[0]!r} for {prefixes[0]!r}); it returns only what follows each prefix "
                "(diffsegmenter.captioner.strip_prefix cuts a caption so)"
            )
    return [
        per_class_prompt(
            tokenizer,
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
