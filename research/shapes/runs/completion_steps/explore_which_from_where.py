"""Exploration, val only (issue 17): complete the shapes model's class-decision maps with the *where* pass's
self-attention.

The shipped settings decide *which* class from raw cross-attention of a second pass at the native 64², and *where*
from the paper's completed maps of a pass at 160², whose self-attention separates the objects (fg IoU 0.954). This
script runs the two passes as ``DiffSegmenter.segment`` does (its private pieces: ``_work``, ``encode_images``,
``_run_pass``, ``build_results``), then once more the 160² forward with the capture on, and multiplies each view's
class-decision maps (resized to the self-attention grid) by that view's mean self-attention ``steps`` times. Scored
at the shipped τ and at the best τ per variant (:func:`research.shapes.ensemble.evaluate`); paired bootstrap against
the shipped maps. The first scene's shipped labels are checked against ``segment``.

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/completion_steps/explore_which_from_where.py 60
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from diffsegmenter.aggregation import complete_with_self_attention
from diffsegmenter.attention import AttentionStore
from diffsegmenter.decision import class_decision
from diffsegmenter.passes import ClassMaps
from diffsegmenter.result import build_results
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.ensemble import evaluate, paired_bootstrap, scene_confusions
from research.shapes.quality import scenes_of

STEPS = (1, 2)


def scene_results(seg: DiffSegmenter, scene) -> dict[str, object]:
    cfg = seg.config
    img = scene.image
    views = [img, np.ascontiguousarray(img[:, ::-1])]
    work = seg._work([img], [list(scene.classes)])
    view_work = work + [(1, p) for _, p in work]
    decision = class_decision(cfg, seg.resolution)
    plans = decision.passes()
    maps = ClassMaps()
    with seg.backbone.capture_session():
        lat_where = seg.encode_images(views, cfg.seed)
        maps.update(seg._run_pass(view_work, lat_where, plans[0]))
        lat_which = seg.encode_images(views, cfg.seed, plans[1].resolution)
        maps.update(seg._run_pass(view_work, lat_which, plans[1]))
    out = {"shipped": build_results([img], [list(scene.classes)], work, maps, decision, cfg.tau, flip=True)[0]}
    # the where pass's self-attention, per view (one prompt per view in the single-prompt mode)
    assert len(work) == 1, "the shipped single-prompt mode gives one prompt per image"
    text = torch.stack([seg.encode_prompt(p) for _, p in view_work])
    store = AttentionStore(latent_size=tuple(lat_where.shape[-2:]))
    with torch.no_grad(), seg.backbone.capture(store, cfg.self_attention_factor):
        seg.backbone.denoise(lat_where, cfg.timestep, text)
    _, grid = store.level_of(store.self_qk[0][0].shape[2])
    classes = range(len(scene.classes))
    for steps in STEPS:
        done = ClassMaps(where=dict(maps.where))
        for v in range(len(views)):  # each view's class maps completed together, with its own self-attention
            qk = [(q[v : v + 1], k[v : v + 1], s) for q, k, s in store.self_qk]
            x = torch.stack([maps.which[(v, c)] for c in classes])[None].float()
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
            completed = complete_with_self_attention(x, qk, steps)[0]
            done.which.update({(v, c): completed[c] for c in classes})
        res = build_results([img], [list(scene.classes)], work, done, decision, cfg.tau, flip=True)[0]
        out[f"which+{steps}"] = res
    return out


def main(n: int) -> None:
    torch.set_num_threads(2)
    seg = DiffSegmenter.from_pretrained("shapes")
    scenes = scenes_of("val", n)
    names = ["shipped"] + [f"which+{s}" for s in STEPS]
    results: dict[str, list] = {k: [] for k in names}
    with torch.inference_mode():
        for i, scene in enumerate(scenes):
            r = scene_results(seg, scene)
            if i == 0:
                ref = seg.segment(scene.image, classes=list(scene.classes))
                assert np.array_equal(ref.labels, r["shipped"].labels), "the re-run shipped labels differ from segment"
                print("check: scene 0's shipped labels equal segment's", flush=True)
            for k in names:
                results[k].append(r[k])
    tau = seg.config.tau
    base = scene_confusions(scenes, results["shipped"], tau)
    print(f"# {n} val scenes; at the shipped tau {tau}, and at each variant's best tau (research.shapes.ensemble)")
    for k in names:
        scored = evaluate(scenes, [r.scores for r in results[k]], tau)
        shipped, best = scored["shipped_tau"], scored["best"]
        line = f"{k:10s} mIoU {shipped['mIoU']:.4f} class acc given fg {shipped['class_acc_given_fg']:.4f}"
        line += f"  best tau {best['tau']} mIoU {best['mIoU']:.4f}"
        if k != "shipped":
            line += f"  vs shipped (same tau) {paired_bootstrap(scene_confusions(scenes, results[k], tau), base)}"
        print(line, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
