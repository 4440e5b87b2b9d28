"""The shipped shapes model, with the settings shipped when this record was made (commit 5adde0f: the shipped
settings of today without ``flip``, tau 0.6), on the 150 val scenes its settings were chosen on, and on 300 further val
scenes (150-449) that no choice has seen. Run from the repository root:

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD python research/shapes/runs/heldout_val/measure.py OUT.json

OUT.json must be new (the record beside this script, ``heldout_val.json``, is never overwritten). Today's shipped
settings on the same scenes are measured by ``../flip/measure.py``.
"""

import json
import sys
import time
from pathlib import Path

import torch

from diffsegmenter import DiffSegmenter
from research.shapes.quality import evaluate_segmenter, scenes_of

#: The settings of the record: the model folder's, less what was chosen after it (flip, tau 0.58).
SETTINGS = {"flip": False, "tau": 0.6}

if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
    sys.exit(f"usage: {sys.argv[0]} OUT.json (a new file; the record heldout_val.json is kept)")
target = Path(sys.argv[1])
torch.set_num_threads(1)
seg = DiffSegmenter.from_pretrained("shapes", **SETTINGS)
out: dict = {"settings": SETTINGS}
for name, start, n in [("val_0_150", 0, 150), ("val_150_450", 150, 300)]:
    t = time.time()
    out[name] = evaluate_segmenter(seg, scenes_of("val", n, start=start))
    out[name]["seconds"] = time.time() - t
    print(name, json.dumps(out[name], default=float), flush=True)
target.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
