"""The shipped shapes model with the settings its folder recommends (``flip`` on: the image and its mirror image
averaged) on the shapes world, both protocols. The record's run had this code inline; it now lives in
:mod:`research.shapes.measure`, unchanged but for the ``overrides`` key in the record's settings. Parts, in the
order given:

* ``val-filter``: the first 150 val scenes, whole vocabulary, the shipped diffusion filter (its settings as tuned
  without flip): presence precision / recall / F1 / exact set, and the open-vocabulary mIoU (the segmenter on each
  scene's kept classes). The check that flip does not hurt the filter, made before any test read.
* ``unseen-present``: val scenes 150-449 (no choice has seen them), present classes given.
* ``test-present``: the 300 test scenes, present classes given (read once).
* ``test-filter``: the 300 test scenes, whole vocabulary + the shipped filter (read once).

Run from the repository root (2 threads, about 1 hour for all parts):

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/flip/measure.py \\
        val-filter unseen-present test-present test-filter
"""

import sys
from pathlib import Path

from research.shapes.measure import measure

PARTS = ["val-filter", "unseen-present", "test-present", "test-filter"]

if __name__ == "__main__":
    measure(sys.argv[1:] or PARTS, Path(__file__).with_name("measure.json"))
