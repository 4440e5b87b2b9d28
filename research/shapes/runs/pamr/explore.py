"""PAMR on the shipped shapes model's final score maps (``SegmenterConfig.refine="pamr"``; val only).

Reads the shipped settings' score maps (flip on: member ``s0t50f`` of :mod:`research.shapes.ensemble`, computed or
taken from ``--cache``) for the first N val scenes, then:

1. where the class errors are: per true shape, whether its foreground pixels are all of its class, partly another
   class (its majority right), or mostly another class;
2. PAMR (:func:`diffsegmenter.refinement.pamr`, on the 64 x 64 image and maps) over a small grid of rounds,
   dilations and temperatures, each at its best tau (0.40..0.74), against the maps as shipped: mIoU and a paired
   bootstrap over scenes (95 % range). The library's defaults are the PAMR paper's (10 rounds, dilations
   1, 2, 4, 8, 12, 24, temperature 0.1); the grid shows how much the choice matters here, it does not choose.

From the repository root (the maps take about 5 minutes without the cache; the grid about 10):

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/pamr/explore.py 150 /tmp/ens_cache
"""

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from diffsegmenter.refinement import pamr
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.ensemble import member_scores, miou_of, paired_bootstrap, results_of, scene_confusions
from research.shapes.quality import scenes_of, world_labels
from research.shapes.readouts import metrics
from research.shapes.world import shape_mask

TAUS = [round(float(x), 2) for x in np.arange(0.40, 0.75, 0.02)]


def best_tau(scenes, scores):
    """(tau, mIoU, per-scene confusions) at the tau of the highest mIoU."""
    best = None
    for tau in TAUS:
        conf = scene_confusions(scenes, results_of(scenes, scores, tau), tau)
        m = miou_of(conf.sum(0))
        if best is None or m > best[1]:
            best = (tau, m, conf)
    return best


def error_kinds(scenes, scores, tau):
    """Per true shape: all right, partly another class (majority right), mostly another class; and their pixels."""
    counts = {"right": 0, "partly": 0, "mostly": 0, "partly_px": 0, "mostly_px": 0}
    for scene, res in zip(scenes, results_of(scenes, scores, tau)):
        pred = world_labels(res)
        for obj in scene.objects:
            fg = pred[(scene.labels == obj.label) & shape_mask(obj)]
            fg = fg[fg > 0]
            if fg.size == 0:
                continue
            wrong = int((fg != obj.label).sum())
            kind = "right" if wrong == 0 else "partly" if np.bincount(fg).argmax() == obj.label else "mostly"
            counts[kind] += 1
            if kind != "right":
                counts[f"{kind}_px"] += wrong
    return counts


def main(n: int, cache: str) -> None:
    torch.set_num_threads(2)
    scenes = scenes_of("val", n)
    seg = DiffSegmenter.from_pretrained("shapes")
    scores, _ = member_scores(seg, seg.config, "s0t50f", scenes, Path(cache))
    tau0, m0, conf0 = best_tau(scenes, scores)
    print(f"shipped (flip) tau {tau0} mIoU {m0:.4f}", metrics(scenes, results_of(scenes, scores, tau0), tau0))
    print("class errors per true shape at that tau:", error_kinds(scenes, scores, tau0), flush=True)
    images = [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in scenes]
    grid = itertools.product([1, 3, 10], [(1, 2), (1, 2, 4), (1, 2, 4, 8), (1, 2, 4, 8, 12, 24)], [0.05, 0.1, 0.2])
    for rounds, dilations, temperature in grid:
        refined = [
            pamr(im, torch.from_numpy(s), iterations=rounds, dilations=dilations, temperature=temperature).numpy()
            for im, s in zip(images, scores)
        ]
        tau, m, conf = best_tau(scenes, refined)
        delta = {k: round(v, 4) for k, v in paired_bootstrap(conf, conf0).items()}
        default = rounds == 10 and dilations == (1, 2, 4, 8, 12, 24) and temperature == 0.1
        print(
            f"rounds {rounds} dilations {dilations} temperature {temperature} tau {tau} mIoU {m:.4f}",
            delta,
            "(library default)" if default else "",
            flush=True,
        )
        if default:
            print("   ", metrics(scenes, results_of(scenes, refined, tau), tau))
            print("    class errors per true shape:", error_kinds(scenes, refined, tau), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
