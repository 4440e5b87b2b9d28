"""Choose the diffusion filter's thresholds on validation scenes; measure presence and open-vocabulary mIoU on test.

Presence is judged per (image, class) pair over the 4 shape classes. The quantile and threshold that maximise F1
on the **val** split go into a new ``segmenter_config.json`` (the model folder's one plus the key
``_diffusion_filter``); the **test** split is then measured once with them: precision, recall, F1, exact-set match,
and the segmentation mIoU with the whole vocabulary given and the filter on (open vocabulary), beside the mIoU with
the present classes given (oracle).

Both ``filter_tuning.json`` and ``segmenter_config.json`` go to ``--out``, never into the model folder; to ship them,
a maintainer copies ``OUT/segmenter_config.json`` into ``src/diffsegmenter/models/shapes/`` and
``OUT/filter_tuning.json`` into ``research/shapes/runs/shipped/``. The filter is tuned with the segmenter settings
the model folder holds, so run ``tune`` (and copy its choice in) first. From the repository root:

    python -m research.shapes.filter_tune --model shapes --out runs/shapes-filter-tune --val 150 --test 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsegmenter.filters.diffusion import DiffusionFilter
from diffsegmenter.loading import resolve_model
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import evaluate_segmenter, scenes_of, score_predictions, world_labels
from .world import CLASS_NAMES

VOCAB = list(CLASS_NAMES[1:])
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def _reductions(flt: DiffusionFilter, scenes) -> np.ndarray:
    """(n_scenes, 4, pixels) error-reduction maps."""
    return np.stack([flt.reduction_maps(s.image, VOCAB).flatten(1).numpy() for s in scenes])


def _presence(scenes) -> np.ndarray:
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
    p.add_argument("--val", type=int, default=150)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-write", action="store_true", help="do not write OUT/segmenter_config.json")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="input side length of the filter's passes (default: the model's native resolution)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = check_out_dir(args.out)
    folder = Path(resolve_model(args.model))
    seg = DiffSegmenter.from_pretrained(folder)
    flt = DiffusionFilter(seg, resolution=args.resolution or seg.native_resolution)
    val, test = scenes_of("val", args.val), scenes_of("test", args.test)
    rv, rt = _reductions(flt, val), _reductions(flt, test)
    tv, tt = _presence(val), _presence(test)
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
    preds = []
    for s, k in zip(test, kept):
        classes = [c for c, keep in zip(VOCAB, k) if keep]
        preds.append(world_labels(seg.segment(s.image, classes=classes)))
    report["test_open_vocabulary"] = score_predictions(test, preds)
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
