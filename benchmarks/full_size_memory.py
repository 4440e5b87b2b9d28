"""Peak memory of the full-size score maps per pixel, with and without ``flip``, against the up-front estimate.

``segment`` refuses a call whose full-size work could not fit the machine's RAM (:func:`diffsegmenter.result.
check_full_size_memory`, estimated with ``BYTES_PER_PIXEL_PER_CLASS`` and ``BYTES_PER_PIXEL``). This measures what
one call on a large image adds above the memory before it (:class:`benchmarks.timing.PeakMemory`), in bytes per
pixel, on the shipped shapes model (its input is resized to 160² / 64², so nearly all of it is full-size work), with
its settings and ``flip`` off and on, in the same process, and prints it beside the estimate. Run from the
repository root:

    python -m benchmarks.full_size_memory --side 3000 --classes 4 16 --out benchmarks/results/full_size_memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import PeakMemory
from diffsegmenter import DiffSegmenter
from diffsegmenter.result import BYTES_PER_PIXEL, BYTES_PER_PIXEL_PER_CLASS


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=3000, help="the image's side in pixels")
    p.add_argument("--classes", type=int, nargs="+", default=[4, 16], help="class counts to measure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = DiffSegmenter.from_pretrained("shapes")
    base = seg.config.replace(max_image_pixels=None)
    image = (np.random.default_rng(0).random((args.side, args.side, 3)) * 255).astype(np.uint8)
    pixels = args.side * args.side
    rows = []
    for k in args.classes:
        names = [f"class{i}" for i in range(k)]  # the shapes tokenizer places any lower-case word
        for flip in (False, True):
            seg.config = base.replace(flip=flip)
            seg.segment(image[:64, :64], names)  # warm-up: the text cache, the allocator
            with PeakMemory() as mem:
                seg.segment(image, names)
            row = {
                "classes": k,
                "flip": flip,
                "bytes_per_pixel": round(mem.peak_extra / pixels, 1),
                "estimate_bytes_per_pixel": BYTES_PER_PIXEL_PER_CLASS * k + BYTES_PER_PIXEL,
                "method": mem.method,
            }
            rows.append(row)
            print(row, flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"side": args.side, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
