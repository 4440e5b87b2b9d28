"""Issue 17 filter exploration, step 4: region votes over timestep mixes, and whether the error-reduction maps
themselves could give the foreground. ``python research/shapes/runs/filter_regions/explore_foreground.py`` (output:
``explore_foreground.log``). The thresholds here are chosen in-sample: exploration only, not the reported figures."""

import numpy as np
from scipy import ndimage

a = np.load("runs/filter-explore/val_0_150.npz")
b = np.load("runs/filter-explore/hi_val_0_150.npz")
truth, gt, segl = a["truth"], a["gt"], a["seg_labels"]
N = len(truth)
S = {}
for i, t in enumerate((100, 200, 300, 400, 600, 800)):
    S[f"a{t}"] = a["err"][:, i]
for i, t in enumerate((700, 800, 850, 900, 950, 980)):
    for d in range(2):
        S[f"b{t}d{d}"] = b["err"][:, i, d]
    S[f"b{t}"] = b["err"][:, i].mean(1)


def prf(kept):
    tp = (kept & truth).sum()
    p = tp / max(1, kept.sum())
    r = tp / max(1, truth.sum())
    return np.round([p, r, 2 * p * r / max(1e-9, p + r), (kept == truth).all(1).mean()], 3)


def red(keys):
    return np.mean([(S[k][:, :1] - S[k][:, 1:]) / S[k][:, :1].mean((2, 3), keepdims=True) for k in keys], 0)


st = ndimage.generate_binary_structure(2, 1)
regs = []
for i in range(N):
    lab, n = ndimage.label(segl[i] > 0, structure=st)
    regs.append([lab == k for k in range(1, n + 1) if (lab == k).sum() >= 16])


def vote(r):
    r64 = np.repeat(np.repeat(r, 2, 2), 2, 3)
    score = np.full((N, 4), -np.inf)
    for i in range(N):
        for m in regs[i]:
            mr = r64[i][:, m].mean(1)
            c = mr.argmax()
            score[i, c] = max(score[i, c], mr[c])
    return score


def kept_of(score, thr=-np.inf):
    k = score >= thr
    none = ~k.any(1)
    k[none, score[none].argmax(1)] = True
    return k


for keys in (
    ["a800"],
    ["b800"],
    ["a800", "b800"],
    ["a600", "a800"],
    ["a600", "b700", "b800"],
    ["a600", "a800", "b900"],
    ["a400", "a600", "a800"],
    ["b700", "b800", "b850", "b900"],
    ["a600", "b700", "a800", "b800", "b850"],
    ["a300", "a400", "a600", "b700", "a800", "b800"],
    ["a600", "b700", "a800", "b800", "b850", "b900"],
    ["b700d0", "b800d0", "b850d0", "b900d0"],
    ["a600", "b700d0", "a800", "b800d0"],
):
    sc = vote(red(keys))
    best = max(
        (prf(kept_of(sc, thr))[2], thr)
        for thr in [-np.inf] + list(np.quantile(sc[np.isfinite(sc)], np.linspace(0, 0.6, 25)))
    )
    print(keys, prf(kept_of(sc)), "best thr", np.round(best, 4))
print("--- fg from reductions")
r = red(["a300", "a400", "a600", "b700", "a800", "b800"])
rmax = r.max(1)
g32 = gt.reshape(N, 32, 2, 32, 2).mean((2, 4)) > 0.5
for q in (0.5, 0.7, 0.8, 0.85, 0.9):
    thr = np.quantile(rmax, q)
    fg = rmax > thr
    print(q, "IoU vs gt", round((fg & g32).sum() / (fg | g32).sum(), 3))
for rel in (0.2, 0.3, 0.4, 0.5):
    fg = rmax > rel * rmax.max((1, 2), keepdims=True)
    print("rel", rel, "IoU vs gt", round((fg & g32).sum() / (fg | g32).sum(), 3))
