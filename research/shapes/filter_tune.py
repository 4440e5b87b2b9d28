"""Choose the diffusion filter's settings on validation scenes; measure presence and open-vocabulary mIoU on test.

Presence is judged per (image, class) pair over the 4 shape classes. With ``--scoring quantile`` (the first filter)
the quantile and threshold that maximise F1 on the **val** split are chosen; with ``--scoring regions`` (issue 17:
one vote per foreground region, :mod:`diffsegmenter.filters.diffusion`) the timesteps, noise draws, smallest region
and margin threshold. The choice goes into a new ``segmenter_config.json`` (the model folder's one plus the key
``_diffusion_filter``); the **test** split is then measured once with it, through the library's filter: precision,
recall, F1, exact-set match, and the segmentation mIoU with the whole vocabulary given and the filter on (open
vocabulary), beside the mIoU with the present classes given (oracle).

The regions search reads each val scene once: the per-(timestep, draw) error maps of ``REGION_TIMESTEPS`` x
``REGION_DRAWS`` and the foreground (``DiffusionFilter.error_maps`` / ``foreground``); every candidate's scores are
computed from them exactly as the filter computes them (each draw's noise is keyed by its timestep and index, so a
subset sees the same noises), which ``--check`` verifies on a few val scenes.

Both ``filter_tuning.json`` and ``segmenter_config.json`` go to ``--out``, never into the model folder; to ship them,
a maintainer copies ``OUT/segmenter_config.json`` into ``src/diffsegmenter/models/shapes/`` and
``OUT/filter_tuning.json`` into ``research/shapes/runs/shipped/``. The filter is tuned with the segmenter settings
the model folder holds, so run ``tune`` (and copy its choice in) first. From the repository root:

    python -m research.shapes.filter_tune --model shapes --out runs/shapes-filter-tune --val 150 --test 300
    python -m research.shapes.filter_tune --model shapes --scoring regions --out runs/filter-regions --val 150 \
        --test 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsegmenter.cli.parser import positive_int
from diffsegmenter.filters.diffusion import DiffusionFilter, reductions_from_errors, region_margins
from diffsegmenter.loading import resolve_model
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import evaluate_segmenter, scenes_of, score_predictions, world_labels
from .world import CLASS_NAMES

VOCAB = list(CLASS_NAMES[1:])
QUANTILES = (0.5, 0.9, 0.95, 0.99)

#: The regions search: every candidate uses a subset of these timesteps and the first 1 or 2 draws of each.
REGION_TIMESTEPS = (300, 400, 500, 600, 700, 800, 900)
REGION_DRAWS = 2
REGION_TIMESTEP_SETS: tuple[tuple[int, ...], ...] = (
    (800,),
    (600, 800),
    (800, 900),
    (400, 600, 800),
    (600, 700, 800),
    (700, 800, 900),
    (500, 600, 700, 800),
    (600, 700, 800, 900),
    (300, 500, 700, 900),
    (400, 500, 600, 700, 800),
    (500, 600, 700, 800, 900),
    (300, 400, 500, 600, 700, 800),
    (300, 400, 500, 600, 700, 800, 900),
)
MIN_REGIONS = (0.002, 0.004, 0.008, 0.016)


def _reductions(flt: DiffusionFilter, scenes) -> np.ndarray:
    """(n_scenes, 4, pixels) error-reduction maps."""
    return np.stack([flt.reduction_maps(s.image, VOCAB).flatten(1).numpy() for s in scenes])


def presence_truth(scenes) -> np.ndarray:
    """(N, 4) bool: whether each ``VOCAB`` class is present in each scene."""
    return np.array([[c in s.classes for c in VOCAB] for s in scenes])


def _decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    kept = scores >= threshold
    none = ~kept.any(axis=1)
    kept[none, scores[none].argmax(axis=1)] = True  # the filter keeps its best class when none passes
    return kept


def presence_metrics(kept: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 over (image, class) pairs, and the fraction of images whose set is exactly right."""
    tp = int((kept & truth).sum())
    precision = tp / max(1, int(kept.sum()))
    recall = tp / max(1, int(truth.sum()))
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "exact_set": float((kept == truth).all(1).mean())}


def evaluate_whole_vocabulary(seg: DiffSegmenter, scenes) -> dict[str, float]:
    """mIoU when every vocabulary class is given for every scene (no filter)."""
    preds = []
    for start in range(0, len(scenes), 16):
        chunk = scenes[start : start + 16]
        preds.extend(world_labels(res) for res in seg.segment([s.image for s in chunk], classes=VOCAB))
    return score_predictions(scenes, preds)


def region_features(flt: DiffusionFilter, scenes) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per scene, the error maps of ``REGION_TIMESTEPS`` x ``REGION_DRAWS`` and the foreground."""
    errors, fgs = [], []
    for s in scenes:
        errors.append(flt.error_maps(s.image, VOCAB, REGION_TIMESTEPS, REGION_DRAWS))
        fgs.append(flt.foreground(s.image, VOCAB))
    return errors, fgs


def region_scores(errors, fgs, timesteps, draws: int, min_region: float) -> np.ndarray:
    """(n_scenes, 4) margins of one candidate, from the features (what the filter computes with these settings)."""
    idx = [REGION_TIMESTEPS.index(t) for t in timesteps]
    out = [
        region_margins(reductions_from_errors(e[idx, :draws]), fg, min_region).numpy() for e, fg in zip(errors, fgs)
    ]
    return np.stack(out)


def search_regions(errors, fgs, truth: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every candidate's best val F1; the winner (highest F1, then fewest UNet samples, then lowest threshold)."""
    table = []
    for ts in REGION_TIMESTEP_SETS:
        for draws in range(1, REGION_DRAWS + 1):
            for min_region in MIN_REGIONS:
                sc = region_scores(errors, fgs, ts, draws, min_region)
                finite = sc[np.isfinite(sc) & (sc >= 0)]
                thresholds = np.unique(
                    np.round(np.concatenate([[0.0], np.quantile(finite, np.linspace(0, 0.5, 21))]), 4)
                )
                best = max(
                    ((presence_metrics(_decide(sc, float(t)), truth)["f1"], -float(t)) for t in thresholds),
                )
                table.append(
                    {
                        "timesteps": list(ts),
                        "noise_draws": draws,
                        "min_region": min_region,
                        "threshold": -best[1],
                        "val_f1": best[0],
                        "unet_samples_per_class": len(ts) * draws,
                    }
                )
    winner = max(table, key=lambda r: (round(r["val_f1"], 6), -r["unet_samples_per_class"], -r["threshold"]))
    return winner, table


def run_regions(args, seg: DiffSegmenter, folder: Path, out_dir: Path) -> int:
    """The ``--scoring regions`` search on val and the one test measurement."""
    import time

    res = args.resolution or seg.native_resolution
    probe = DiffusionFilter(seg, scoring="regions", resolution=res)
    val = scenes_of("val", args.val)
    t0 = time.perf_counter()
    errors, fgs = region_features(probe, val)
    feature_s = time.perf_counter() - t0
    tv = presence_truth(val)
    winner, table = search_regions(errors, fgs, tv)
    settings = {
        "scoring": "regions",
        "timesteps": winner["timesteps"],
        "noise_draws": winner["noise_draws"],
        "min_region": winner["min_region"],
        "threshold": winner["threshold"],
        "resolution": res,
    }
    flt = DiffusionFilter(seg, **{k: v for k, v in settings.items()})
    sv = region_scores(errors, fgs, settings["timesteps"], settings["noise_draws"], settings["min_region"])
    if args.check:  # the features give exactly the library's scores
        for s, row in zip(val[: args.check], sv):
            lib = np.array(list(flt.scores(s.image, VOCAB).values()))
            if not np.allclose(lib, row, atol=1e-5):
                raise AssertionError(f"features and library disagree on val scene {s.seed}: {row} vs {lib}")
    kept_val = _decide(sv, settings["threshold"])
    report: dict[str, Any] = {
        "settings": settings,
        "chosen_on": f"val split, {args.val} scenes, max F1 (val F1 {winner['val_f1']:.3f}), ties to fewer samples",
        "val": presence_metrics(kept_val, tv),
        "val_open_vocabulary": open_vocabulary(seg, val, kept_val),
        "val_feature_seconds_per_scene": feature_s / max(1, len(val)),
        "search": table,
    }
    if args.test > 0:
        test = scenes_of("test", args.test)
        tt = presence_truth(test)
        t0 = time.perf_counter()
        kept = np.array([[c in flt.select(s.image, VOCAB).kept for c in VOCAB] for s in test])
        report["test_filter_seconds_per_scene"] = (time.perf_counter() - t0) / len(test)
        report["test"] = presence_metrics(kept, tt)
        report["test_open_vocabulary"] = open_vocabulary(seg, test, kept)
        report["test_keep_all"] = presence_metrics(np.ones_like(tt), tt)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "filter_tuning.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    if not args.no_write:
        cfg_path = folder / "segmenter_config.json"  # read only: the new one goes to OUT
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        cfg["_diffusion_filter"] = settings
        (out_dir / "segmenter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    v = report["val"]
    print(f"filter settings {settings} ({report['chosen_on']}); written to {out_dir}")
    print(f"val presence: precision={v['precision']:.3f} recall={v['recall']:.3f} f1={v['f1']:.3f}")
    if "test" in report:
        t, o = report["test"], report["test_open_vocabulary"]
        print(
            f"test presence: precision={t['precision']:.3f} recall={t['recall']:.3f} f1={t['f1']:.3f} "
            f"exact_set={t['exact_set']:.3f}; open-vocabulary mIoU {o['mIoU']:.3f}"
        )
    return 0


def open_vocabulary(seg: DiffSegmenter, scenes, kept: np.ndarray) -> dict[str, float]:
    """Scores of the segmentations with each scene's kept classes (``kept``: (N, 4) bool over ``VOCAB``)."""
    preds = []
    for s, k in zip(scenes, kept):
        preds.append(world_labels(seg.segment(s.image, classes=[c for c, keep in zip(VOCAB, k) if keep])))
    return score_predictions(scenes, preds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", required=True, help="shapes model folder (diffusers layout), or 'shapes' (the shipped one)"
    )
    p.add_argument(
        "--out",
        default="runs/shapes-filter-tune",
        help="new folder for filter_tuning.json and segmenter_config.json (not inside the installed package)",
    )
    p.add_argument("--val", type=positive_int, default=150)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="do not write OUT/segmenter_config.json")
    p.add_argument("--scoring", choices=("quantile", "regions"), default="quantile", help="which filter to tune")
    p.add_argument(
        "--check",
        type=int,
        default=3,
        help="regions: val scenes on which the library's scores must equal the search's",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="input side length of the filter's passes (default: the model's native resolution)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = check_out_dir(
        args.out, record=["filter_tuning.json"] + ([] if args.no_write else ["segmenter_config.json"])
    )
    folder = Path(resolve_model(args.model))
    seg = DiffSegmenter.from_pretrained(folder)
    if args.scoring == "regions":
        return run_regions(args, seg, folder, out_dir)
    flt = DiffusionFilter(seg, resolution=args.resolution or seg.native_resolution)
    val, test = scenes_of("val", args.val), scenes_of("test", args.test)
    rv, rt = _reductions(flt, val), _reductions(flt, test)
    tv, tt = presence_truth(val), presence_truth(test)
    best: tuple[float, float, float] | None = None
    for q in QUANTILES:
        sv = np.quantile(rv, q, axis=2)
        for thr in np.unique(np.round(sv, 4)):
            f1 = presence_metrics(_decide(sv, float(thr)), tv)["f1"]
            if best is None or f1 > best[0]:
                best = (f1, q, float(thr))
    assert best is not None
    _, q, thr = best
    st = np.quantile(rt, q, axis=2)
    kept = _decide(st, thr)
    report: dict[str, Any] = {
        "settings": {
            "timesteps": list(flt.timesteps),
            "noise_draws": flt.noise_draws,
            "quantile": q,
            "threshold": thr,
            "resolution": flt.resolution,
        },
        "chosen_on": f"val split, {args.val} scenes, max F1 (val F1 {best[0]:.3f})",
        "val": presence_metrics(_decide(np.quantile(rv, q, axis=2), thr), tv),
        "test": presence_metrics(kept, tt),
    }
    # open vocabulary: the filter's classes go to the segmenter; compare with the present classes given
    report["test_open_vocabulary"] = open_vocabulary(seg, test, kept)
    report["test_keep_all"] = presence_metrics(np.ones_like(tt), tt)  # the no-filter reference for presence
    report["test_whole_vocabulary_no_filter"] = evaluate_whole_vocabulary(seg, test)
    report["test_given_classes"] = evaluate_segmenter(seg, test)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "filter_tuning.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    if not args.no_write:
        cfg_path = folder / "segmenter_config.json"  # read only: the new one goes to OUT
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        cfg["_diffusion_filter"] = report["settings"]
        (out_dir / "segmenter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    t, o, g = report["test"], report["test_open_vocabulary"], report["test_given_classes"]
    print(f"filter settings {report['settings']} ({report['chosen_on']}); written to {out_dir}")
    print(
        f"test presence: precision={t['precision']:.3f} recall={t['recall']:.3f} f1={t['f1']:.3f} "
        f"exact_set={t['exact_set']:.3f}"
    )
    n = report["test_whole_vocabulary_no_filter"]
    print(
        f"test mIoU: open vocabulary (filter on) {o['mIoU']:.3f}, whole vocabulary without filter "
        f"{n['mIoU']:.3f}, present classes given {g['mIoU']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
