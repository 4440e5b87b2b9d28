"""Prompt composition and class-token placement."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from diffsegmenter.prompts import apply_emphasis, per_class_prompt, select_positions, single_prompts
from diffsegmenter.tokens import ClassTokenError

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")


def test_per_class_prompt_positions_match_tokenising_the_text(tok):
    p = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", continuation="sitting on a sofa")
    assert p.text == "a photograph of cat sitting on a sofa"
    full = tok(p.text, padding="max_length", max_length=77)["input_ids"]
    assert p.input_ids == full
    assert p.class_tokens == [[4]]  # BOS a photograph of cat -> the released code's fixed index 4
    assert tok.convert_ids_to_tokens([p.input_ids[4]]) == ["cat</w>"]


def test_multi_token_name_span_and_rules(tok):
    p = per_class_prompt(tok, "armchair lamp", 3, "a {}", "{}")
    span = p.class_tokens[0]
    assert len(span) > 2  # neither word is in the tiny vocabulary: several sub-tokens
    assert p.class_indices == [3]
    assert select_positions(span, [], "mean") == span
    assert select_positions(span, [], "last") == span[-1:]
    assert select_positions(span, [9], "first") == [span[0], 9]


def test_ing_heuristic_adds_first_continuation_token(tok):
    p = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", "sitting on a sofa", ing_heuristic=True)
    assert p.extra_tokens == [[5]]
    q = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", "on a sofa", ing_heuristic=True)
    assert q.extra_tokens == [[]]


def test_unplaceable_names_raise(tok):
    with pytest.raises(ClassTokenError, match="no token"):
        per_class_prompt(tok, "™™", 0, "a photograph of {}", "{}")
    with pytest.raises(ClassTokenError, match="empty"):
        per_class_prompt(tok, "  ", 0, "a photograph of {}", "{}")
    with pytest.raises(ClassTokenError, match="exceeds"):
        per_class_prompt(tok, "cat " * 80, 0, "a photograph of {}", "{}")


def test_single_prompts_chunk_long_vocabularies(tok):
    names = [f"cat{i}" for i in range(40)]  # each name is several tokens: cannot all fit in 77
    prompts = single_prompts(tok, names, "a photograph of {}", "a {}", " and ")
    assert len(prompts) > 1
    assert [i for p in prompts for i in p.class_indices] == list(range(40))
    for p in prompts:
        assert len(p.input_ids) == 77
        for i, span in zip(p.class_indices, p.class_tokens):
            assert "".join(tok.convert_ids_to_tokens([p.input_ids[j] for j in span])).replace("</w>", "") == names[i]


def test_apply_emphasis_known_answer():
    z = torch.tensor([[1.0, 1.0], [3.0, 5.0], [2.0, 2.0]])
    e = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    out = apply_emphasis(z, e, [1], 1.21)
    assert torch.allclose(out[1], torch.tensor([1.0 + 1.21 * 2.0, 1.0 + 1.21 * 4.0]))
    assert torch.equal(out[[0, 2]], z[[0, 2]])
    assert torch.equal(apply_emphasis(z, e, [1], 1.0), z)


def test_tokenizer_builder_makes_every_word_one_token(tmp_path):
    from research.shapes.tokenizer import save_tokenizer

    words = ["street", "triangle", "abab", "photograph", "photography", "photo", "green", "gr", "tr"]
    t = CLIPTokenizer.from_pretrained(save_tokenizer(words, tmp_path))
    for w in words:
        assert len(t(w, add_special_tokens=False)["input_ids"]) == 1, w
    assert len(t("zebra", add_special_tokens=False)["input_ids"]) > 1  # unknown words still tokenise by letters
