"""Cost of each read-out (``SegmenterConfig.readout``) as a ratio to the paper read-out, timed in the same run.

* UNet read-outs (paper, rescaled, weighted) on the shipped shapes model with its shipped settings (real weights;
  a ``segment`` call on a batch of val scenes with their present classes).
* Joint-attention read-outs (paper, rescaled, single-block; concept on FLUX) on the tiny random SD3 and FLUX
  models of the tests (``tests/family_builders.py``): the ratio is only indicative there (tiny widths, 16 x 16
  token grid), the absolute times meaningless.

Functions are timed interleaved (:func:`benchmarks.timing.interleaved_medians`), so machine load hits all alike.
Run from the repository root:

    python -m benchmarks.readouts --scenes 8 --repeats 3 --out benchmarks/results/readouts.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.timing import interleaved_medians
from diffsegmenter import DiffSegmenter


def _ratios(times: dict[str, float]) -> dict[str, dict[str, float]]:
    return {name: {"seconds": t, "ratio_to_paper": t / times["paper"]} for name, t in times.items()}


def unet_costs(scenes: int, repeats: int) -> dict:
    from research.shapes.quality import scenes_of

    seg = DiffSegmenter.from_pretrained("shapes")
    base = seg.config
    sc = scenes_of("val", scenes)

    def run(readout):
        def fn():
            seg.config = base.replace(readout=readout)
            seg.segment([s.image for s in sc], [s.classes for s in sc])

        return fn

    times = interleaved_medians({r: run(r) for r in ("paper", "rescaled", "weighted")}, repeats)
    seg.config = base
    return {"model": "shapes (shipped settings)", "scenes": scenes, **_ratios(times)}


def joint_costs(repeats: int) -> dict:
    from tests.family_builders import build_flux, build_sd3

    out = {}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, readouts in (
            ("sd3", build_sd3, ("paper", "rescaled", "single-block")),
            ("flux", build_flux, ("paper", "rescaled", "single-block", "concept")),
        ):
            build(Path(tmp) / name)
            base = DiffSegmenter.from_pretrained(Path(tmp) / name, resolution=64)

            def run(readout, base=base):
                seg = DiffSegmenter(backbone=base.backbone, config=base.config.replace(readout=readout))
                return lambda: seg.segment(image, classes=["cat", "dog", "grass"])

            times = interleaved_medians({r: run(r) for r in readouts}, repeats)
            out[name] = {"model": f"tiny random {name} (tests/family_builders.py), 64 px", **_ratios(times)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = {"unet": unet_costs(args.scenes, args.repeats), "joint": joint_costs(args.repeats)}
    text = json.dumps(report, indent=2) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
