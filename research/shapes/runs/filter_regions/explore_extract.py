"""Issue 17 filter exploration, step 1 (run once, as recorded): per val scene, the denoising errors of the empty and
of each class prompt at t = 100..800 (2 draws, averaged) with the class tokens' cross-attention captured in the same
forwards, and the shipped segmenter's whole-vocabulary labels. ``python research/shapes/runs/filter_regions/
explore_extract.py val 150`` from the repository root (PYTHONPATH with the repository and its src/); writes
``runs/filter-explore/val_0_150.npz``."""

import sys
import time

import numpy as np
import torch

from diffsegmenter.attention import AttentionStore
from diffsegmenter.prompts import per_class_prompt
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.quality import scenes_of, world_labels

torch.set_num_threads(1)

split, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
V = ["circle", "square", "triangle", "cross"]
TS = (100, 200, 300, 400, 600, 800)
DRAWS = 2
seg = DiffSegmenter.from_pretrained("shapes")
bb = seg.backbone
cfg = seg.config
prompts = [per_class_prompt(bb.tokenizer, c, i, cfg.template, cfg.class_phrase) for i, c in enumerate(V)]
text = torch.stack([bb.empty_embedding()] + [seg.encode_prompt(p) for p in prompts])
tokpos = [p.class_tokens[0] for p in prompts]
print(tokpos, [p.text for p in prompts])
out = {k: [] for k in ("err", "att", "seg_scores", "seg_labels", "truth", "gt")}
t0 = time.time()
for s in scenes_of(split, n, start):
    with torch.inference_mode():
        z0 = seg.encode_latents([s.image], cfg.seed, 64)
        gen = torch.Generator().manual_seed(cfg.seed)
        E = np.zeros((len(TS), 5, 32, 32), np.float32)
        A = {f: np.zeros((len(TS), 4, 32 // f, 32 // f), np.float32) for f in (1, 2, 4)}
        for ti, t in enumerate(TS):
            for _ in range(DRAWS):
                eps = torch.randn(z0.shape, generator=gen)
                zt = bb.add_noise(z0, eps, t).expand(5, -1, -1, -1)
                store = AttentionStore(latent_size=(32, 32))
                with bb.capture(store, None):
                    pred = bb.denoise(zt, t, text)
                E[ti] += ((pred.float() - eps) ** 2).mean(1).numpy() / DRAWS
                for f, m in store.cross_maps().items():
                    A[f][ti] += np.stack([m[1 + k, tokpos[k]].mean(0).numpy() for k in range(4)]) / DRAWS
        res = seg.segment(s.image, classes=V)
    out["err"].append(E)
    out["att"].append(
        np.concatenate([A[1].reshape(len(TS), 4, -1), A[2].reshape(len(TS), 4, -1), A[4].reshape(len(TS), 4, -1)], -1)
    )
    out["seg_scores"].append(res.scores.astype(np.float16))
    out["seg_labels"].append(world_labels(res).astype(np.uint8))
    out["truth"].append(np.array([c in s.classes for c in V]))
    out["gt"].append(s.labels)
print("per scene", (time.time() - t0) / n)
np.savez_compressed(f"runs/filter-explore/{split}_{start}_{n}.npz", **{k: np.stack(v) for k, v in out.items()})
