"""The prefetching loader: order, bounded look-ahead, errors at their item, early stop, and overlap with the consumer."""

from __future__ import annotations

import threading

import pytest

from diffsegmenter.batch.prefetch import prefetch


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_in_order(depth):
    assert list(prefetch(range(20), lambda x: x * x, depth=depth)) == [x * x for x in range(20)]


def test_look_ahead_is_bounded_by_depth():
    started: list[int] = []
    consumed = 0
    for value in prefetch(range(30), lambda x: started.append(x) or x, depth=2):
        # the worker may hold `depth` finished items in the queue and be blocked on one more
        assert len(started) <= value + 1 + 2 + 1
        consumed += 1
    assert consumed == 30


def test_next_item_is_prepared_while_the_current_one_is_used():
    """Item 1 is loaded while the consumer still holds item 0 (no timing: an event the worker sets)."""
    loaded_second = threading.Event()

    def load(x):
        if x == 1:
            loaded_second.set()
        return x

    it = prefetch(range(3), load, depth=1)
    assert next(it) == 0
    assert loaded_second.wait(timeout=30)  # loaded before the consumer asked for it
    assert list(it) == [1, 2]


def test_an_error_is_raised_at_its_item_and_the_worker_stops():
    seen: list[int] = []

    def load(x):
        seen.append(x)
        if x == 2:
            raise ValueError("bad item 2")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 2"):
        for v in prefetch(range(100), load, depth=1):
            got.append(v)
    assert got == [0, 1] and len(seen) < 100


def test_closing_early_stops_the_worker():
    gen = prefetch(range(10_000), lambda x: x, depth=2)
    assert next(gen) == 0
    gen.close()
    assert not any(t.name == "diffsegmenter-prefetch" and t.is_alive() for t in threading.enumerate())


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], lambda x: x, depth=-1))
