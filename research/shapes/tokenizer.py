"""A small word-level CLIP BPE tokenizer, built from a word list.

Stable Diffusion's tokenizer is a ``CLIPTokenizer`` over a 49k-entry byte-pair vocabulary that cannot be downloaded
here. The shapes-world model and the tests need the same class with a vocabulary we can ship: every word of the
world's captions becomes a single token (so that "circle" and "square" are one token each, as most class names are
for SD's tokenizer), and any other lower-case word still tokenises, letter by letter, through the base characters.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_BASE_CHARS = string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair merge loop: merge the lowest-ranked adjacent pair (all its occurrences) until none applies."""
    word = list(symbols)
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word, word[1:]) if (a, b) in ranks}
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: ranks[pair])
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Build a CLIP-style BPE vocabulary in which each given word is one token.

    CLIP's BPE splits a word into characters, marks the last one with ``</w>``, then repeatedly merges the
    lowest-ranked adjacent pair. Words are added one by one: the word is run through the merges made so far, and new
    merges (ranked after all existing ones, so they can never change how earlier words tokenise) join its remaining
    pieces until it is a single token.

    Args:
        words (`Iterable[str]`): lower-case words made of the base characters (letters, digits, punctuation).

    Returns:
        `tuple[dict[str, int], list[str]]`: the vocabulary (token -> id; the two special tokens come last, as in
        CLIP) and the merge rules, one ``"left right"`` string each, in rank order.
    """
    vocab: list[str] = list(_BASE_CHARS) + [c + "</w>" for c in _BASE_CHARS]
    seen = set(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.strip().lower() for w in words if w.strip()}):
        bad = [c for c in word if c not in _BASE_CHARS]
        if bad:
            raise ValueError(f"word {word!r} has characters {bad} outside the tokenizer's base alphabet")
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        pieces = _bpe(symbols, ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            if pieces[0] + pieces[1] not in seen:
                seen.add(pieces[0] + pieces[1])
                vocab.append(pieces[0] + pieces[1])
            pieces = _bpe(symbols, ranks)
    vocab.extend(SPECIAL_TOKENS)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def save_tokenizer(words: Iterable[str], out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs loadable by ``CLIPTokenizer.from_pretrained``.

    Args:
        words (`Iterable[str]`): the words that must each be a single token.
        out_dir (`str` or `Path`): folder to write (created if needed).
        model_max_length (`int`, *optional*, defaults to 77): padded prompt length, as Stable Diffusion's.

    Returns:
        `Path`: the folder written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[1],
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out
