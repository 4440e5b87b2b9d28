"""What ``refine="pamr"`` adds to a ``segment`` call: time and peak memory, as ratios to the same call without it.

On the shipped shapes model (its settings, flip included), one image of each ``--sides`` (square, random
pixels) with ``--classes`` classes. Both settings run in the same process, interleaved
(:func:`benchmarks.timing.interleaved_medians`); the peak memory above the pre-call RSS is measured once per setting
(:class:`benchmarks.timing.PeakMemory`). PAMR runs at most at ``refine_max_side`` (512) on the longer side, so from
512 up its own work stops growing while the call's full-size work still grows. Run from the repository root:

    python -m benchmarks.refine_cost --sides 64 512 2048 --classes 4 --out benchmarks/results/refine_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import PeakMemory, interleaved_medians
from diffsegmenter import DiffSegmenter


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plain = DiffSegmenter.from_pretrained("shapes")
    refined = DiffSegmenter.from_pretrained("shapes", refine="pamr")
    names = [f"class{i}" for i in range(args.classes)]  # the shapes tokenizer places any lower-case word
    rows = []
    for side in args.sides:
        image = (np.random.default_rng(side).random((side, side, 3)) * 255).astype(np.uint8)
        calls = {
            name: (lambda s=seg, im=image: s.segment(im, names)) for name, seg in (("none", plain), ("pamr", refined))
        }
        seconds = interleaved_medians(calls, repeats=args.repeats)
        peaks = {}
        for name, seg in (("none", plain), ("pamr", refined)):
            with PeakMemory() as mem:
                seg.segment(image, names)
            peaks[name] = mem.peak_extra
        row = {
            "side": side,
            "classes": args.classes,
            "seconds_none": round(seconds["none"], 4),
            "seconds_pamr": round(seconds["pamr"], 4),
            "time_ratio": round(seconds["pamr"] / seconds["none"], 2),
            "peak_mb_none": round(peaks["none"] / 2**20, 1),
            "peak_mb_pamr": round(peaks["pamr"] / 2**20, 1),
            "memory_ratio": round(peaks["pamr"] / max(peaks["none"], 1), 2),
            "memory_method": mem.method,
        }
        rows.append(row)
        print(row, flush=True)
    if args.out is not None:
        config = {k: getattr(refined.config, k) for k in ("refine_iterations", "refine_dilations", "refine_max_side")}
        report = {
            "threads": args.threads,
            "repeats": args.repeats,
            "flip": refined.config.flip,
            **config,
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
