"""Measure the read-outs (``SegmenterConfig.readout``, issue 16) on the shapes world.

Each read-out runs on top of the shipped settings (everything but ``readout`` and ``tau`` as shipped), with each
scene's present classes given. Per read-out, tau is chosen on **val** scenes (one model run, tau swept on the stored
score maps); the chosen setting is then run once on **test** scenes. The alternatives to the choices the papers
leave open (per-layer rescaling, softmax head weights, uniform layer weights) are measured on val only. The shipped
settings (paper read-out, shipped tau) are reported beside them. Run from the repository root:

    python -m research.shapes.readouts --out runs/readouts --val 20 --test 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from diffsegmenter import readouts
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import scenes_of, score_predictions, world_labels

TAUS = tuple(round(float(x), 3) for x in np.arange(0.04, 0.905, 0.02))
#: name -> (readout field, factory swapped into readouts.FACTORIES for the run, or None for the library's own)
VARIANTS = {
    "paper": ("paper", None),
    "rescaled": ("rescaled", None),
    "rescaled/per-layer": ("rescaled", lambda block: readouts.RescaledReadout(per_layer=True)),
    "weighted": ("weighted", None),
    "weighted/softmax-heads": ("weighted", lambda block: readouts.WeightedReadout(head_mode="softmax")),
    "weighted/uniform-layers": ("weighted", lambda block: readouts.WeightedReadout(layer_mode="uniform")),
}
ON_TEST = ("paper", "rescaled", "weighted")


def _run(seg, scenes, batch=20):
    out = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        out.extend(seg.segment([s.image for s in chunk], [s.classes for s in chunk]))
    return out


def _metrics(scenes, results, tau):
    labels = [world_labels(r, r.relabel(tau)) for r in results]
    m = score_predictions(scenes, labels, [(r.classes, r.scores) for r in results])
    return {k: m[k] for k in ("mIoU", "class_acc_fg", "class_acc_given_fg", "fg_iou")}


def _with_variant(seg, base, name):
    field, factory = VARIANTS[name]
    original = readouts.FACTORIES[field]
    if factory is not None:
        readouts.FACTORIES[field] = factory
    seg.config = base.replace(readout=field)
    return field, original


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--out", required=True)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument(
        "--chosen",
        nargs="*",
        default=None,
        metavar="NAME=TAU",
        help="skip the val runs: the taus an earlier run chose on val (its log), e.g. rescaled=0.5 weighted=0.8",
    )
    args = p.parse_args(argv)
    out = check_out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seg = DiffSegmenter.from_pretrained(args.model)
    base = seg.config
    val, test = scenes_of("val", args.val), scenes_of("test", args.test)
    report = {"val_scenes": args.val, "test_scenes": args.test, "shipped_tau": base.tau, "val": {}, "test": {}}
    chosen = dict(item.split("=") for item in args.chosen) if args.chosen is not None else None
    for name in args.variants if chosen is None else []:
        field, original = _with_variant(seg, base, name)
        try:
            t0 = time.time()
            results = _run(seg, val)
            secs = time.time() - t0
        finally:
            readouts.FACTORIES[field] = original
        best = max(TAUS, key=lambda t: _metrics(val, results, t)["mIoU"])
        report["val"][name] = {"tau": best, "seconds": secs, **_metrics(val, results, best)}
        if name == "paper":
            report["val"]["paper@shipped_tau"] = _metrics(val, results, base.tau)
        print(name, report["val"][name], flush=True)
    for name in [n for n in ON_TEST if n in args.variants]:
        tau = base.tau if name == "paper" else (float(chosen[name]) if chosen else report["val"][name]["tau"])
        seg.config = base.replace(readout=name, tau=tau)
        t0 = time.time()
        results = _run(seg, test)
        report["test"][name] = {"tau": tau, "seconds": time.time() - t0, **_metrics(test, results, tau)}
        print("test", name, report["test"][name], flush=True)
        (out / "readouts.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    seg.config = base
    (out / "readouts.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
