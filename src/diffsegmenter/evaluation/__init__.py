"""Benchmark evaluation: dataset readers, dataset-level mIoU, and a resumable, shardable harness.

The ``diffsegmenter eval`` command (its flags, ``run_eval``, ``main_eval``) is ``diffsegmenter.cli.evaluate``.

Importing this package loads no model and touches no file; torch is not imported.
"""

from .datasets import DATASET_NAMES, DatasetFilesMissingError, Sample, SegmentationDataset, load_dataset
from .harness import PROTOCOLS, EvalTask, evaluate, load_candidates
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion
from .scoring import score_predictions

__all__ = [
    "DATASET_NAMES",
    "PROTOCOLS",
    "ConfusionMatrix",
    "DatasetFilesMissingError",
    "Sample",
    "SegmentationDataset",
    "SegmentationMetrics",
    "EvalTask",
    "evaluate",
    "load_candidates",
    "load_dataset",
    "metrics_from_confusion",
    "score_predictions",
]
