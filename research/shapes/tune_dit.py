"""Choose a joint-attention (SD3-class) shapes model's segmenter settings on val, then measure them once on test.

The transformer counterpart of :mod:`.tune` (whose grid is a UNet's: levels, level weights, completion factor). A
transformer has blocks instead of levels, so the grid here is, with the paper's read-out (the family default) and
the UNet model's prompts ("a circle and a square", one prompt, emphasis 1.0) and shapes behaviour:

- timestep: ``TIMESTEPS``;
- the blocks whose image->text attention is averaged: all, the best block alone and the best three, ranked by the
  binding probe (``quality.binding_probe``) on the same val scenes;
- completion: none, or one step with the self-attention of the middle block or of the best block;
- tau swept on the stored score maps of each setting.

Then, at the best grid setting, larger inputs (:func:`input_sizes`: 128² or 160² for one pass, or for the *where*
pass beside a native 64² *which* pass), and at the best of those the other read-outs (``--readouts``;
``single-block`` reads the block the val probe ranks first), tau swept on val for each. The best val mIoU over all
of these (present classes given) wins; it goes into a new ``segmenter_config.json`` in ``--out`` (the folder's own
plus the choice). The test split is then read
once per read-out, each at its val-chosen setting; the headline is the val choice's. From the repository root::

    python -m research.shapes.tune_dit --model runs/mmdit/model --out runs/mmdit-tune --val 150 --test 300
"""

from __future__ import annotations

import argparse
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
from .quality import SHAPES_BEHAVIOUR, binding_probe, evaluate_segmenter, scenes_of, score_predictions, world_labels
from .world import CLASS_NAMES

TIMESTEPS = (50, 100, 200, 400)
SIZES = (128, 160)
TAUS = tuple(round(float(x), 2) for x in np.arange(0.10, 0.81, 0.02))
#: The single-block read-out thresholds raw image->text probabilities, which share one softmax with every other key
#: (333 text tokens and the image tokens on SD3), so its tau lies far below the min-max-normalised maps': a
#: geometric sweep.
RAW_TAUS = tuple(float(f"{x:.3g}") for x in np.geomspace(1e-4, 0.5, 38))
PROMPTS: dict[str, Any] = {
    "prompt_mode": "single",
    "template": "{}",
    "class_phrase": "a {}",
    "joiner": " and ",
    "emphasis": 1.0,
}


def grid(num_blocks: int, ranked: list[int], levels: dict[str, float]) -> list[dict[str, Any]]:
    """The settings tried: SegmenterConfig fields (JSON-ready) without tau.

    Args:
        num_blocks (`int`): the transformer's blocks.
        ranked (`list[int]`): block indices, best binding first.
        levels (`dict[str, float]`): the backbone's one level (``default_level_weights``, JSON keys).
    """
    block_sets = {"all": list(range(num_blocks)), "best1": ranked[:1], "best3": sorted(ranked[:3])}
    completions = {"none": (0, [num_blocks // 2]), "middle": (1, [num_blocks // 2]), "best": (1, ranked[:1])}
    out = []
    for t in TIMESTEPS:
        for bname, blocks in block_sets.items():
            for cname, (steps, self_blocks) in completions.items():
                out.append(
                    {
                        **SHAPES_BEHAVIOUR,
                        **PROMPTS,
                        "timestep": t,
                        "level_weights": dict(levels),
                        "attention_blocks": blocks,
                        "self_attention_blocks": self_blocks,
                        "self_attention_steps": steps,
                        "_name": f"t={t} blocks={bname} completion={cname}",
                    }
                )
    return out


def input_sizes(levels: dict[str, float]) -> list[tuple[str, dict[str, Any]]]:
    """The input sizes tried at the best grid setting: the image enlarged to each of ``SIZES`` for one pass, or for
    the pass that decides *where* while a second pass at the native 64² decides *which* class (the shipped UNet
    model's split, ``class_level_weights`` and ``class_resolution``).

    Args:
        levels (`dict[str, float]`): the backbone's one level, which the *which* pass reads too.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for size in SIZES:
        out.append((f"input={size}", {"resolution": size}))
        split = {"resolution": size, "class_level_weights": dict(levels), "class_resolution": 64}
        out.append((f"where={size} which=64", split))
    return out


def _segment(seg: DiffSegmenter, scenes, batch: int = 32) -> list[Any]:
    out = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        out.extend(seg.segment([s.image for s in chunk], [s.classes for s in chunk]))
    return out


def best_tau(scenes, results, taus: tuple[float, ...] = TAUS) -> tuple[float, dict[str, Any]]:
    """The tau (of ``taus``) of highest mIoU on stored score maps, and its metrics."""
    class_scores = [(r.classes, r.scores) for r in results]
    best = None
    for tau in taus:
        m = score_predictions(scenes, [world_labels(r, r.relabel(tau)) for r in results], class_scores)
        if best is None or m["mIoU"] > best[1]["mIoU"]:
            best = (tau, m)
    assert best is not None
    return best


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m research.shapes.tune_dit`` argument parser."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a joint-attention shapes model folder (SD3 layout)")
    p.add_argument("--out", default="runs/mmdit-tune", help="new folder for tuning.json and segmenter_config.json")
    p.add_argument("--val", type=positive_int, default=150)
    p.add_argument("--test", type=int, default=300, help="0: choose on val only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--readouts",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        default=["paper", "rescaled", "weighted", "single-block"],
        help="read-outs compared at the best grid setting (comma-separated; default paper,rescaled,weighted,"
        "single-block)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = check_out_dir(args.out, record=["tuning.json", "segmenter_config.json"])
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(resolve_model(args.model))
    seg = DiffSegmenter.from_pretrained(folder, device=args.device)
    if not hasattr(seg.backbone, "num_blocks"):
        raise ValueError(f"{folder} is not a transformer model; tune a UNet model with research.shapes.tune")
    n = seg.backbone.num_blocks()
    val = scenes_of("val", args.val)
    t0 = time.time()
    probe = binding_probe(seg, val)
    ranked = sorted(range(n), key=lambda i: -probe[f"block_{i}"])
    records = []
    base = seg.config
    keep = ("mIoU", "class_acc_fg", "class_acc_given_fg", "fg_iou")

    def trial(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        seg.config = base.replace(**fields)
        tau, m = best_tau(val, _segment(seg, val), RAW_TAUS if fields.get("readout") == "single-block" else TAUS)
        print(f"[{name}] tau={tau:.3g} val mIoU={m['mIoU']:.3f} fg_iou={m['fg_iou']:.3f}", flush=True)
        return {"name": name, "settings": {**fields, "tau": tau}, "val": {k: m[k] for k in keep}}

    levels = {str(f): w for f, w in seg.backbone.default_level_weights.items()}
    for fields in grid(n, ranked, levels):
        records.append(trial(fields.pop("_name"), fields))
    records.sort(key=lambda r: -r["val"]["mIoU"])

    def without_tau(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record["settings"].items() if k != "tau"}

    sizes = [
        trial(f"{records[0]['name']} {label}", {**without_tau(records[0]), **fields})
        for label, fields in input_sizes(levels)
    ]
    best = max([records[0], *sizes], key=lambda r: r["val"]["mIoU"])
    by_readout = {"paper": best}
    for readout in [r for r in args.readouts if r != "paper"]:
        fields = {**without_tau(best), "readout": readout}
        if readout == "single-block":  # it makes its own class decision (one block's raw probabilities)
            fields["readout_block"] = ranked[0]
            fields.pop("class_level_weights", None)
            fields.pop("class_resolution", None)
        by_readout[readout] = trial(f"{best['name']} readout={readout}", fields)
    chosen = max(by_readout.values(), key=lambda r: r["val"]["mIoU"])
    report: dict[str, Any] = {
        "model": str(folder),
        "val_scenes": args.val,
        "binding_probe_val": probe,
        "search": records,
        "input_sizes": sizes,
        "readouts": by_readout,
        "chosen": chosen,
        "search_seconds": time.time() - t0,
    }
    if args.test > 0:
        test = scenes_of("test", args.test)
        report["test_scenes"] = args.test
        report["test_by_readout"] = {}
        for readout, record in by_readout.items():
            seg.config = base.replace(**record["settings"])
            report["test_by_readout"][readout] = evaluate_segmenter(seg, test)
        report["test"] = report["test_by_readout"][chosen["settings"].get("readout", "paper")]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tuning.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    cfg_path = folder / "segmenter_config.json"
    existing = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg = {
        **{k: v for k, v in existing.items() if k.startswith("_") and k != "_provenance"},
        **chosen["settings"],
        "_classes": list(CLASS_NAMES[1:]),
        "_provenance": f"chosen by research.shapes.tune_dit on {args.val} val scenes (val mIoU "
        f"{chosen['val']['mIoU']:.3f}); test split never used for selection",
    }
    (out_dir / "segmenter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    print(f"chosen: {chosen['name']} tau={chosen['settings']['tau']} val mIoU={chosen['val']['mIoU']:.3f}")
    if "test" in report:
        t = report["test"]
        print(f"test ({args.test} scenes): mIoU={t['mIoU']:.3f} class_acc_given_fg={t['class_acc_given_fg']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
