"""Does averaging the score maps over noise draws and timesteps lift the shapes model's mIoU? (issue 17, val only)

A training-free lever: run the shipped segmenter (its ``segmenter_config.json``, readout ``rescaled``) once per
*member*, a (noise seed, timestep[, VAE sample]) triple; an *ensemble* averages its members' per-class score maps
(``SegmentationResult.scores``, (K, 64, 64) in [0, 1]) and labels them with the library's rule
(``SegmentationResult.relabel``: argmax over the classes, background where the best score is not above tau). Each
member is computed once and shared by every ensemble that names it.

Protocol: exactly the val protocol of :mod:`research.shapes.readouts`: the first ``--val N`` val scenes, present
classes given, tau swept over 0.04..0.90 step 0.02 per ensemble (max mIoU, ties to the lower tau) and also reported
at the shipped tau. Each ensemble's mIoU gain over the reference (``s0t50``: the shipped settings on the image
alone, without ``flip``; each at its own best tau) comes with a paired bootstrap over scenes (the 2.5 / 97.5
percentiles of the difference) and the fraction of pixels whose label at the shipped tau differs from the
reference's. This script never reads the test split.

Members are named ``s{seed}t{timestep}`` with a ``v`` suffix for ``vae_sample=True``, then an ``h`` suffix for the
mirror image alone (left to right; its score maps mirrored back) or an ``f`` suffix for the library's ``flip=True``
(the image and its mirror image averaged inside ``segment``); ensembles are ``name=member+member+...``. Every member
runs with ``flip`` as its name says, whatever the model folder recommends. With ``--cache DIR`` each member's score
maps are kept (``DIR/{member}.npz``, scenes 0..n-1) so that a later run on more scenes computes only the new ones.
Run from the repository root (1 thread):

    OMP_NUM_THREADS=1 python -m research.shapes.ensemble --out research/shapes/runs/ensemble/val60 --val 60 \
        --cache /tmp/ens_cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffsegmenter.cli.parser import positive_int
from diffsegmenter.result import SegmentationResult
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import scenes_of, world_labels
from .readouts import TAUS, metrics
from .world import CLASS_NAMES, Scene

REFERENCE = "s0t50"
#: The members of the brief: 4 seeds at t = 50, seed 0 at 25, 100, 200, and seeds 1-3 at 100 for 4 seeds x {50, 100}.
MEMBERS = ("s0t50", "s1t50", "s2t50", "s3t50", "s0t25", "s0t100", "s0t200", "s1t100", "s2t100", "s3t100")
ENSEMBLES = {
    "seeds2@t50": "s0t50+s1t50",
    "seeds4@t50": "s0t50+s1t50+s2t50+s3t50",
    "seeds4@t100": "s0t100+s1t100+s2t100+s3t100",
    "t50,100": "s0t50+s0t100",
    "t25,50,100": "s0t25+s0t50+s0t100",
    "t50,100,200": "s0t50+s0t100+s0t200",
    "seeds4xt50,100": "s0t50+s1t50+s2t50+s3t50+s0t100+s1t100+s2t100+s3t100",
}
_MEMBER = re.compile(r"^s(\d+)t(\d+)(v?)([hf]?)$")


def parse_member(name: str) -> tuple[int, int, bool, str]:
    """``"s1t100v"`` -> (seed 1, timestep 100, vae_sample True, view ""); the view is "" (the image), "h" (its
    mirror image alone) or "f" (``flip=True``: both).

    Raises:
        ValueError: a name not of the form ``s{seed}t{timestep}[v][h|f]``.
    """
    m = _MEMBER.match(name)
    if m is None:
        raise ValueError(f"member {name!r}: expected s{{seed}}t{{timestep}}[v][h|f], e.g. s0t50, s1t100v or s0t50f")
    return int(m.group(1)), int(m.group(2)), m.group(3) == "v", m.group(4)


def run_member(seg, base, name: str, scenes: Sequence[Scene], batch: int = 20) -> list[SegmentationResult]:
    """The shipped segmenter with one member's seed, timestep, VAE sampling and view on the scenes (present
    classes). An ``h`` member's results are those of the mirror images, their scores mirrored back."""
    seed, t, vae_sample, view = parse_member(name)
    seg.config = base.replace(timestep=t, vae_sample=vae_sample, flip=view == "f")
    out: list[SegmentationResult] = []
    try:
        for start in range(0, len(scenes), batch):
            chunk = scenes[start : start + batch]
            images = [np.ascontiguousarray(s.image[:, ::-1]) if view == "h" else s.image for s in chunk]
            results = seg.segment(images, [s.classes for s in chunk], seed=seed)
            if view == "h":
                results = [dataclasses.replace(r, scores=np.ascontiguousarray(r.scores[:, :, ::-1])) for r in results]
            out.extend(results)
    finally:
        seg.config = base
    return out


def member_scores(
    seg, base, name: str, scenes: Sequence[Scene], cache: Path | None, model: str = "shapes"
) -> tuple[list, float]:
    """A member's (K, 64, 64) float32 score maps per scene, and its CPU seconds per scene (over every scene this
    member has computed, in this run or the cached ones; NaN for a cache without timing). Cached maps cover scenes
    0..m-1 (``s{i}`` in the npz, with the CPU seconds and count of the scenes computed); only scenes m.. are
    computed. The npz records what made it (``model``, the member, ``base``'s settings) and its scenes' seeds; a
    cache made otherwise, or by an older version that did not record it, is refused (RuntimeError)."""
    have: list[np.ndarray] = []
    seconds, computed = float("nan"), 0
    made_by = json.dumps({"model": model, "member": name, "config": base.to_dict()}, sort_keys=True, default=str)
    path = None if cache is None else cache / f"{name}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            if "made_by" not in z.files or str(z["made_by"]) != made_by:
                raise RuntimeError(
                    f"cached maps of {name} in {path} were made by another model or settings (or an older version "
                    "that did not record them): delete the file or use another --cache folder"
                )
            stored = sum(f.startswith("s") and f[1:].isdigit() for f in z.files)
            n = min(stored, len(scenes))
            if [int(x) for x in z["seeds"][:n]] != [scene.seed for scene in scenes[:n]]:
                raise RuntimeError(f"cached maps of {name} do not match the scenes (stale {path}?)")
            have = [z[f"s{i}"] for i in range(n)]
            if "cpu_seconds" in z.files:
                seconds, computed = float(z["cpu_seconds"]), int(z["computed"])
    todo = scenes[len(have) :]
    if todo:
        t0 = time.process_time()
        have += [r.scores for r in run_member(seg, base, name, todo)]
        spent = time.process_time() - t0
        seconds, computed = (spent if computed == 0 else seconds + spent), computed + len(todo)
        if path is not None:
            maps = {f"s{i}": s for i, s in enumerate(have)}
            seeds = [scene.seed for scene in scenes[: len(have)]]
            np.savez(
                path,
                **maps,
                cpu_seconds=np.float64(seconds),
                computed=np.int64(computed),
                made_by=np.array(made_by),
                seeds=np.array(seeds, dtype=np.int64),
            )
    for scene, s in zip(scenes, have):
        if s.shape[0] != len(scene.classes):
            raise RuntimeError(f"cached maps of {name} do not match the scenes (stale {path}?)")
    return have, seconds / computed if computed else float("nan")


def results_of(scenes: Sequence[Scene], scores: Sequence[np.ndarray], tau: float) -> list[SegmentationResult]:
    """Score maps as :class:`SegmentationResult` objects (present classes in scene order), labelled at ``tau``."""
    out = []
    for scene, s in zip(scenes, scores):
        r = SegmentationResult(
            labels=np.zeros(s.shape[1:], np.int32), scores=s, classes=list(scene.classes), prompts=[], tau=tau
        )
        out.append(dataclasses.replace(r, labels=r.relabel(tau)))
    return out


def scene_confusions(scenes: Sequence[Scene], results: Sequence[SegmentationResult], tau: float) -> np.ndarray:
    """(N, C, C) int64 per-scene confusion matrices (rows: truth, columns: prediction) at ``tau``."""
    c = len(CLASS_NAMES)
    out = np.zeros((len(scenes), c, c), dtype=np.int64)
    for i, (scene, r) in enumerate(zip(scenes, results)):
        pred = world_labels(r, r.relabel(tau)).ravel()
        gt = scene.labels.astype(np.int64).ravel()
        out[i] = np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)
    return out


def miou_of(confusion: np.ndarray) -> float:
    """mIoU of a summed (C, C) confusion matrix: NaN-mean over classes seen in truth or prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return float(np.nanmean(iou))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """mIoU(a) - mIoU(b) over scenes resampled with replacement (the same resample for both): mean and 95 % range.

    Args:
        a, b (`np.ndarray`): (N, C, C) per-scene confusions of two methods on the same scenes.
    """
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    diffs = np.empty(draws)
    for k in range(draws):
        idx = rng.integers(0, n, n)
        diffs[k] = miou_of(a[idx].sum(0)) - miou_of(b[idx].sum(0))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"delta": miou_of(a.sum(0)) - miou_of(b.sum(0)), "ci95_low": float(lo), "ci95_high": float(hi)}


def label_change(a: Sequence[np.ndarray], b: Sequence[np.ndarray], tau: float) -> float:
    """Fraction of pixels (mean over scenes) whose label at ``tau`` differs between two sets of score maps: how much
    room an ensemble has to move the reference's labels at all."""
    return float(np.mean([(label_at(x, tau) != label_at(y, tau)).mean() for x, y in zip(a, b)]))


def label_at(scores: np.ndarray, tau: float) -> np.ndarray:
    """The library's labelling rule (``SegmentationResult.relabel``) on bare (K, H, W) score maps."""
    return SegmentationResult(np.zeros(scores.shape[1:], np.int32), scores, [], [], tau).relabel(tau)


def evaluate(scenes: Sequence[Scene], scores: Sequence[np.ndarray], shipped_tau: float) -> dict:
    """Best-tau and shipped-tau metrics of one set of score maps (``readouts.metrics``)."""
    res = results_of(scenes, scores, shipped_tau)
    table = {t: metrics(scenes, res, t)["mIoU"] for t in TAUS}
    best = max(TAUS, key=lambda t: table[t])
    return {"best": {"tau": best, **metrics(scenes, res, best)}, "shipped_tau": metrics(scenes, res, shipped_tau)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--out", required=True)
    p.add_argument("--val", type=positive_int, default=60, help="the first N val scenes (readouts.py's val scenes)")
    p.add_argument("--members", nargs="*", default=None, help="members to report alone (default: all needed)")
    p.add_argument("--ensembles", nargs="*", default=None, help="name=m1+m2+... (default: ENSEMBLES)")
    p.add_argument("--cache", default=None, help="folder for each member's score maps (reused across runs)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    out = check_out_dir(args.out, record="ensemble.json")
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    cache = None if args.cache is None else Path(args.cache)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    ensembles = ENSEMBLES if args.ensembles is None else dict(e.split("=", 1) for e in args.ensembles)
    ensembles = {k: v.split("+") for k, v in ensembles.items()}
    members = list(MEMBERS if args.members is None else args.members)
    members += [m for ms in ensembles.values() for m in ms if m not in members]
    if REFERENCE not in members:
        members.insert(0, REFERENCE)
    for m in members:
        parse_member(m)
    seg = DiffSegmenter.from_pretrained(args.model)
    base = seg.config
    scenes = scenes_of("val", args.val)
    report: dict = {
        "command": "python -m research.shapes.ensemble " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": f"val scenes 0..{args.val - 1}, present classes given, tau swept {TAUS[0]}..{TAUS[-1]}",
        "shipped": {
            "timestep": base.timestep,
            "seed": base.seed,
            "tau": base.tau,
            "readout": base.readout,
            "flip": base.flip,
        },
        "threads": args.threads,
        "reference": REFERENCE,
        "ensembles_members": ensembles,
        "cpu_seconds_per_scene": {},
        "members": {},
        "ensembles": {},
    }
    path = out / "ensemble.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    maps: dict[str, list[np.ndarray]] = {}
    for m in members:
        maps[m], report["cpu_seconds_per_scene"][m] = member_scores(seg, base, m, scenes, cache, model=str(args.model))
        report["members"][m] = evaluate(scenes, maps[m], base.tau)
        print(
            "member",
            m,
            report["members"][m]["best"]["tau"],
            round(report["members"][m]["best"]["mIoU"], 4),
            flush=True,
        )
        save()
    ref = report["members"][REFERENCE]["best"]["tau"]
    ref_conf = scene_confusions(scenes, results_of(scenes, maps[REFERENCE], ref), ref)
    for name, ms in {**{m: [m] for m in members}, **ensembles}.items():
        mean = [np.mean([maps[m][i] for m in ms], axis=0, dtype=np.float32) for i in range(len(scenes))]
        rec = report["members"][name] if len(ms) == 1 and name == ms[0] else evaluate(scenes, mean, base.tau)
        tau = rec["best"]["tau"]
        rec["vs_reference"] = paired_bootstrap(scene_confusions(scenes, results_of(scenes, mean, tau), tau), ref_conf)
        rec["vs_reference"]["label_change"] = label_change(maps[REFERENCE], mean, base.tau)
        if name not in report["members"]:
            report["ensembles"][name] = rec
        print(
            name,
            tau,
            round(rec["best"]["mIoU"], 4),
            {k: round(v, 4) for k, v in rec["vs_reference"].items()},
            flush=True,
        )
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
