"""The class-list rule (``diffsegmenter.classes``): one checked list per image from what ``segment`` was given."""

from __future__ import annotations

import pytest

from diffsegmenter.classes import ClassListError, class_lists_per_image


def test_one_list_is_copied_for_every_image():
    lists = class_lists_per_image(["cat", " sofa  chair "], 3)
    assert lists == [["cat", "sofa chair"]] * 3
    lists[0].append("dog")  # each image gets its own list
    assert lists[1] == ["cat", "sofa chair"]


def test_one_list_per_image_is_checked_list_by_list():
    assert class_lists_per_image([["cat"], ("dog", "sofa")], 2) == [["cat"], ["dog", "sofa"]]
    with pytest.raises(ValueError, match="got 2 class lists for 3 images"):
        class_lists_per_image([["cat"], ["dog"]], 3)
    with pytest.raises(ClassListError, match="duplicate"):
        class_lists_per_image([["cat"], ["dog", "dog"]], 2)


@pytest.mark.parametrize(
    ("names", "clash"),
    [
        (["cat", "cat\u200b"], "cat"),  # a zero-width space pasted from a web page
        (["caf\u00e9", "cafe\u0301"], "caf\u00e9"),  # the same word, composed and decomposed
        (["Stra\u00dfe", "STRASSE"], "Stra\u00dfe"),  # case folding, not lower()
        (["\uff43\uff41\uff54", "cat"], "cat"),  # full-width letters
    ],
)
def test_names_that_look_alike_are_duplicates(names, clash):
    # each pair tokenised alike: one class got identical maps and no pixels, or the pixels split at random
    with pytest.raises(ClassListError, match="duplicate class name"):
        class_lists_per_image(names, 1)


def test_names_are_kept_composed_and_without_invisible_characters():
    assert class_lists_per_image(["cafe\u0301", "soft\u00adhyphen", "cat\u200b"], 1) == [
        ["caf\u00e9", "softhyphen", "cat"]
    ]
    with pytest.raises(ClassListError, match="non-empty"):
        class_lists_per_image(["\u200b"], 1)
    # the zero-width non-joiner spells Persian words (and the joiner emoji): kept in the name, not in the key
    from diffsegmenter.classes import class_key, clean_class_name

    word = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert clean_class_name(word) == word and class_key(word) == class_key(word.replace("\u200c", ""))


def test_none_takes_the_models_own_classes_or_says_how_to_give_some():
    assert class_lists_per_image(None, 2, default=("circle", "square")) == [["circle", "square"]] * 2
    with pytest.raises(ValueError, match=r"no classes given: pass classes=\['cat', 'sofa', \.\.\.\]"):
        class_lists_per_image(None, 1)


@pytest.mark.parametrize("name", ["background", " Background ", "BACKGROUND"])
def test_background_is_label_zero_and_cannot_be_a_class(name):
    # label_values would hold two "background" labels (0 and the class's), so every export would be ambiguous
    with pytest.raises(ClassListError, match=r"cannot be a class: label 0 is the background.*'wall' or 'sky'"):
        class_lists_per_image(["circle", name], 1)
    assert class_lists_per_image(["background wall"], 1) == [["background wall"]]  # a longer name is a name


def test_the_command_line_refuses_background_before_loading(tmp_path, capsys):
    from diffsegmenter.cli import main

    out = tmp_path / "out"
    assert main(["segment", "nowhere.png", "--classes", "circle,background", "--out", str(out), "--offline"]) == 2
    assert not out.exists()
    assert "label 0 is the background" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["circle\x7f", "sq\x01uare", "caf\udce9", "cat\ufffe", "dog\x9f"])
def test_control_characters_and_non_characters_are_refused(name):
    # DEL and C0/C1 controls made dataset.yaml unreadable (yaml.safe_load), \x01 the Label Studio XML; a lone
    # surrogate (a Latin-1 byte in argv) failed inside the tokenizer with a TypeError
    with pytest.raises(ClassListError, match=r"holds the character U\+[0-9A-F]{4}, a control character"):
        class_lists_per_image(["ok", name], 1)
    assert class_lists_per_image(["tab\tand\nnewline"], 1) == [["tab and newline"]]  # whitespace is collapsed


def test_a_class_file_that_is_not_utf8_or_holds_form_feeds(tmp_path, capsys):
    from diffsegmenter.cli import main
    from diffsegmenter.cli.parser import parse_classes

    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\ncircle\n")  # a cp1252 export: it ended in a traceback
    assert main(["segment", "x.png", "--classes", f"@{tmp_path / 'latin.txt'}", "--out", str(tmp_path / "o")]) == 2
    assert "is not UTF-8 text (byte 0xe9 at position 3); save it as UTF-8" in capsys.readouterr().err
    (tmp_path / "ff.txt").write_text("salt\x0cpepper\ncircle\n", encoding="utf-8")  # splitlines() cut at \x0c
    assert parse_classes(f"@{tmp_path / 'ff.txt'}") == ["salt pepper", "circle"]


def test_a_class_file_of_one_spreadsheet_row_is_split(tmp_path):
    from diffsegmenter.cli.parser import parse_classes

    # a row saved by Excel in a locale with semicolons, or as tab-separated text, was one class "circle;square"
    for row, name in ((b"circle;square;triangle\r\n", "semi"), (b"circle\tsquare\ttriangle\n", "tabs")):
        (tmp_path / name).write_bytes(row)
        assert parse_classes(f"@{tmp_path / name}") == ["circle", "square", "triangle"]
    (tmp_path / "mixed").write_bytes(b"salt; pepper, circle\n")  # commas first: the rest stays in its name
    assert parse_classes(f"@{tmp_path / 'mixed'}") == ["salt; pepper", "circle"]
    (tmp_path / "lines").write_bytes(b"salt;pepper\ncircle\n")  # one name per line: kept whole
    assert parse_classes(f"@{tmp_path / 'lines'}") == ["salt;pepper", "circle"]
    (tmp_path / "unicode").write_bytes("circle\r\ncafé\r\n".encode("utf-16"))  # Notepad's "Unicode": not UTF-8
    assert parse_classes(f"@{tmp_path / 'unicode'}") == ["circle", "café"]
