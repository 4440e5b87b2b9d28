"""Segment-then-edit on the shapes model (issue 21): replace one shape by another, then check with the segmenter.

For each ordered pair of the four shapes (12 pairs), the first ``--per-pair`` scenes of ``--split`` that hold the
source shape are edited with target = the source's class and prompt = ``"a <target shape>"`` (the training captions'
class phrase; ``--prompt-style instances`` repeats it once per instance of the source, "a square and a
square", as the training captions name two objects; ``instances-colour`` adds each instance's colour word,
``instances-full`` its position words too, ``colour`` is one phrase with the first instance's colour). Then each edited scene is segmented with its present classes, the source replaced by the target, and
no filter. An edit succeeds when the majority label (background included) inside the source's **true** mask is the
target. Also measured: the mean absolute change outside the dilated mask (0..255 units, paste-back on), and the
autoencoder's round-trip error on the same scenes (what an edit without paste-back would leave outside its mask).

Settings are chosen on ``val`` (``--sweep``) and reported once on ``test``::

    python -m research.shapes.edit_eval --split val --per-pair 10 --sweep --out runs/edit-val.json
    python -m research.shapes.edit_eval --split test --per-pair 25 --out runs/edit-test.json \\
        --grid docs/images/shapes_edit_grid.png

Runs on the CPU (2 threads); the scenes are segmented once, the edits run in batches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from diffsegmenter import DiffSegmenter
from diffsegmenter.cli.parser import positive_int
from diffsegmenter.editing import EditSettings, edit_segmented, vae_round_trip_error

from .captions import object_phrase
from .world import CLASS_NAMES, make_split_scene

SHAPES = list(CLASS_NAMES[1:])
PAIRS = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
STYLES = ("class", "colour", "instances", "instances-colour", "instances-full")


def scenes_with(split: str, shape: str, count: int, limit: int = 5000) -> list:
    """The first ``count`` scenes of ``split`` (in index order) that hold ``shape``."""
    out = []
    for i in range(limit):
        s = make_split_scene(split, i)
        if shape in s.classes:
            out.append(s)
            if len(out) == count:
                return out
    raise RuntimeError(f"only {len(out)} {split} scenes with a {shape} among the first {limit}")


def after_classes(scene, source: str, target: str) -> list[str]:
    """The scene's present classes with the source replaced by the target (no duplicates, world order)."""
    present = {c for c in scene.classes if c != source} | {target}
    return [c for c in SHAPES if c in present]


def strict_classes(scene, source: str, target: str) -> list[str]:
    """:func:`after_classes` with the source offered too (the strict check)."""
    present = set(after_classes(scene, source, target)) | {source}
    return [c for c in SHAPES if c in present]


def majority_label(res, mask: np.ndarray) -> str:
    """The most frequent label name (background included) of a segmentation inside a mask."""
    names = ["background", *res.classes]
    counts = np.bincount(res.labels[mask].ravel(), minlength=len(names))
    return names[int(counts.argmax())]


def prompt_for(scene, source: str, target: str, style: str) -> str:
    if style == "class":
        return f"a {target}"
    if style == "colour":  # keep the source object's colour (first instance)
        colour = next(o.colour for o in scene.objects if o.name == source)
        return f"a {colour} {target}"
    if style == "instances":  # one phrase per instance of the source, as the training captions name objects
        count = sum(o.name == source for o in scene.objects)
        return " and ".join([f"a {target}"] * count)
    if style in ("instances-colour", "instances-full"):  # per instance: its own colour (and position words)
        label = CLASS_NAMES.index(target)
        objs = sorted((o for o in scene.objects if o.name == source), key=lambda o: o.centre[0])
        position = style == "instances-full"
        return " and ".join(object_phrase(replace(o, label=label), position=position) for o in objs)
    raise ValueError(style)


def evaluate(seg, by_source, segs_by_source, settings: EditSettings, style: str, batch: int, seed: int) -> dict:
    """Edit every (pair, scene), segment the results, score them."""
    jobs = []  # (pair, scene, segmentation)
    for source, target in PAIRS:
        for scene, res in zip(by_source[source], segs_by_source[source]):
            jobs.append(((source, target), scene, res))
    edited = []
    for k in range(0, len(jobs), batch):
        chunk = jobs[k : k + batch]
        edited += edit_segmented(
            seg,
            [j[1].image for j in chunk],
            [j[2] for j in chunk],
            [j[0][0] for j in chunk],
            [prompt_for(j[1], j[0][0], j[0][1], style) for j in chunk],
            new_classes=[j[0][1] for j in chunk],
            settings=settings,
            seed=seed,
            progress=False,
        )
    after = seg.segment([e.image for e in edited], classes=[after_classes(j[1], *j[0]) for j in jobs], seed=seed)
    # the strict check: the source offered too, so an edit that kept the old shape cannot pass as the target
    strict = seg.segment([e.image for e in edited], classes=[strict_classes(j[1], *j[0]) for j in jobs], seed=seed)
    per_pair: dict[str, dict] = {}
    outside_sum = outside_n = 0.0
    rows = []
    for (pair, scene, _), e, res, res_strict in zip(jobs, edited, after, strict):
        source, target = pair
        true_mask = scene.labels == CLASS_NAMES.index(source)
        majority = majority_label(res, true_mask)
        ok = majority == target
        ok_strict = majority_label(res_strict, true_mask) == target
        diff = np.abs(e.image.astype(np.int16) - scene.image.astype(np.int16))
        out = ~e.region
        outside_sum += float(diff[out].sum())
        outside_n += float(out.sum()) * 3
        key = f"{source}->{target}"
        p = per_pair.setdefault(key, {"n": 0, "success": 0, "success_strict": 0})
        p["n"] += 1
        p["success"] += int(ok)
        p["success_strict"] += int(ok_strict)
        rows.append(
            {
                "pair": key,
                "seed": scene.seed,
                "majority": majority,
                "success": ok,
                "success_strict": ok_strict,
                "edited": e.edited,
                "edit_seed": e.seed,
                "candidate_scores": e.candidate_scores,
            }
        )
    for p in per_pair.values():
        p["rate"] = p["success"] / p["n"]
        p["rate_strict"] = p["success_strict"] / p["n"]
    n = len(rows)
    return {
        "settings": asdict(settings),
        "prompt_style": style,
        "rate": sum(r["success"] for r in rows) / n,
        "rate_strict": sum(r["success_strict"] for r in rows) / n,
        "n": n,
        "outside_mean_abs_change_255": outside_sum / max(1.0, outside_n),
        "not_edited": sum(not r["edited"] for r in rows),
        "per_pair": per_pair,
        "rows": rows,
        "_edited": edited,
        "_jobs": jobs,
    }


def save_grid(result: dict, path: Path, scale: int = 4) -> None:
    """One scene per pair: before | after, 4 pairs a row, nearest-neighbour upscaled, labelled."""
    from PIL import Image, ImageDraw

    seen, cells = set(), []
    for (pair, scene, _), e in zip(result["_jobs"], result["_edited"]):
        if pair in seen or not e.edited:
            continue
        seen.add(pair)
        cells.append((pair, scene.image, e.image))
    side = 64 * scale
    label_h = 18
    cols = 4
    rows = (len(cells) + cols - 1) // cols
    gap = 8
    width = cols * (2 * side + gap) - gap
    height = rows * (side + label_h + gap) - gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, ((source, target), before, after) in enumerate(cells):
        x = (k % cols) * (2 * side + gap)
        y = (k // cols) * (side + label_h + gap)
        draw.text((x + 4, y + 3), f"{source} -> {target}   (before | after)", fill=(0, 0, 0))
        for j, im in enumerate((before, after)):
            tile = Image.fromarray(im).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (x + j * side, y + label_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--split", choices=("val", "test"), required=True)
    ap.add_argument("--per-pair", type=positive_int, default=25)
    ap.add_argument("--steps", type=int, default=EditSettings.steps)
    ap.add_argument("--guidance", type=float, default=EditSettings.guidance)
    ap.add_argument("--dilate", type=int, default=EditSettings.dilate)
    ap.add_argument("--feather", type=int, default=EditSettings.feather)
    ap.add_argument("--strength", type=float, default=EditSettings.strength)
    ap.add_argument("--candidates", type=int, default=EditSettings.candidates)
    ap.add_argument("--tau", type=float, default=None, help="mask tau (default: the model's tau)")
    ap.add_argument("--prompt-style", choices=STYLES, default="class")
    ap.add_argument("--sweep", action="store_true", help="val only: try a small grid of settings around the given")
    ap.add_argument(
        "--trial",
        action="append",
        default=[],
        help="val only, repeatable: one extra trial as changes to the given settings, e.g. "
        "'prompt=instances,dilate=5' (keys: prompt and EditSettings fields)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=Path, default=None)
    args = ap.parse_args(argv)
    if (args.sweep or args.trial) and args.split != "val":
        ap.error("--sweep and --trial choose settings, so they run on val only")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    seg = DiffSegmenter.from_pretrained(args.model)
    by_source = {s: scenes_with(args.split, s, args.per_pair) for s in SHAPES}
    segs_by_source = {
        s: seg.segment(
            [sc.image for sc in scenes], classes=[sc.classes for sc in scenes], seed=args.seed, tau=args.tau
        )
        for s, scenes in by_source.items()
    }
    unique = {sc.seed: sc.image for scenes in by_source.values() for sc in scenes}
    round_trip = vae_round_trip_error(seg.backbone, list(unique.values()))
    base = EditSettings(
        dilate=args.dilate,
        feather=args.feather,
        steps=args.steps,
        guidance=args.guidance,
        strength=args.strength,
        candidates=args.candidates,
    )
    trials = [(base, args.prompt_style)]
    if args.sweep:
        trials += [
            (replace(base, guidance=1.0), args.prompt_style),
            (replace(base, dilate=5), args.prompt_style),
            (base, "instances"),
        ]
    for spec in args.trial:
        changes = dict(kv.split("=", 1) for kv in spec.split(","))
        style = changes.pop("prompt", args.prompt_style)
        if style not in STYLES:
            ap.error(f"unknown prompt style {style!r}")
        fields = {k: type(getattr(base, k))(v) for k, v in changes.items()}
        trials.append((replace(base, **fields), style))
    results = []
    for settings, style in trials:
        t = time.time()
        r = evaluate(seg, by_source, segs_by_source, settings, style, args.batch, args.seed)
        r["seconds"] = round(time.time() - t, 1)
        print(
            f"{json.dumps(asdict(settings))} prompt={style}: rate {r['rate']:.3f} (strict {r['rate_strict']:.3f}, "
            f"n={r['n']}), outside change "
            f"{r['outside_mean_abs_change_255']:.3f}/255, not edited {r['not_edited']}, {r['seconds']} s",
            flush=True,
        )
        results.append(r)
    best = max(results, key=lambda r: r["rate"])
    if args.grid:
        save_grid(best, args.grid)
    report = {
        "split": args.split,
        "per_pair": args.per_pair,
        "tau": args.tau if args.tau is not None else seg.config.tau,
        "seed": args.seed,
        "vae_round_trip_mean_abs_255": round_trip,
        "best": {k: v for k, v in best.items() if not k.startswith("_")},
        "trials": [{k: v for k, v in r.items() if not k.startswith("_") and k != "rows"} for r in results],
        "seconds": round(time.time() - t0, 1),
        "command": "python -m research.shapes.edit_eval " + " ".join(argv or __import__("sys").argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"VAE round trip {round_trip:.2f}/255; best rate {best['rate']:.3f}; {report['seconds']} s -> {args.out}")
    for key, p in best["per_pair"].items():
        print(f"  {key:20s} {p['success']:3d}/{p['n']:3d} = {p['rate']:.2f}   strict {p['rate_strict']:.2f}")


if __name__ == "__main__":
    main()
