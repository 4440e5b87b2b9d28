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


def test_none_takes_the_models_own_classes_or_says_how_to_give_some():
    assert class_lists_per_image(None, 2, default=("circle", "square")) == [["circle", "square"]] * 2
    with pytest.raises(ValueError, match=r"no classes given: pass classes=\['cat', 'sofa', \.\.\.\]"):
        class_lists_per_image(None, 1)
