"""Prompt composition and class-token placement."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

from diffsegmenter.prompts import (
    apply_emphasis,
    emphasis_positions,
    per_class_prompt,
    select_positions,
    single_prompts,
)
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


def test_a_long_continuation_is_cut_as_the_text_encoders_truncation_cuts_it(tok):
    # a caption overflowing 77 tokens raised "class name 'cat sitting ...' would be cut off"; the released code lets
    # CLIP truncate the prompt, so the continuation's tail goes and the class stays
    long = "sitting on a sofa " * 40
    p = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", continuation=long)
    truncated = tok("a photograph of cat " + long, padding="max_length", max_length=77, truncation=True)
    assert p.input_ids == truncated["input_ids"] and p.class_tokens == [[4]]
    assert p.text.startswith("a photograph of cat sitting on a sofa") and len(p.text) < len(long)
    with pytest.raises(ClassTokenError, match="would be cut off"):  # the class itself must still fit
        per_class_prompt(tok, "cat", 0, "a photograph of " * 30 + "{}", "{}", continuation="sitting")


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
    r = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", "SITTING on a sofa", ing_heuristic=True)
    assert r.extra_tokens == [[]]  # case-sensitive, as released (BLIP writes lower case)

    # BLIP decodes "cat, sitting" without a space before the comma: the released prompt "a photograph of cat++,
    # sitting ..." has "sitting" as word 4 (the rule fires and averages in token 5, the comma); the comma was checked
    c = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", ", sitting on a sofa", ing_heuristic=True)
    assert c.extra_tokens == [[5]] and tok.convert_ids_to_tokens([c.input_ids[5]]) == [",</w>"]
    d = per_class_prompt(tok, "cat", 0, "a photograph of {}", "{}", ", on a sofa", ing_heuristic=True)
    assert d.extra_tokens == [[]]
    # the decoder keeps a space before "-": word 4 is "-" there; the Context/COCO scripts ("last") drop the comma
    # from the prompt instead, which is not reproduced: the rule does not fire (as before)
    assert per_class_prompt(
        tok, "cat", 0, "a photograph of {}", "{}", "- sitting", ing_heuristic=True
    ).extra_tokens == [[]]
    for offset in (1, 2):
        e = per_class_prompt(
            tok,
            "cat",
            0,
            "a photography of {}",
            "{}",
            ", sitting",
            ing_heuristic=True,
            token_rule="last",
            ing_offset=offset,
        )
        assert e.extra_tokens == [[]]


def test_ing_rule_of_each_released_script(tok):
    """VOC12 reads tokens [4, 5] (the first sub-token and the next, whatever it is); VOC10/Context reads
    [3 + len, 4 + len] and COCO [3 + len, 5 + len] (the last sub-token and the one or two after it)."""
    args = (tok, "people", 0, "a photograph of {}", "{}", "sitting on the left")
    voc12 = per_class_prompt(*args, ing_heuristic=True, token_rule="first", ing_offset=1)
    assert voc12.class_tokens == [[4, 5, 6, 7]]  # pe o pl e
    assert voc12.extra_tokens == [[5]]  # the released index 5 is "o", not "sitting"
    context = per_class_prompt(*args, ing_heuristic=True, token_rule="last", ing_offset=1)
    assert context.extra_tokens == [[8]]  # "sitting"
    coco = per_class_prompt(*args, ing_heuristic=True, token_rule="last", ing_offset=2)
    assert coco.extra_tokens == [[9]]  # "on": the COCO script skips one token
    assert per_class_prompt(*args, ing_heuristic=False).extra_tokens == [[]]


def test_ing_rule_checks_the_word_after_the_class_token_with_emphasis_marks(tok):
    # VOC12 checks whitespace word 4 of "a photograph of ice skating++ ...": "skating++" does not end in "ing"
    args = (tok, "ice skating", 0, "a photograph of {}", "{}", "on the left")
    assert per_class_prompt(*args, ing_heuristic=True, token_rule="first").extra_tokens == [[]]
    # without emphasis the released prompt has no "++", and word 4 "skating" triggers the rule
    p = per_class_prompt(*args, ing_heuristic=True, token_rule="first", emphasised=False)
    assert p.extra_tokens == [[p.class_tokens[0][0] + 1]]
    # the Context/COCO scripts check the first word after the whole name
    q = per_class_prompt(
        tok, "ice skating", 0, "a photography of {}", "{}", "flying", ing_heuristic=True, token_rule="last"
    )
    assert q.extra_tokens == [[q.class_tokens[0][-1] + 1]]


def test_emphasis_scope_last_word_is_compels_reading_of_the_released_plus_plus(tok):
    """Compel weights the word that "++" follows: "traffic light++" weights "light" only; a one-word name of several
    sub-tokens ("people++") has all of them weighted."""
    p = per_class_prompt(tok, "traffic light", 0, "a photograph of {}", "{}")
    assert tok.convert_ids_to_tokens([p.input_ids[i] for i in emphasis_positions(p, "last_word")]) == ["light</w>"]
    assert emphasis_positions(p, "class_tokens") == p.class_tokens[0] == [4, 5]
    q = per_class_prompt(tok, "people", 0, "a photograph of {}", "{}")
    assert emphasis_positions(q, "last_word") == emphasis_positions(q, "class_tokens") == [4, 5, 6, 7]
    names = ["traffic light", "potted plant"]
    r = single_prompts(tok, names, "{}", "a {}", " and ")[0]
    assert [tok.convert_ids_to_tokens([r.input_ids[i]])[0] for i in emphasis_positions(r, "last_word")] == [
        "light</w>",
        "plant</w>",
    ]


def test_unplaceable_names_raise(tok):
    with pytest.raises(ClassTokenError, match="cannot read class name"):
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


def test_the_emphasised_last_word_is_its_readable_pieces_on_t5():
    # the span leaves unreadable pieces out, but the last word counted them: "cat dog™" emphasised "cat" and "dog"
    from .family_builders import t5_tokenizer

    tokenizer = t5_tokenizer()
    tokenizer.model_max_length = 32  # as a T5 backbone sets it
    prompt = per_class_prompt(tokenizer, "cat dog™", 0, "a photograph of {}", "{}")
    words = tokenizer.convert_ids_to_tokens
    assert words([prompt.input_ids[i] for i in prompt.class_tokens[0]]) == ["▁cat", "▁dog"]
    assert words([prompt.input_ids[i] for i in prompt.last_word_tokens[0]]) == ["▁dog"]


def test_special_markers_are_not_class_tokens_but_an_ordinary_pad_piece_is():
    # "<|startoftext|>" as a class name read the BOS token; SD2's tokenizer pads with "!", an ordinary piece that a
    # name like "yahoo!" holds, and which must stay part of its span
    from diffsegmenter.tokens import readable_token

    sd2 = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer", pad_token="!")
    bang = sd2.convert_tokens_to_ids("!")
    assert bang in sd2.all_special_ids and readable_token(sd2, bang)
    assert not readable_token(sd2, sd2.bos_token_id) and not readable_token(sd2, sd2.eos_token_id)
    with pytest.raises(ClassTokenError, match="cannot read class name"):
        per_class_prompt(sd2, "<|startoftext|>", 0, "a photograph of {}", "{}")
    p = per_class_prompt(sd2, "yahoo!", 0, "a photograph of {}", "{}")
    assert bang in [p.input_ids[i] for i in p.class_tokens[0]]
