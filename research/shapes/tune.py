"""Choose a shapes model's segmenter settings on validation scenes, then measure them once on held-out test scenes.

The paper's settings (per-class prompts "a photograph of {c}", t = 100, one self-attention step) were chosen for
Stable Diffusion; a model trained on another caption distribution may prefer others (issue 7). This script searches
a small grid on the **val** split only, writes the winner with its provenance into a new ``segmenter_config.json``
(the model folder's one with the chosen settings in place), and reports the **test** split with those fixed settings
(never tuned on it), beside the trivial baselines and every prompt mode at its own best validation settings.

Both files go to ``--out``, never into the model folder; to ship the choice, a maintainer copies
``OUT/segmenter_config.json`` into ``src/diffsegmenter/models/shapes/`` and ``OUT/tuning.json`` into
``research/shapes/runs/shipped/``. Run from the repository root:

    python -m research.shapes.tune --model shapes --out runs/shapes-tune --val 150 --test 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsegmenter.cli.parser import positive_int
from diffsegmenter.loading import resolve_model
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import (
    SHAPES_BEHAVIOUR,
    evaluate_segmenter,
    scenes_of,
    score_predictions,
    trivial_baselines,
    world_labels,
)
from .world import CLASS_NAMES

#: Prompt modes compared (SegmenterConfig fields). "per_class_paper" is the paper's template verbatim.
PROMPT_MODES: dict[str, dict[str, Any]] = {
    "single": {"prompt_mode": "single", "template": "{}", "class_phrase": "a {}", "joiner": " and "},
    "per_class": {"prompt_mode": "per_class", "template": "{}", "class_phrase": "a {}"},
    "per_class_paper": {"prompt_mode": "per_class", "template": "a photograph of {}", "class_phrase": "{}"},
}
TIMESTEPS = (50, 100, 200)
#: Self-attention completion variants: (self_attention_factor, self_attention_steps). "finest" is the paper's.
COMPLETIONS: dict[str, tuple[int | None, int]] = {"finest": (None, 1), "factor2": (2, 1), "none": (None, 0)}
#: Fusion weights by downsampling factor. "coarse_x2" doubles the two coarsest levels of SD at 512² (8 and 4); on the
#: shapes model (factors 1, 2, 4) it doubles its coarsest, 8x8 level, the one whose class maps bind best.
LEVEL_WEIGHTS = {
    "paper": {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1},
    "uniform": {8: 1.0, 4: 1.0, 2: 1.0, 1: 1.0},
    "coarse_x2": {8: 2.0, 4: 2.0, 2: 1.0, 1: 1.0},
}
#: Class-token emphasis weights (Compel's ``++`` = 1.21, and none); the grid runs at the first, then the best
#: ``EMPHASIS_TOP`` settings are re-run at the others.
EMPHASIS = (1.21, 1.0)
EMPHASIS_TOP = 6
#: Separate class-decision weights (``SegmenterConfig.class_level_weights``, not in the paper); "none" is the paper's
#: single decision. The others are tried on the ``EMPHASIS_TOP`` best settings of the first two passes.
CLASS_WEIGHTS: dict[str, dict[int, float] | None] = {
    "none": None,
    "coarse": {8: 1.0, 4: 1.0, 2: 0.0, 1: 0.0},
    "paper": {8: 0.3, 4: 0.5, 2: 0.1, 1: 0.1},
}
#: Input side lengths tried for the pass that decides *where* while a second pass at the model's native resolution
#: decides *which* (``SegmenterConfig.class_resolution``, not in the paper), on the ``CLASS_TOP`` best settings that
#: have a separate class decision.
WHERE_RESOLUTIONS = (96, 128, 160)
CLASS_TOP = 3
TAUS = tuple(round(x, 2) for x in np.arange(0.20, 0.81, 0.02))


def _predict(seg: DiffSegmenter, scenes, batch: int = 32) -> list[Any]:
    """Raw results (score maps kept) so that tau can be swept without rerunning the model."""
    out = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        out.extend(seg.segment([s.image for s in chunk], [s.classes for s in chunk]))
    return out


def _labels(results, tau: float) -> list[np.ndarray]:
    return [world_labels(res, res.relabel(tau)) for res in results]


def _best_tau(scenes, results) -> tuple[float, dict[str, Any]]:
    best = None
    class_scores = [(res.classes, res.scores) for res in results]
    for tau in TAUS:
        m = score_predictions(scenes, _labels(results, tau), class_scores)
        if best is None or m["mIoU"] > best[1]["mIoU"]:
            best = (tau, m)
    return best


def _weights_json(weights: dict[int, float] | None) -> dict[str, float] | None:
    return None if weights is None else {str(k): v for k, v in weights.items()}


def _fields(
    mode: str,
    t: int,
    completion: str,
    wname: str,
    emphasis: float,
    cname: str = "none",
    resolution: int | None = None,
    class_resolution: int | None = None,
) -> dict[str, Any]:
    """SegmenterConfig fields (JSON-ready) of one grid point; ``SegmenterConfig`` turns the keys back into ints."""
    factor, steps = COMPLETIONS[completion]
    return {
        **SHAPES_BEHAVIOUR,
        "resolution": resolution,
        "class_resolution": class_resolution,
        **PROMPT_MODES[mode],
        "timestep": t,
        "self_attention_steps": steps,
        "self_attention_factor": factor,
        "level_weights": _weights_json(LEVEL_WEIGHTS[wname]),
        "emphasis": emphasis,
        "class_level_weights": _weights_json(CLASS_WEIGHTS[cname]),
    }


def search(seg: DiffSegmenter, val, log=print) -> list[dict[str, Any]]:
    """Evaluate the grid on validation scenes; returns one record per setting, best first.

    Prompt mode x timestep x completion x level weights at the first ``EMPHASIS``; then the ``EMPHASIS_TOP`` best
    of those again at each other emphasis weight; then the ``EMPHASIS_TOP`` best so far with each separate
    class-decision weighting of ``CLASS_WEIGHTS``; then the ``CLASS_TOP`` best with a separate class decision again,
    with the *where* pass at each of ``WHERE_RESOLUTIONS`` and the class pass at the model's native resolution.
    """
    base = seg.config
    native = seg.native_resolution
    records: list[dict[str, Any]] = []
    grid = [
        (*g, EMPHASIS[0], "none", None, None)
        for g in itertools.product(PROMPT_MODES, TIMESTEPS, COMPLETIONS, LEVEL_WEIGHTS)
    ]

    def run(items) -> None:
        for mode, t, completion, wname, emphasis, cname, res, class_res in items:
            t0 = time.time()
            seg.config = base.replace(**_fields(mode, t, completion, wname, emphasis, cname, res, class_res))
            tau, m = _best_tau(val, _predict(seg, val))
            records.append(
                {
                    "mode": mode,
                    "timestep": t,
                    "completion": completion,
                    "level_weights": wname,
                    "emphasis": emphasis,
                    "class_weights": cname,
                    "resolution": res,
                    "class_resolution": class_res,
                    "tau": tau,
                    "val": {k: m[k] for k in ("mIoU", "class_acc_fg", "class_acc_given_fg", "fg_iou")},
                }
            )
            log(
                f"[{len(records)}] {mode:15s} t={t:3d} completion={completion:7s} w={wname:9s} emph={emphasis:.2f} "
                f"class_w={cname:6s} res={res or native}/{class_res or res or native} "
                f"tau={tau:.2f} val mIoU={m['mIoU']:.3f} cls_acc={m['class_acc_fg']:.3f} "
                f"cls|fg={m['class_acc_given_fg']:.3f} fg_iou={m['fg_iou']:.3f} ({time.time() - t0:.1f}s)",
                flush=True,
            )

    def key(r: dict[str, Any]) -> tuple:
        return (r["mode"], r["timestep"], r["completion"], r["level_weights"])

    run(grid)
    top = sorted(records, key=lambda r: -r["val"]["mIoU"])[:EMPHASIS_TOP]
    run((*key(r), e, "none", None, None) for e in EMPHASIS[1:] for r in top)
    top = sorted(records, key=lambda r: -r["val"]["mIoU"])[:EMPHASIS_TOP]
    run((*key(r), r["emphasis"], c, None, None) for c in list(CLASS_WEIGHTS)[1:] for r in top)
    top = sorted((r for r in records if r["class_weights"] != "none"), key=lambda r: -r["val"]["mIoU"])[:CLASS_TOP]
    run((*key(r), r["emphasis"], r["class_weights"], res, native) for res in WHERE_RESOLUTIONS for r in top)
    seg.config = base
    return sorted(records, key=lambda r: -r["val"]["mIoU"])


def config_of(rec: dict[str, Any]) -> dict[str, Any]:
    """SegmenterConfig fields of a search record (JSON-ready), its tau included."""
    point = (rec["mode"], rec["timestep"], rec["completion"], rec["level_weights"])
    extra = (rec.get("class_weights", "none"), rec.get("resolution"), rec.get("class_resolution"))
    return {**_fields(*point, rec.get("emphasis", EMPHASIS[0]), *extra), "tau": rec["tau"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", required=True, help="shapes model folder (diffusers layout), or 'shapes' (the shipped one)"
    )
    p.add_argument(
        "--out",
        default="runs/shapes-tune",
        help="new folder for tuning.json and segmenter_config.json (not inside the installed package)",
    )
    p.add_argument("--val", type=positive_int, default=150, help="validation scenes for the search")
    p.add_argument("--test", type=int, default=300, help="held-out test scenes for the report")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--report", default=None, help="write the JSON report here (default: OUT/tuning.json)")
    p.add_argument("--no-write", action="store_true", help="do not write OUT/segmenter_config.json")
    args = p.parse_args(argv)
    writes = ([] if args.report else ["tuning.json"]) + ([] if args.no_write else ["segmenter_config.json"])
    out_dir = check_out_dir(args.out, record=writes)
    report_path = check_out_dir(args.report, "--report") if args.report else out_dir / "tuning.json"
    if args.report and report_path.exists():
        raise ValueError(f"--report {report_path} exists, an earlier run's record: give a new file")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = Path(resolve_model(args.model))
    cfg_path = folder / "segmenter_config.json"  # read only: the new one goes to OUT
    seg = DiffSegmenter.from_pretrained(folder, device=args.device, config=None)
    from diffsegmenter.config import SegmenterConfig

    # search from the library defaults with the shapes behaviour, not from an earlier choice
    seg.config = SegmenterConfig(**SHAPES_BEHAVIOUR)
    val, test = scenes_of("val", args.val), scenes_of("test", args.test)
    records = search(seg, val)
    best = records[0]
    report: dict[str, Any] = {"val_scenes": args.val, "test_scenes": args.test, "search": records}
    measured: dict[str, dict[str, Any]] = {}

    def on_test(settings: dict[str, Any]) -> dict[str, Any]:
        """Test metrics of one setting, run once however many report entries reach it."""
        key = json.dumps(settings, sort_keys=True, default=float)
        if key not in measured:
            seg.config = SegmenterConfig().replace(**settings)
            measured[key] = evaluate_segmenter(seg, test)
        return measured[key]

    def best_on_test(keep) -> dict[str, Any]:
        """The best val record that ``keep`` accepts: its settings and their test metrics."""
        settings = config_of(next(r for r in records if keep(r)))
        return {"settings": settings, **on_test(settings)}

    # the chosen settings, measured once on test
    chosen = config_of(best)
    report["chosen"] = chosen
    report["test"] = on_test(chosen)
    # each prompt mode at its own best validation settings, on test (for the model card)
    report["test_by_mode"] = {mode: best_on_test(lambda r, m=mode: r["mode"] == m) for mode in PROMPT_MODES}
    # the best setting that keeps the paper's single decision (no class_level_weights), on test
    report["test_best_single_decision"] = best_on_test(lambda r: r.get("class_weights", "none") == "none")
    # the best setting with one UNet pass (no class_resolution), on test
    report["test_best_one_pass"] = best_on_test(lambda r: r.get("class_resolution") is None)
    paper = SegmenterConfig().to_dict()  # the released script's defaults, verbatim
    report["test_paper_defaults"] = {"settings": paper, **on_test(paper)}
    report["baselines_test"] = trivial_baselines(test)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    if not args.no_write:
        existing = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
        keep = {k: v for k, v in existing.items() if k.startswith("_") and k != "_provenance"}
        cfg = {
            **keep,
            **chosen,
            "_classes": list(CLASS_NAMES[1:]),
            "_provenance": f"chosen by research.shapes.tune on {args.val} val scenes (val mIoU "
            f"{best['val']['mIoU']:.3f}); test split never used for selection",
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "segmenter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    t = report["test"]
    print(f"chosen {chosen}")
    print(f"wrote {report_path}" + ("" if args.no_write else f" and {out_dir / 'segmenter_config.json'}"))
    print(
        f"test ({args.test} scenes): mIoU={t['mIoU']:.3f} class_acc_fg={t['class_acc_fg']:.3f} "
        f"(chance {t['chance_class_acc']:.3f}) class_acc_given_fg={t['class_acc_given_fg']:.3f} fg_iou={t['fg_iou']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
