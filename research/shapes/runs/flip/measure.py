"""The shipped shapes model with the settings its folder recommends (``flip`` on: the image and its mirror image
averaged) on the shapes world, both protocols. Parts, in the order given:

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

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffsegmenter import DiffSegmenter
from diffsegmenter.filters.base import build_filter
from research.shapes.filter_tune import VOCAB, open_vocabulary, presence_metrics, presence_truth
from research.shapes.quality import evaluate_segmenter, scenes_of

PARTS = {
    "val-filter": ("val", 0, 150, "filter"),
    "unseen-present": ("val", 150, 300, "present"),
    "test-present": ("test", 0, 300, "present"),
    "test-filter": ("test", 0, 300, "filter"),
}


def filter_protocol(seg, flt, scenes) -> dict:
    kept = np.array([[c in flt.select(s.image, VOCAB).kept for c in VOCAB] for s in scenes])
    return {
        "presence": presence_metrics(kept, presence_truth(scenes)),
        "open_vocabulary": open_vocabulary(seg, scenes, kept),
    }


def main(parts: list[str]) -> None:
    torch.set_num_threads(2)
    seg = DiffSegmenter.from_pretrained("shapes")
    flt = build_filter("diffusion", seg)
    target = Path(__file__).with_name("measure.json")
    out = json.loads(target.read_text(encoding="utf-8")) if target.exists() else {}
    out["settings"] = {"flip": seg.config.flip, "tau": seg.config.tau, "filter_threshold": flt.threshold}
    for part in parts:
        split, start, n, protocol = PARTS[part]
        scenes = scenes_of(split, n, start=start)
        t = time.time()
        rec = evaluate_segmenter(seg, scenes) if protocol == "present" else filter_protocol(seg, flt, scenes)
        out[part] = {"scenes": f"{split} {start}..{start + n - 1}", **rec, "seconds": time.time() - t}
        print(part, json.dumps(out[part], default=float), flush=True)
        target.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:] or list(PARTS))
