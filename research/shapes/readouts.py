"""Measure the read-outs (``SegmenterConfig.readout``, issue 16) on the shapes world, both protocols.

Every read-out runs on top of the shipped settings (everything but ``readout`` and ``tau`` as shipped). Variants
(:data:`VARIANTS`): ``paper`` (today's shipped read-out), ``rescaled`` and ``weighted`` with each way of leaving
room for background (``/content``: GoCA as described; ``/absorb``: non-class prompt tokens absorb background;
``/paper``: the paper's maps decide where, GoCA's which), and the weighted read-out's alternatives (uniform layer
weights; softmax head weights, its own capture group).

Protocol. **val** (``--val N`` scenes, present classes given): one model run per group, tau swept per variant on the
stored score maps (max mIoU). **test** (``--test N`` scenes, run once, taus from the val record ``--taus``): each
variant (i) with the present classes given and (ii) with the whole vocabulary and the shipped diffusion filter
(its threshold as shipped; its kept classes are computed once per scene and given to every variant), paper at the
shipped tau.

One capture, every variant: a run records one denoiser forward per pass with the weighted read-out's capture (the
plain head average stays in the store, so the paper and rescaled maps come from the same forward), computes every
variant's maps from that store (:class:`_Tee`), then replays each variant's maps through ``DiffSegmenter.segment``
(:class:`_Replay`: the library's own class decision, upsampling and labelling; the VAE latents of the record call
are reused). ``--check N`` compares this with a
plain ``segment`` call per variant on N val scenes. Run from the repository root (1 thread):

    python -m research.shapes.readouts --out research/shapes/runs/readouts/val150 --val 150 --check 3
    python -m research.shapes.readouts --out research/shapes/runs/readouts/test300 --test 300 \
        --taus research/shapes/runs/readouts/val150/readouts.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffsegmenter import passes, readouts
from diffsegmenter.filters.base import build_filter, select_classes
from diffsegmenter.segmenter import DiffSegmenter

from .components import check_out_dir
from .quality import scenes_of, score_predictions, world_labels
from .world import CLASS_NAMES

TAUS = tuple(round(float(x), 3) for x in np.arange(0.04, 0.905, 0.02))
VOCAB = list(CLASS_NAMES[1:])
R, W = readouts.RescaledReadout, readouts.WeightedReadout
#: name -> (capture group, readout field, the strategy object's factory)
VARIANTS: dict[str, tuple[str, str, Callable[[], readouts.Readout]]] = {
    "paper": ("cosine", "paper", readouts.PaperReadout),
    **{f"rescaled/{b}": ("cosine", "rescaled", lambda b=b: R(background=b)) for b in readouts.BACKGROUNDS},
    **{f"weighted/{b}": ("cosine", "weighted", lambda b=b: W(background=b)) for b in readouts.BACKGROUNDS},
    **{
        f"weighted/{b}/uniform-layers": ("cosine", "weighted", lambda b=b: W(layer_mode="uniform", background=b))
        for b in readouts.BACKGROUNDS
    },
    **{
        f"weighted/{b}/level-which": ("cosine", "weighted", lambda b=b: W(which_fusion="levels", background=b))
        for b in readouts.BACKGROUNDS
    },
    **{
        f"weighted/{b}/softmax-heads": ("softmax", "weighted", lambda b=b: W(head_mode="softmax", background=b))
        for b in readouts.BACKGROUNDS
    },
}
GROUPS = {"cosine": "cosine", "softmax": "softmax"}  # group -> head mode of its capture


class _Tee(readouts.Readout):
    """The weighted read-out's capture; :meth:`maps` computes every variant's maps from the one store."""

    name = "weighted"
    needs_content = True

    def __init__(self, head_mode: str, variants: dict[str, readouts.Readout]) -> None:
        self.capturer = readouts.WeightedReadout(head_mode=head_mode, background="content")
        self.variants = variants
        self.sink: list[dict] = []

    def prepare(self, store) -> None:
        self.capturer.prepare(store)

    def capture(self, backbone, store, spec, text, token_groups):
        ctx = self.capturer.capture(backbone, store, spec, text, token_groups)
        for r in self.variants.values():
            r.sos_first = self.capturer.sos_first
        return ctx

    def maps(self, store, token_groups, content, spec):
        out = {name: r.maps(store, token_groups, content, spec) for name, r in self.variants.items()}
        self.sink.append(out)
        return next(iter(out.values()))


class _Replay:
    """Stands in for :func:`diffsegmenter.passes.attention_pass`: records every variant's maps of each call (one
    forward), then hands a chosen variant's maps back in the same call order (no forward)."""

    def __init__(self, tee: _Tee, real: Callable) -> None:
        self.tee = tee
        self.real = real  # the library's attention_pass
        self.log: list[tuple[tuple, dict]] = []
        self.variant: str | None = None  # None: record
        self.i = 0

    @staticmethod
    def _key(latents, token_groups, spec) -> tuple:
        groups = tuple(tuple(tuple(g) for g in s) for s in token_groups)
        return tuple(latents.shape), spec.where, str(spec.which_weights), groups

    def __call__(self, backbone, latents, text, token_groups, spec, *, cfg_reference=False, content=None):
        key = self._key(latents, token_groups, spec)
        if self.variant is None:
            self.tee.sink.clear()
            self.real(backbone, latents, text, token_groups, spec, cfg_reference=cfg_reference, content=content)
            self.log.append((key, self.tee.sink[0]))
            return passes.PassMaps(*self.tee.sink[0][next(iter(self.tee.variants))])
        logged, maps = self.log[self.i]
        if logged != key:
            raise RuntimeError(f"replay out of step: {key} vs {logged}")
        self.i += 1
        return passes.PassMaps(*maps[self.variant])


def run_group(seg, base, group: str, names: list[str], images, class_lists, batch: int = 20) -> dict[str, list]:
    """Each variant's results on the images: one capture per pass of the group, every variant replayed."""
    objs = {n: VARIANTS[n][2]() for n in names}
    tee = _Tee(GROUPS[group], objs)
    saved, real = dict(readouts.FACTORIES), passes.attention_pass
    out: dict[str, list] = {n: [] for n in names}
    encode, memo = seg.encode_images, {}

    def cached(arrays, seed, resolution=None):  # the replays' latents: the record call's, not a new VAE encode
        key = (seed, resolution, tuple(hash(a.tobytes()) for a in arrays))
        if key not in memo:
            memo[key] = encode(arrays, seed, resolution)
        return memo[key]

    seg.encode_images = cached
    try:
        for start in range(0, len(images), batch):
            imgs, cls = images[start : start + batch], class_lists[start : start + batch]
            replay = _Replay(tee, real)
            memo.clear()
            passes.attention_pass = replay
            readouts.FACTORIES["weighted"] = lambda block: tee
            seg.config = base.replace(readout="weighted")
            seg.segment(imgs, cls)
            for n in names:
                field = VARIANTS[n][1]
                readouts.FACTORIES[field] = lambda block, r=objs[n]: r
                seg.config = base.replace(readout=field)
                replay.variant, replay.i = n, 0
                out[n].extend(seg.segment(imgs, cls))
                if replay.i != len(replay.log):
                    raise RuntimeError(f"variant {n} replayed {replay.i} of {len(replay.log)} passes")
    finally:
        passes.attention_pass = real
        del seg.encode_images  # the instance attribute; the method again
        readouts.FACTORIES.clear()
        readouts.FACTORIES.update(saved)
        seg.config = base
    return out


def metrics(scenes, results, tau: float) -> dict[str, float]:
    labels = [world_labels(r, r.relabel(tau)) for r in results]
    m = score_predictions(scenes, labels, [(r.classes, r.scores) for r in results])
    return {k: m[k] for k in ("mIoU", "class_acc_fg", "class_acc_given_fg", "fg_iou")}


def check(seg, base, scenes, names) -> dict[str, dict[str, float]]:
    """Replay against a plain ``segment`` call per variant: max |score difference| and label agreement at 0.6."""
    images, classes = [s.image for s in scenes], [s.classes for s in scenes]
    out = {}
    by_group: dict[str, list[str]] = {}
    for n in names:
        by_group.setdefault(VARIANTS[n][0], []).append(n)
    for group, ns in by_group.items():
        replayed = run_group(seg, base, group, ns, images, classes)
        for n in ns:
            field, factory = VARIANTS[n][1], VARIANTS[n][2]
            saved = readouts.FACTORIES[field]
            readouts.FACTORIES[field] = lambda block, f=factory: f()
            try:
                seg.config = base.replace(readout=field)
                direct = seg.segment(images, classes)
            finally:
                readouts.FACTORIES[field] = saved
                seg.config = base
            diff = max(float(np.abs(a.scores - b.scores).max()) for a, b in zip(replayed[n], direct))
            agree = float(np.mean([(a.relabel(0.6) == b.relabel(0.6)).mean() for a, b in zip(replayed[n], direct)]))
            out[n] = {"max_abs_score_diff": diff, "label_agreement_tau_0.6": agree}
            print("check", n, out[n], flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--out", required=True)
    p.add_argument("--val", type=int, default=0, help="val scenes (tau chosen per variant)")
    p.add_argument("--test", type=int, default=0, help="test scenes (run once; needs --taus)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--taus", default=None, help="a val run's readouts.json: its chosen taus are used on test")
    p.add_argument("--check", type=int, default=0, help="compare the replay with plain segment calls on N val scenes")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.test and not args.taus:  # before any model loads or val work runs
        p.error("--test needs --taus (a val run's readouts.json): test settings are chosen on val")
    out = check_out_dir(args.out, record="readouts.json")
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    seg = DiffSegmenter.from_pretrained(args.model)
    base = seg.config
    report: dict = {"command": "python -m research.shapes.readouts " + " ".join(argv or __import__("sys").argv[1:])}
    report.update({"shipped_tau": base.tau, "threads": args.threads})
    path = out / "readouts.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    by_group: dict[str, list[str]] = {}
    for n in args.variants:
        by_group.setdefault(VARIANTS[n][0], []).append(n)
    if args.check:
        report["check"] = check(seg, base, scenes_of("val", args.check), args.variants)
        save()
    if args.val:
        val = scenes_of("val", args.val)
        report["val"] = {"scenes": args.val}
        for group, names in by_group.items():
            t0 = time.process_time()
            res = run_group(seg, base, group, names, [s.image for s in val], [s.classes for s in val])
            report["val"][f"cpu_seconds_{group}"] = time.process_time() - t0
            for n in names:
                best = max(TAUS, key=lambda t, n=n: metrics(val, res[n], t)["mIoU"])
                report["val"][n] = {"tau": best, **metrics(val, res[n], best)}
                print("val", n, report["val"][n], flush=True)
            if "paper" in names:
                report["val"]["paper@shipped_tau"] = {"tau": base.tau, **metrics(val, res["paper"], base.tau)}
            save()
    if args.test:
        if not args.taus:
            raise SystemExit("--test needs --taus (a val run's readouts.json): test settings are chosen on val")
        chosen = json.loads(Path(args.taus).read_text(encoding="utf-8"))["val"]
        taus = {n: (base.tau if n == "paper" else chosen[n]["tau"]) for n in args.variants}
        test = scenes_of("test", args.test)
        report["test"] = {"scenes": args.test, "taus": taus, "taus_from": args.taus}
        t0 = time.process_time()
        flt = build_filter("diffusion", seg)
        kept = [select_classes(flt, s.image, VOCAB).kept for s in test]
        report["test"]["filter"] = {
            "settings": {"threshold": flt.threshold},
            "cpu_seconds": time.process_time() - t0,
            "exact_set": float(np.mean([sorted(k) == sorted(s.classes) for k, s in zip(kept, test)])),
        }
        save()
        for protocol, class_lists in (("present", [s.classes for s in test]), ("filter", kept)):
            for group, names in by_group.items():
                t0 = time.process_time()
                res = run_group(seg, base, group, names, [s.image for s in test], class_lists)
                report["test"][f"cpu_seconds_{protocol}_{group}"] = time.process_time() - t0
                for n in names:
                    report["test"].setdefault(n, {})[protocol] = {"tau": taus[n], **metrics(test, res[n], taus[n])}
                    print("test", protocol, n, report["test"][n][protocol], flush=True)
                save()
    seg.config = base
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
