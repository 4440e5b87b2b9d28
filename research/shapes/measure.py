"""The shipped shapes model, with the settings its folder recommends (plus any ``--set`` overrides), on the shapes
world, both protocols. Parts, in the order given:

* ``val-filter``: the first 150 val scenes, whole vocabulary, the shipped diffusion filter: presence precision /
  recall / F1 / exact set, and the open-vocabulary mIoU (the segmenter on each scene's kept classes);
* ``val-present``: the first 150 val scenes (the ones the shipped settings were chosen on), present classes given;
* ``unseen-present``: val scenes 150-449 (no choice has seen them), present classes given;
* ``test-present``: the 300 test scenes, present classes given (read once per setting measured);
* ``test-filter``: the 300 test scenes, whole vocabulary + the shipped filter (read once per setting measured).

Each part is written to the ``--out`` JSON as soon as it ends (a file that exists keeps its other parts). On the
CPU with 2 threads and flip on, a present-class part takes about 5 minutes, ``val-filter`` 20, ``test-filter`` 55.
From the repository root:

    HF_HUB_OFFLINE=1 python -m research.shapes.measure --out research/shapes/runs/pamr/measure.json \\
        --set refine=pamr unseen-present test-present
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsegmenter import DiffSegmenter
from diffsegmenter.config import add_override_argument
from diffsegmenter.filters.base import build_filter

from .filter_tune import VOCAB, open_vocabulary, presence_metrics, presence_truth
from .quality import evaluate_segmenter, scenes_of

__all__ = ["PARTS", "measure"]

#: part -> (split, first scene, scene count, protocol)
PARTS: dict[str, tuple[str, int, int, str]] = {
    "val-filter": ("val", 0, 150, "filter"),
    "val-present": ("val", 0, 150, "present"),
    "unseen-present": ("val", 150, 300, "present"),
    "test-present": ("test", 0, 300, "present"),
    "test-filter": ("test", 0, 300, "filter"),
}


def filter_protocol(seg: DiffSegmenter, flt: Any, scenes: list) -> dict:
    """Presence metrics of the filter and the open-vocabulary mIoU of the segmenter on its kept classes."""
    kept = np.array([[c in flt.select(s.image, VOCAB).kept for c in VOCAB] for s in scenes])
    return {
        "presence": presence_metrics(kept, presence_truth(scenes)),
        "open_vocabulary": open_vocabulary(seg, scenes, kept),
    }


def measure(parts: list[str], target: Path, overrides: dict[str, Any] | None = None, threads: int = 2) -> dict:
    """Run ``parts`` (keys of :data:`PARTS`) with the shipped model and settings plus ``overrides``, writing each
    part's record into ``target`` as it ends. Returns the whole record."""
    torch.set_num_threads(threads)
    overrides = dict(overrides or {})
    seg = DiffSegmenter.from_pretrained("shapes", **overrides)
    flt = build_filter("diffusion", seg)
    out = json.loads(target.read_text(encoding="utf-8")) if target.exists() else {}
    settings = {
        "overrides": overrides,
        "flip": seg.config.flip,
        "tau": seg.config.tau,
        "filter_threshold": flt.threshold,
    }
    earlier = out.get("settings")
    if earlier is not None and json.loads(json.dumps(earlier)) != json.loads(json.dumps(settings)):
        # the record holds one "settings" for all its parts: parts of other settings would be labelled with these
        raise SystemExit(
            f"{target} holds parts measured with other settings ({earlier}; now {settings}): write these parts to "
            "another --out"
        )
    out["settings"] = settings
    for part in parts:
        split, start, n, protocol = PARTS[part]
        scenes = scenes_of(split, n, start=start)
        t = time.time()
        rec = evaluate_segmenter(seg, scenes) if protocol == "present" else filter_protocol(seg, flt, scenes)
        out[part] = {"scenes": f"{split} {start}..{start + n - 1}", **rec, "seconds": time.time() - t}
        print(part, json.dumps(out[part], default=float), flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", help=f"parts to run, in order, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON record (other parts in it are kept)")
    parser.add_argument("--threads", type=int, default=2)
    add_override_argument(parser, "overrides", "a SegmenterConfig field over the model folder's (repeatable)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    measure(args.parts or list(PARTS), args.out, dict(args.overrides or []), args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
