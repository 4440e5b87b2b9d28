"""Benchmark evaluation: dataset readers, dataset-level mIoU, and a resumable, shardable harness.

Importing this package loads no model and touches no file; torch is not imported.
"""

from .datasets import DATASET_NAMES, DatasetFilesMissingError, Sample, SegmentationDataset, load_dataset
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion

__all__ = [
    "DATASET_NAMES",
    "ConfusionMatrix",
    "DatasetFilesMissingError",
    "Sample",
    "SegmentationDataset",
    "SegmentationMetrics",
    "load_dataset",
    "metrics_from_confusion",
]
