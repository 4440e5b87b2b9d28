"""Where the shipped flip's errors are (val only): the pixel confusion matrix of the first N val scenes.

Reads the cached views of ``explore_scales.py`` (run it first with ``w160c64,w160c64h``), averages the image's and
the mirror's scores (the shipped flip), labels at tau and prints the 5x5 confusion (rows truth, columns prediction:
background, circle, square, triangle, cross), the per-class IoU, and the pixels lost to class confusion (one shape
called another) against those lost on the foreground/background boundary. From the repository root:

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/multiscale/confusion.py 60 0.6
"""

import sys

import numpy as np

from research.shapes.ensemble import results_of
from research.shapes.quality import scenes_of, world_labels

CACHE = "/tmp/ms_cache"


def main(n: int, tau: float) -> None:
    """Print the confusion of the shipped flip on the first ``n`` val scenes at ``tau``."""
    scenes = scenes_of("val", n)
    a = np.load(f"{CACHE}/w160c64_0_{n}.npy", allow_pickle=True)
    b = np.load(f"{CACHE}/w160c64h_0_{n}.npy", allow_pickle=True)
    confusion = np.zeros((5, 5), np.int64)
    for scene, res in zip(scenes, results_of(scenes, [(x + y) / 2 for x, y in zip(a, b)], tau)):
        confusion += np.bincount(scene.labels.ravel() * 5 + world_labels(res).ravel(), minlength=25).reshape(5, 5)
    print(confusion)
    diag = np.diag(confusion)
    print("IoU", (diag / (confusion.sum(0) + confusion.sum(1) - diag)).round(3))
    shapes = confusion[1:, 1:]
    print("class confusion px", int(shapes.sum() - np.trace(shapes)))
    print("boundary px (fg->bg, bg->fg)", int(confusion[1:, 0].sum()), int(confusion[0, 1:].sum()))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
