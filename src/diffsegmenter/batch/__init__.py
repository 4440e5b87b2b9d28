"""The one batch runner behind ``segment``, ``demo``, ``eval`` and ``edit``: jobs in, results written, a report out.

================  ==============================================================================================
``runner``        [`BatchRunner`], [`BatchTask`], [`BatchReport`]: resume, the failure policy, batching, progress,
                  ``skipped.json`` + console list + exit status, the per-folder fingerprint (``run_config.json``)
``images``        [`ImageTask`] / [`run_batch`]: image files -> segmenter -> result files (``segment``, ``demo``)
``edits``         ``EditTask``: image files -> segment-then-edit -> edited PNGs with sidecars (``edit`` into a folder)
``folder``        [`prepare_out_dir`] and [`output_lock`]: one run at a time per output folder
================  ==============================================================================================

The eval harness's task (dataset samples -> prediction PNGs) is ``diffsegmenter.evaluation.harness.EvalTask``.
"""

from __future__ import annotations

from .folder import LOCK_FILE, output_lock, prepare_out_dir
from .images import ImageTask, run_batch
from .runner import (
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_STOPPED,
    EXIT_USAGE,
    RUN_CONFIG,
    BatchReport,
    BatchRunner,
    BatchTask,
    check_run_fingerprint,
    finish_report,
    normalise_fingerprint,
    print_problems,
    write_skipped,
)

__all__ = [
    "EXIT_OK",
    "EXIT_SKIPPED",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "LOCK_FILE",
    "RUN_CONFIG",
    "BatchReport",
    "BatchRunner",
    "BatchTask",
    "ImageTask",
    "check_run_fingerprint",
    "finish_report",
    "normalise_fingerprint",
    "output_lock",
    "prepare_out_dir",
    "print_problems",
    "run_batch",
    "write_skipped",
]
