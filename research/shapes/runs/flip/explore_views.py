"""Exploration, val only (issue 17): which views of an image, averaged, lift the shipped shapes segmenter?

Each view segments a transformed image with the shipped settings (present classes given, seed 0, batches of 20) and
maps its scores back: ``id`` the image, ``h`` mirrored left to right, ``v`` upside down, ``hv`` both, ``rYX`` shifted
down by Y and right by X pixels (edge-padded; the maps shifted back, edge-padded). Averages of views are labelled
and scored with ``research.shapes.ensemble`` (tau swept per row, paired bootstrap against ``id``). The first N val
scenes from START; the test split is never read. From the repository root (2 threads; ~30 s per view per 60 scenes):

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/flip/explore_views.py 60 id,h,v,hv
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/flip/explore_views.py 60 id,h,r44,r04,r40
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/flip/explore_views.py 150 id,h
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/flip/explore_views.py 300 id,h 150

Printed results: ``explore_views.log``.
"""

import sys
import time

import numpy as np
import torch

from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.ensemble import evaluate, paired_bootstrap, results_of, scene_confusions
from research.shapes.quality import scenes_of


def view(image: np.ndarray, name: str) -> np.ndarray:
    """The (H, W, 3) image as view ``name`` sees it."""
    if name == "id":
        return image
    if name in ("h", "v", "hv"):
        return np.ascontiguousarray(image[:: -1 if "v" in name else 1, :: -1 if "h" in name else 1])
    dy, dx = int(name[1]), int(name[2])  # rYX: shifted down Y and right X, the new rows / columns edge-padded
    return np.pad(image, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[: image.shape[0], : image.shape[1]].copy()


def back(scores: np.ndarray, name: str) -> np.ndarray:
    """(K, H, W) scores of view ``name`` mapped back onto the image."""
    if name == "id":
        return scores
    if name in ("h", "v", "hv"):
        return np.ascontiguousarray(scores[:, :: -1 if "v" in name else 1, :: -1 if "h" in name else 1])
    dy, dx = int(name[1]), int(name[2])
    return np.pad(scores, ((0, 0), (0, dy), (0, dx)), mode="edge")[:, dy:, dx:].copy()


def main(n: int, names: list[str], start: int = 0) -> None:
    torch.set_num_threads(2)
    scenes = scenes_of("val", n, start)
    seg = DiffSegmenter.from_pretrained("shapes")
    seg.config = seg.config.replace(flip=False)  # each view alone
    maps = {}
    for name in names:
        t0, out = time.time(), []
        for i in range(0, n, 20):
            chunk = scenes[i : i + 20]
            results = seg.segment([view(s.image, name) for s in chunk], [s.classes for s in chunk])
            out += [back(r.scores, name) for r in results]
        maps[name] = out
        print(name, "done", round(time.time() - t0, 1), flush=True)
    ref = evaluate(scenes, maps["id"], seg.config.tau)["best"]["tau"]
    ref_conf = scene_confusions(scenes, results_of(scenes, maps["id"], ref), ref)
    shifts = [k for k in names if k == "id" or k.startswith("r")]
    combos = [[k] for k in names] + [["id", "h"], ["id", "v"], ["id", "h", "v", "hv"]]
    combos += ([shifts] if len(shifts) > 1 else []) + [names]
    for combo in combos:
        if not all(k in maps for k in combo):
            continue
        mean = [np.mean([maps[k][i] for k in combo], 0) for i in range(n)]
        best = evaluate(scenes, mean, seg.config.tau)["best"]
        tau = best["tau"]
        delta = paired_bootstrap(scene_confusions(scenes, results_of(scenes, mean, tau), tau), ref_conf)
        rows = {k: round(v, 4) for k, v in best.items() if k != "tau"}
        print("+".join(combo), "tau", tau, rows, "delta", {k: round(v, 4) for k, v in delta.items()}, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
