"""Cost of the diffusion category filter on the shipped shapes model, as ratios timed in the same run.

Per scene (val scenes of the shapes world, one ``segment`` call per scene, the shipped segmenter settings):

* ``present``: ``segment`` with the scene's present classes given (no filter): the baseline;
* ``vocab+quantile``: the whole vocabulary and the previous shipped filter (``scoring="quantile"``: one score per
  image from the denoising-error reduction, t 200/400/600, 2 draws, quantile 0.5, threshold 0.0004, 64²);
* ``vocab+regions``: the whole vocabulary and the shipped filter (``scoring="regions"``: the model folder's
  ``_diffusion_filter``; one vote per foreground region of the segmenter's own whole-vocabulary pass).

Both filters are built once and reused, as ``segment(..., filter="diffusion")`` does. The functions are timed
interleaved (:func:`benchmarks.timing.interleaved_medians`), so load from other processes hits all alike. Run from
the repository root:

    python -m benchmarks.filter_cost --scenes 8 --repeats 3 --threads 1 --out benchmarks/results/filter_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.timing import interleaved_medians, load_average
from diffsegmenter import DiffSegmenter
from diffsegmenter.cli.parser import positive_int
from diffsegmenter.filters.diffusion import DiffusionFilter

#: The shapes model's filter before issue 17 (``git show ee50b5b~1:src/diffsegmenter/models/shapes/segmenter_config.json``).
PREVIOUS_FILTER = {
    "scoring": "quantile",
    "timesteps": (200, 400, 600),
    "noise_draws": 2,
    "quantile": 0.5,
    "threshold": 0.0004,
    "resolution": 64,
}


def measure(scenes: int, repeats: int) -> dict:
    """Median seconds per call over ``scenes`` val scenes for each variant, and the ratios."""
    from research.shapes.quality import scenes_of
    from research.shapes.world import CLASS_NAMES

    seg = DiffSegmenter.from_pretrained("shapes")
    vocab = list(CLASS_NAMES[1:])
    val = scenes_of("val", scenes)
    present = [[CLASS_NAMES[i] for i in sorted({int(v) for v in sc.labels.flat} - {0})] for sc in val]
    quantile = DiffusionFilter(seg, **PREVIOUS_FILTER)
    regions = DiffusionFilter(seg)  # the model folder's recommendation
    if regions.scoring != "regions":
        raise SystemExit(f"the shipped filter scores {regions.scoring!r}, not 'regions': update this benchmark")

    def run(filter_, lists):
        def fn():
            for sc, classes in zip(val, lists):
                seg.segment(sc.image, classes, filter=filter_)

        return fn

    fns = {
        "present": run(None, present),
        "vocab+quantile": run(quantile, [vocab] * len(val)),
        "vocab+regions": run(regions, [vocab] * len(val)),
    }
    times = interleaved_medians(fns, repeats=repeats)
    per_scene = {k: v / len(val) for k, v in times.items()}
    return {
        "seconds_per_scene": per_scene,
        "ratio_to_present": {k: v / per_scene["present"] for k, v in per_scene.items()},
        "regions_over_quantile": per_scene["vocab+regions"] / per_scene["vocab+quantile"],
        "filters": {"quantile": PREVIOUS_FILTER, "regions": {k: getattr(regions, k) for k in _FIELDS}},
    }


_FIELDS = ("scoring", "timesteps", "noise_draws", "threshold", "resolution", "min_region")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=positive_int, default=8, help="val scenes per timed call (default: 8)")
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="timed rounds (default: 3; one untimed round first)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "protocol": "shapes model, shipped settings, val scenes, one segment call per scene, interleaved medians",
        "scenes": args.scenes,
        "repeats": args.repeats,
        "threads": args.threads,
        "load_average_before": load_average(),
        **measure(args.scenes, args.repeats),
        "load_average_after": load_average(),
    }
    text = json.dumps(report, indent=2, default=list)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
