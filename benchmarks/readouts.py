"""Cost of each read-out (``SegmenterConfig.readout``) as a ratio to the paper read-out, timed in the same run.

* UNet read-outs on the shipped shapes model with its shipped settings (real weights; a ``segment`` call on a batch
  of val scenes with their present classes): paper, and rescaled / weighted with each background handling
  (``research.shapes.readouts.VARIANTS``; ``/paper`` runs the paper's capture for the where pass).
* Joint-attention read-outs on the tiny random SD3, FLUX and PixArt-Σ models of the tests
  (``tests/family_builders.py``): paper, rescaled, weighted (head weighting from per-head outputs over the joint
  keys, layer agreements), single-block (SD3, FLUX), concept (FLUX). The ratio is only indicative there (tiny
  widths, 16 x 16 token grid: fixed Python overheads weigh more than on a real model), the absolute times are
  meaningless.

Functions are timed interleaved (:func:`benchmarks.timing.interleaved_medians`), so machine load hits all alike.
Run from the repository root:

    python -m benchmarks.readouts --scenes 4 --repeats 3 --threads 1 --out benchmarks/results/readouts.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import interleaved_medians
from diffsegmenter import DiffSegmenter, readouts

UNET_VARIANTS = (
    "paper",
    "rescaled/content",
    "rescaled/absorb",
    "rescaled/paper",
    "weighted/content",
    "weighted/absorb",
    "weighted/paper",
)


def _ratios(times: dict[str, float]) -> dict[str, dict[str, float]]:
    return {name: {"seconds": t, "ratio_to_paper": t / times["paper"]} for name, t in times.items()}


def unet_costs(scenes: int, repeats: int) -> dict:
    from research.shapes.quality import scenes_of
    from research.shapes.readouts import VARIANTS

    seg = DiffSegmenter.from_pretrained("shapes")
    base = seg.config
    sc = scenes_of("val", scenes)

    def run(name):
        _, field, factory = VARIANTS[name]

        def fn():
            saved = readouts.FACTORIES[field]
            readouts.FACTORIES[field] = lambda block: factory()
            try:
                seg.config = base.replace(readout=field)
                seg.segment([s.image for s in sc], [s.classes for s in sc])
            finally:
                readouts.FACTORIES[field] = saved

        return fn

    times = interleaved_medians({n: run(n) for n in UNET_VARIANTS}, repeats)
    seg.config = base
    return {"model": "shapes (shipped settings)", "scenes": scenes, **_ratios(times)}


def joint_costs(repeats: int) -> dict:
    from tests.family_builders import build_flux, build_pixart, build_sd3

    out = {}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, names in (
            ("sd3", build_sd3, ("paper", "rescaled", "weighted", "single-block")),
            ("flux", build_flux, ("paper", "rescaled", "weighted", "single-block", "concept")),
            ("pixart", build_pixart, ("paper", "rescaled", "weighted")),
        ):
            build(Path(tmp) / name)
            base = DiffSegmenter.from_pretrained(Path(tmp) / name, resolution=64)

            def run(readout, base=base):
                seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout=readout))
                return lambda: seg.segment(image, classes=["cat", "dog", "grass"])

            times = interleaved_medians({r: run(r) for r in names}, repeats)
            out[name] = {"model": f"tiny random {name} (tests/family_builders.py), 64 px", **_ratios(times)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "command": "python -m benchmarks.readouts "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "threads": args.threads,
        "unet": unet_costs(args.scenes, args.repeats),
        "joint": joint_costs(args.repeats),
    }
    text = json.dumps(report, indent=2) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
