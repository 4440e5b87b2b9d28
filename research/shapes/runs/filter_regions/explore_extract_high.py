"""Issue 17 filter exploration, step 2 (run once, as recorded): the errors at t = 700..980, each of 2 draws kept, and
the 64²-only segmentation's labels. ``python research/shapes/runs/filter_regions/explore_extract_high.py val 150``;
writes ``runs/filter-explore/hi_val_0_150.npz``."""

import sys
import time

import numpy as np
import torch

from diffsegmenter.prompts import per_class_prompt
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.quality import scenes_of, world_labels

torch.set_num_threads(1)

split, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
V = ["circle", "square", "triangle", "cross"]
TS = (700, 800, 850, 900, 950, 980)
DRAWS = 2
seg = DiffSegmenter.from_pretrained("shapes")
seg64 = DiffSegmenter.from_pretrained("shapes", resolution=64, class_resolution=None)
bb = seg.backbone
cfg = seg.config
prompts = [per_class_prompt(bb.tokenizer, c, i, cfg.template, cfg.class_phrase) for i, c in enumerate(V)]
text = torch.stack([bb.empty_embedding()] + [seg.encode_prompt(p) for p in prompts])
out = {k: [] for k in ("err", "seg64_labels", "seg64_scores")}
t0 = time.time()
for s in scenes_of(split, n, start):
    with torch.inference_mode():
        z0 = seg.encode_latents([s.image], cfg.seed, 64)
        gen = torch.Generator().manual_seed(cfg.seed + 7)
        E = np.zeros((len(TS), DRAWS, 5, 32, 32), np.float32)
        for ti, t in enumerate(TS):
            for di in range(DRAWS):
                eps = torch.randn(z0.shape, generator=gen)
                zt = bb.add_noise(z0, eps, t).expand(5, -1, -1, -1)
                pred = bb.denoise(zt, t, text)
                E[ti, di] = ((pred.float() - eps) ** 2).mean(1).numpy()
        res = seg64.segment(s.image, classes=V)
    out["err"].append(E)
    out["seg64_labels"].append(world_labels(res).astype(np.uint8))
    out["seg64_scores"].append(res.scores.astype(np.float16))
print("per scene", (time.time() - t0) / n)
np.savez_compressed(f"runs/filter-explore/hi_{split}_{start}_{n}.npz", **{k: np.stack(v) for k, v in out.items()})
