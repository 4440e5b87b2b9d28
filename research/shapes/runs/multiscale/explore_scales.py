"""Exploration, val only (issue 17): does averaging over the passes' resolutions (multi-scale test) lift the shapes
segmenter on top of flip?

A view is ``w{R}c{C}`` (the *where* pass at ``resolution`` R, the *which* pass at ``class_resolution`` C, every
other setting from the shipped ``segmenter_config.json``, present classes given, seed 0, batches of 20), with an
``h`` suffix for the mirror image alone (its scores mirrored back). The shipped flip is ``w160c64+w160c64h``.
Averages of views are labelled and scored with ``research.shapes.ensemble`` (tau swept per row, paired bootstrap
against the shipped flip). Score maps are cached in ``--cache`` (one ``.npy`` per view and scene count). The first
N val scenes from START; the test split is never read. From the repository root (2 threads):

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/multiscale/explore_scales.py 60 \
        w160c64,w160c64h,w128c64,w128c64h,w192c64,w192c64h w160c64+w160c64h w128c64+w128c64h+w160c64+w160c64h ...

Printed results: ``explore_scales.log``.
"""

import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.ensemble import evaluate, paired_bootstrap, results_of, run_member, scene_confusions
from research.shapes.quality import scenes_of

CACHE = Path("/tmp/ms_cache")
REFERENCE = "w160c64+w160c64h"


def view_scores(seg: DiffSegmenter, base, name: str, scenes) -> list[np.ndarray]:
    """The (K, 64, 64) score maps of view ``name`` for ``scenes`` (cached)."""
    path = CACHE / f"{name}_0_{len(scenes)}.npy"
    if path.exists():
        return list(np.load(path, allow_pickle=True))
    match = re.fullmatch(r"w(\d+)c(\d+)(h?)", name)
    if match is None:
        raise SystemExit(f"bad view name {name!r}: use w{{R}}c{{C}}[h]")
    # the shipped settings at these input sizes, run as research.shapes.ensemble runs a member (``h``: the mirror
    # image alone, its scores mirrored back)
    sized = base.replace(resolution=int(match.group(1)), class_resolution=int(match.group(2)))
    t0 = time.time()
    member = f"s{base.seed}t{base.timestep}{match.group(3)}"
    out = [r.scores for r in run_member(seg, sized, member, scenes)]
    print(name, "computed in", round(time.time() - t0, 1), "s", flush=True)
    CACHE.mkdir(exist_ok=True)
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    np.save(path, arr, allow_pickle=True)
    return out


def main(n: int, names: list[str], combos: list[str]) -> None:
    """Print each view's and each combination's best-tau scores on the first ``n`` val scenes."""
    torch.set_num_threads(2)
    scenes = scenes_of("val", n)
    seg = DiffSegmenter.from_pretrained("shapes")
    base = seg.config
    needed = dict.fromkeys([*names, *REFERENCE.split("+"), *(k for c in combos for k in c.split("+"))])
    maps = {name: view_scores(seg, base, name, scenes) for name in needed}
    ref_scores = [np.mean([maps[k][i] for k in REFERENCE.split("+")], 0) for i in range(n)]
    ref_tau = evaluate(scenes, ref_scores, base.tau)["best"]["tau"]
    ref_conf = scene_confusions(scenes, results_of(scenes, ref_scores, ref_tau), ref_tau)
    for combo in [[k] for k in names] + [c.split("+") for c in combos]:
        mean = [np.mean([maps[k][i] for k in combo], 0) for i in range(n)]
        best = evaluate(scenes, mean, base.tau)["best"]
        tau = best["tau"]
        delta = paired_bootstrap(scene_confusions(scenes, results_of(scenes, mean, tau), tau), ref_conf)
        rows = {k: round(v, 4) for k, v in best.items() if k != "tau"}
        print("+".join(combo), "tau", tau, rows, "delta", {k: round(v, 4) for k, v in delta.items()}, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:])
