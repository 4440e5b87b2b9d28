"""Benchmark evaluation: dataset readers, dataset-level mIoU, and a resumable, shardable harness.

Importing this package loads no model and touches no file; torch is not imported.
"""

from .datasets import DATASET_NAMES, DatasetFilesMissingError, Sample, SegmentationDataset, load_dataset
from .harness import (
    PROTOCOLS,
    add_eval_arguments,
    evaluate,
    load_candidates,
    main_eval,
    run_eval,
    score_predictions,
)
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion

__all__ = [
    "DATASET_NAMES",
    "PROTOCOLS",
    "ConfusionMatrix",
    "DatasetFilesMissingError",
    "Sample",
    "SegmentationDataset",
    "SegmentationMetrics",
    "add_eval_arguments",
    "evaluate",
    "load_candidates",
    "load_dataset",
    "main_eval",
    "metrics_from_confusion",
    "run_eval",
    "score_predictions",
]
