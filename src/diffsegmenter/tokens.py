"""Where a class name sits in a tokenised prompt.

The released code assumed the class token is at a fixed index (4 for "a photograph of X"). Here a prompt is built
from text segments that are tokenised one by one and concatenated, so the positions of every class name's
sub-tokens are known exactly (as daam finds a word's span), whatever the template, the name's length or the
tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClassTokenError", "TokenisedPrompt", "readable_token", "tokenise_segments"]


class ClassTokenError(ValueError):
    """A class name that the tokenizer cannot place in the prompt (empty after tokenising, or cut off)."""


@dataclass
class TokenisedPrompt:
    """A prompt as the text encoder sees it.

    Attributes:
        text (`str`): the prompt text (the segments joined).
        input_ids (`list[int]`): BOS (when the tokenizer has one: CLIP yes, T5 no), the segments' tokens, EOS, then
            padding; length = the tokenizer's max length (77 for CLIP; a T5 backbone sets its own, e.g. 256 or 300).
        spans (`dict[str, list[int]]`): for each tagged segment, the positions of its tokens in ``input_ids``, from
            its first to its last readable one (unknown and blank pieces at either end are left out).
    """

    text: str
    input_ids: list[int]
    spans: dict[str, list[int]] = field(default_factory=dict)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def readable_token(tokenizer, token: int) -> bool:
    """Whether a token carries text the tokenizer knows: not its unknown token, not a special marker token (a name
    written as ``"<pad>"`` or ``"</s>"`` tokenises to one on T5, ``"<|startoftext|>"`` on CLIP; a special token that
    is an ordinary piece, as SD2's pad token ``"!"``, stays readable), and not a piece that decodes to whitespace
    (sentencepiece's bare "▁")."""
    if token == tokenizer.unk_token_id:
        return False
    if token in tokenizer.all_special_ids:
        text = str(tokenizer.convert_ids_to_tokens(token))
        if text.startswith("<") and text.endswith(">"):
            return False
    return bool(tokenizer.decode([token]).strip())


def tokenise_segments(
    tokenizer, segments: list[tuple[str, str | None]], *, truncate_last: bool = False
) -> TokenisedPrompt:
    """Tokenise a prompt given as segments, recording the token positions of tagged segments.

    Args:
        tokenizer: a Hugging Face tokenizer with BOS/EOS tokens (``CLIPTokenizer`` for Stable Diffusion).
        segments (`list[tuple[str, str | None]]`): (text, tag) pieces in order; tags name the spans to record.
            Pieces are joined with single spaces (empty pieces skipped).
        truncate_last (`bool`, defaults to False): the last segment (untagged: a captioner's continuation) loses
            its tail tokens until the prompt fits, as the text encoder's truncation would cut it (the released code
            lets CLIP truncate); only what comes before it must fit.

    Returns:
        `TokenisedPrompt`: the padded ids and the span of every tag.

    Raises:
        ClassTokenError: a tagged segment has no token the tokenizer can read (only unknown or blank pieces), or
            the prompt is longer than the tokenizer's ``model_max_length`` (the message names the segment and the
            lengths).
    """
    max_len = int(tokenizer.model_max_length)
    # CLIP prompts start with BOS; T5 (SD3's third encoder, FLUX, PixArt) has none and ends with EOS only
    ids: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    spans: dict[str, list[int]] = {}
    tagged: dict[str, str] = {}  # tag -> its text, so that messages name the class, not an internal tag
    texts = []
    last_start = None  # where the truncatable last segment's tokens begin
    for number, (text, tag) in enumerate(segments):
        if truncate_last and number == len(segments) - 1 and tag is None:
            last_start = len(ids)
        text = " ".join(text.split())
        if not text:
            if tag is not None:
                raise ClassTokenError("a class name is empty; give a non-empty class name")
            continue
        texts.append(text)
        # verbose=False: a name longer than the encoder is reported below, not by a tokenizer warning
        piece = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if tag is not None:
            # T5's sentencepiece reads an unknown word as a bare word-start piece "▁" and <unk>: a name read only
            # so gave the attention of that generic token, the same for every such name (emoji, most non-Latin
            # scripts). The span runs from the first to the last piece the tokenizer can read.
            readable = [i for i, tok in enumerate(piece) if readable_token(tokenizer, tok)]
            if not readable:
                raise ClassTokenError(
                    f"this model's tokenizer cannot read class name {text!r} (it reads it as unknown or blank "
                    "tokens only); use a name made of words it can read (letters, digits)"
                )
            spans[tag] = list(range(len(ids) + readable[0], len(ids) + readable[-1] + 1))
            tagged[tag] = text
        ids.extend(piece)
    if last_start is not None and len(ids) + 1 > max_len:
        del ids[max(last_start, max_len - 1) :]  # the continuation's tail, as truncation cuts it
        texts[-1] = tokenizer.decode(ids[last_start:]) if len(ids) > last_start else ""
        texts = [t for t in texts if t]
    ids.append(tokenizer.eos_token_id)
    if len(ids) > max_len:
        cut = [_short(tagged[tag]) for tag, pos in spans.items() if pos[-1] >= max_len - 1]
        prompt = _short(" ".join(texts), 60)
        raise ClassTokenError(
            f"the prompt {prompt!r} has {len(ids)} tokens, which exceeds the {max_len} the text encoder reads"
            + (f", so class name {', '.join(repr(c) for c in cut)} would be cut off" if cut else "")
            + "; shorten the class name or the template"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids.extend([pad] * (max_len - len(ids)))
    return TokenisedPrompt(text=" ".join(texts), input_ids=ids, spans=spans)
