"""Prompt composition: the paper's per-class prompts, the single-prompt mode, and class emphasis."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokens import ClassTokenError, tokenise_segments

__all__ = ["ClassPrompt", "per_class_prompt", "single_prompts", "apply_emphasis", "select_positions"]


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
    """

    text: str
    input_ids: list[int]
    class_indices: list[int]
    class_tokens: list[list[int]]
    extra_tokens: list[list[int]]


def _split(template: str) -> tuple[str, str]:
    before, _, after = template.partition("{}")
    return before, after


def per_class_prompt(
    tokenizer,
    name: str,
    index: int,
    template: str,
    class_phrase: str,
    continuation: str = "",
    ing_heuristic: bool = False,
) -> ClassPrompt:
    """The paper's prompt for one class: the template around the class phrase, then the captioner's continuation.

    Args:
        tokenizer: the text encoder's tokenizer.
        name (`str`): class name, e.g. "cat" or "traffic light".
        index (`int`): the class's index in the call's class list.
        template (`str`): e.g. "a photograph of {}".
        class_phrase (`str`): e.g. "{}" or "a {}".
        continuation (`str`, *optional*): text the captioner generated after the prefix (e.g. "sitting on a couch").
        ing_heuristic (`bool`, *optional*): add the first continuation token when its word ends in "ing".

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
        (continuation, "continuation"),
    ]
    segments = [(text, tag) for text, tag in segments if text.strip() or tag == "class"]
    tp = tokenise_segments(tokenizer, segments)
    extra: list[int] = []
    words = continuation.split()
    if ing_heuristic and words and words[0].lower().endswith("ing") and "continuation" in tp.spans:
        extra = tp.spans["continuation"][:1]
    return ClassPrompt(tp.text, tp.input_ids, [index], [tp.spans["class"]], [extra])


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
            prompts.append(_to_prompt(build(current), current))
            current = [i]
            build(current)
    if current:
        prompts.append(_to_prompt(build(current), current))
    return prompts


def _to_prompt(tp, idx: list[int]) -> ClassPrompt:
    return ClassPrompt(tp.text, tp.input_ids, list(idx), [tp.spans[f"class{i}"] for i in idx], [[] for _ in idx])


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
