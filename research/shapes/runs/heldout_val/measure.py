"""The shipped shapes model (its shipped settings) on the 150 val scenes its settings were chosen on, and on 300
further val scenes (150-449) that no choice has seen. Run from the repository root:

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD python research/shapes/runs/heldout_val/measure.py
"""

import json
import sys
import time
from pathlib import Path

import torch

from diffsegmenter import DiffSegmenter
from research.shapes.quality import evaluate_segmenter, scenes_of

torch.set_num_threads(1)
seg = DiffSegmenter.from_pretrained("shapes")
out = {}
for name, start, n in [("val_0_150", 0, 150), ("val_150_450", 150, 300)]:
    t = time.time()
    out[name] = evaluate_segmenter(seg, scenes_of("val", n, start=start))
    out[name]["seconds"] = time.time() - t
    print(name, json.dumps(out[name], default=float), flush=True)
target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("heldout_val.json")
target.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
