"""Timing and peak-memory helpers shared by the benchmark scripts.

Peak memory:

* **CUDA**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; reported as the peak above what
  was allocated when the block started (the weights), and as the absolute peak.
* **CPU**: ``tracemalloc`` does not see torch's allocations, so the process's resident set is read from ``/proc``.
  Before the block, Python garbage and free ``malloc`` arenas are released (``gc.collect`` + ``malloc_trim``) and
  the kernel's high-water mark ``VmHWM`` is reset to the current RSS (``echo 5 > /proc/self/clear_refs``); after it,
  the peak extra memory is ``VmHWM - RSS_before``. Where ``clear_refs`` cannot be written, a thread samples the RSS
  every millisecond with ``psutil`` instead (it may miss very short peaks).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Measurement", "PeakMemory", "interleaved_medians", "load_average", "run_measured"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_average() -> tuple[float, float, float] | None:
    """The machine's 1/5/15-minute load averages (other processes compete for the cores), if known."""
    try:
        return os.getloadavg()
    except OSError:
        return None


class PeakMemory:
    """Context manager measuring the peak memory a block adds (see the module docstring).

    Attributes (after exit):
        peak_extra (`int`): bytes above the level at entry.
        peak_total (`int`): absolute peak bytes (GPU: allocated by torch; CPU: the process's RSS).
        method (`str`): how it was measured.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_extra = 0
        self.peak_total = 0
        self.method = ""
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self._base = _rss()
        if _reset_hwm() and _hwm() is not None:
            self.method = "VmHWM (clear_refs reset)"
        else:
            self.method = "RSS sampled every 1 ms"
            self._sampled = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_total = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_total = max(self._sampled, _rss())
        else:
            self.peak_total = _hwm() or 0
        self.peak_extra = max(0, self.peak_total - self._base)


@dataclass
class Measurement:
    """Timings and peak memory of repeated runs of one pipeline on one workload."""

    seconds: list[float] = field(default_factory=list)
    peak_extra: int = 0
    peak_total: int = 0
    memory_method: str = ""
    output: Any = None

    @property
    def median(self) -> float:
        """Median seconds per run."""
        s = sorted(self.seconds)
        n = len(s)
        return float("nan") if not n else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def run_measured(fn: Callable[[], Any], into: Measurement, device: torch.device | str = "cpu") -> Any:
    """Run ``fn()`` once, appending its wall time and folding its peak memory into ``into``.

    Returns:
        what ``fn()`` returned (also kept in ``into.output``).
    """
    dev = torch.device(device)
    with PeakMemory(dev) as mem:
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        into.seconds.append(time.perf_counter() - t0)
    into.peak_extra = max(into.peak_extra, mem.peak_extra)
    into.peak_total = max(into.peak_total, mem.peak_total)
    into.memory_method = mem.method
    into.output = out
    return out


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn within every repeat.

    Interleaving makes load from other processes hit every function alike (on a shared machine a burst of load
    lasting seconds would otherwise land on one function's runs only).

    Args:
        fns (`dict[str, Callable]`): name -> function to time.
        repeats (`int`): timed rounds.
        warmup (`int`, *optional*, defaults to 1): untimed rounds first.

    Returns:
        `dict[str, float]`: name -> median seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (a median of no run is NaN), got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        m = Measurement(seconds=ts)
        out[name] = m.median
    return out


_REPO = Path(__file__).resolve().parent.parent


def source_digest() -> str:
    """SHA-256 over ``src/`` and ``benchmarks/``'s Python files (relative path, NUL, bytes, NUL; sorted by path).
    Names the code that ran where ``git`` cannot (the device machine's copy has no ``.git``); compare it with
    ``python -c "from benchmarks.timing import source_digest; print(source_digest())"`` on a checkout."""
    digest = hashlib.sha256()
    for path in sorted(p for d in ("src", "benchmarks") for p in (_REPO / d).rglob("*.py")):
        digest.update(path.relative_to(_REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
