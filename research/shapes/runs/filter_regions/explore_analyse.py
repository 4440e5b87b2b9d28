"""Issue 17 filter exploration, step 3: per-object accuracy of the error-reduction argmax (true object masks) and of
the per-class-prompt cross-attention, per timestep, and first region votes. ``python research/shapes/runs/
filter_regions/explore_analyse.py runs/filter-explore/val_0_150.npz`` (output: ``explore_analyse.log``)."""

import sys

import numpy as np
from scipy import ndimage

d = np.load(sys.argv[1])
err, att, segl, truth, gt = d["err"], d["att"], d["seg_labels"], d["truth"], d["gt"]
N = len(truth)
TS = (100, 200, 300, 400, 600, 800)


def prf(kept, truth):
    tp = (kept & truth).sum()
    p = tp / max(1, kept.sum())
    r = tp / max(1, truth.sum())
    return p, r, 2 * p * r / max(1e-9, p + r), (kept == truth).all(1).mean()


def decide(s, thr):
    k = s >= thr
    none = ~k.any(1)
    k[none, s[none].argmax(1)] = True
    return k


def best_thr(s, truth):
    best = (0, None)
    for thr in np.unique(np.round(s, 5)):
        f = prf(decide(s, thr), truth)[2]
        if f > best[0]:
            best = (f, thr)
    return best


def red(tsel):
    idx = [TS.index(t) for t in tsel]
    e = err[:, idx].mean(1)  # N,5,32,32
    return (e[:, :1] - e[:, 1:]) / e[:, :1].mean((2, 3), keepdims=True)


def down(m):  # 64x64 -> 32x32 majority-ish: any
    return m.reshape(N, 32, 2, 32, 2).mean((2, 4))


fg_seg = down((segl > 0).astype(np.float32)) >= 0.5
fg_gt = down((gt > 0).astype(np.float32)) >= 0.5
print("fg_seg vs gt IoU", (fg_seg & fg_gt).sum() / (fg_seg | fg_gt).sum())
# per-object: does the true class win mean reduction over its object?
for tsel in [(100,), (200,), (300,), (400,), (600,), (800,), (200, 400, 600), (100, 200, 300), (100, 200, 300, 400)]:
    r = red(tsel)
    # baseline quantile
    res = {}
    for q in (0.5, 0.9):
        s = np.quantile(r.reshape(N, 4, -1), q, axis=2)
        res[f"q{q}"] = best_thr(s, truth)[0]
    # per object accuracy with gt masks
    ok = tot = 0
    for i in range(N):
        lab, n = ndimage.label(fg_gt[i])
        g = gt[i].reshape(32, 2, 32, 2)[:, 0, :, 0]
        for k in range(1, n + 1):
            m = lab == k
            true = np.bincount(g[m], minlength=5)[1:].argmax()
            ok += r[i][:, m].mean(1).argmax() == true
            tot += 1
    # pixel-win share in predicted fg
    win = r.argmax(1)  # N,32,32
    share = (
        np.stack([((win == c) & fg_seg).sum((1, 2)) for c in range(4)], 1) / np.maximum(1, fg_seg.sum((1, 2)))[:, None]
    )
    res["share"] = best_thr(share, truth)[0]
    # region vote with seg fg
    kept = np.zeros((N, 4), bool)
    regs = np.zeros((N, 4))
    for i in range(N):
        lab, n = ndimage.label(fg_seg[i])
        for k in range(1, n + 1):
            m = lab == k
            if m.sum() < 4:
                continue
            mr = r[i][:, m].mean(1)
            regs[i, mr.argmax()] = max(regs[i, mr.argmax()], m.sum())
            kept[i, mr.argmax()] = True
    res["regionvote"] = prf(kept, truth)
    print(
        tsel,
        f"obj-acc(gt regions) {ok / tot:.3f}",
        {k: (np.round(v, 3) if not isinstance(v, tuple) else tuple(np.round(v, 3))) for k, v in res.items()},
    )
# attention: level 8x8 (factor 4) is the last 64 entries
for ti, t in enumerate(TS):
    for name, sl, side in (("f1", slice(0, 1024), 32), ("f2", slice(1024, 1280), 16), ("f4", slice(1280, 1344), 8)):
        a = att[:, ti, :, sl].reshape(N, 4, side, side)
        a = np.repeat(np.repeat(a, 32 // side, 2), 32 // side, 3)
        ok = tot = 0
        for i in range(N):
            lab, n = ndimage.label(fg_gt[i])
            g = gt[i].reshape(32, 2, 32, 2)[:, 0, :, 0]
            for k in range(1, n + 1):
                m = lab == k
                true = np.bincount(g[m], minlength=5)[1:].argmax()
                ok += a[i][:, m].mean(1).argmax() == true
                tot += 1
        win = a.argmax(1)
        share = (
            np.stack([((win == c) & fg_seg).sum((1, 2)) for c in range(4)], 1)
            / np.maximum(1, fg_seg.sum((1, 2)))[:, None]
        )
        mass = (a * fg_seg[:, None]).sum((2, 3)) / a.sum((2, 3))
        print(
            "att",
            t,
            name,
            f"obj-acc {ok / tot:.3f} share-F1 {best_thr(share, truth)[0]:.3f} massF1 {best_thr(mass, truth)[0]:.3f}",
        )
