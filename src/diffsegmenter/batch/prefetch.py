"""Prefetching: prepare the next items (decode images...) on a background thread while the current one is used.

Decoding and resizing images is host work; a model on a GPU waits for it unless it is done while the previous batch
runs. :func:`prefetch` maps a function over items on one worker thread, at most ``depth`` results ahead of the
consumer (bounded memory), and yields them in order. Image decoding (Pillow, NumPy) releases the GIL, so the
worker runs alongside the model's host work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failed:
    """An exception raised by the function on one item, re-raised in the consumer at that item."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], fn: Callable[[T], R], depth: int = 1) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed on a worker thread up to ``depth`` items ahead.

    ``depth=0`` computes each item when it is asked for (no thread). An exception of ``fn`` is raised by the
    iterator at that item; stopping early (``break``, an exception in the consumer, closing the generator) stops the
    worker after the item it is on.

    Args:
        items (`Iterable`): the inputs (read on the worker thread).
        fn (`Callable`): the work per item (e.g. decode a batch of images).
        depth (`int`, *optional*, defaults to 1): results ready ahead of the consumer at most (>= 0).

    Yields:
        ``fn(item)`` for each item, in order.
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        for item in items:
            yield fn(item)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    value = fn(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                    value = _Failed(exc)
                if not put(value):
                    return
        except BaseException as exc:  # noqa: BLE001 - the items' own iterator failed
            put(_Failed(exc))
            return
        put(_DONE)

    worker = threading.Thread(target=work, name="diffsegmenter-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = ready.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.exc
            yield value
    finally:
        stop.set()
        worker.join()
