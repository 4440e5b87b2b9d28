"""Batched conditional-only UNet pass vs a one-class-at-a-time ``[uncond, cond]`` loop, on the tiny test model.

Issue 2 asks for the speed-up of the engine's core step: all K class prompts of an image in ONE UNet forward on the
conditional branch only, against the released code's loop of K forwards on ``[empty prompt, class prompt]``
batches. Both sides use the engine's own capture path (:meth:`DiffSegmenter.attention_maps`, the loop with
``cfg_reference=True``), so the ratio isolates batching + dropping the unconditional half. The whole-pipeline ratio
against :class:`benchmarks.reference.ReferencePipeline` (eager attention everywhere, all maps kept, explicit N x N
self-attention) is printed too.

Usage::

    python benchmarks/batched_vs_loop.py [--classes 3 10] [--repeats 20] [--threads N]

Prints one line per K and, last, ``batched_vs_loop_speedup=<ratio>`` for the largest K.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.models import build_tiny  # noqa: E402
from benchmarks.reference import ReferencePipeline  # noqa: E402
from benchmarks.timing import interleaved_medians  # noqa: E402
from diffsegmenter import DiffSegmenter, SegmenterConfig  # noqa: E402
from diffsegmenter.prompts import select_positions  # noqa: E402

NAMES = ["cat", "sofa", "dog", "person", "car", "bus", "bird", "plant", "monitor", "tv", "circle", "square"]


def main(argv: list[str] | None = None) -> float:
    """Run the comparison; returns the UNet-pass speed-up for the largest K."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[3, 10], help="numbers of classes K (default 3 10)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median; default 20)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    c = build_tiny()
    seg = DiffSegmenter(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], SegmenterConfig())
    reference = ReferencePipeline(seg)
    image = (np.random.RandomState(0).rand(48, 64, 3) * 255).astype(np.uint8)
    latent = seg.encode_images([image], seed=0)
    print(
        f"tiny model: UNet {sum(p.numel() for p in seg.backbone.unet.parameters()) / 1e6:.2f}M params, latent "
        f"{tuple(latent.shape[-2:])}, {torch.get_num_threads()} threads, median of {args.repeats} runs"
    )
    speedup = float("nan")
    for k in args.classes:
        names = (
            (NAMES * (k // len(NAMES) + 1))[:k] if k <= len(NAMES) else [f"{n} {m}" for n in NAMES for m in NAMES][:k]
        )
        prompts = seg.build_prompts(image, names)
        text = torch.stack([seg.encode_prompt(p) for p in prompts])
        groups = [[select_positions(p.class_tokens[0], [], seg.config.token_rule)] for p in prompts]
        latents = latent.expand(k, -1, -1, -1)

        def batched(latents=latents, text=text, groups=groups):
            return seg.attention_maps(latents, text, groups)

        def loop(text=text, groups=groups, k=k):
            return [
                seg.attention_maps(latent, text[i : i + 1], groups[i : i + 1], cfg_reference=True) for i in range(k)
            ]

        diff = (batched() - torch.cat(loop())).abs().max().item()
        t = interleaved_medians(
            {
                "batched": batched,
                "loop": loop,
                "engine": lambda names=names: seg.segment(image, classes=names),
                "reference": lambda names=names: reference.segment(image, names),
            },
            args.repeats,
        )
        t_batched, t_loop, t_engine, t_ref = t["batched"], t["loop"], t["engine"], t["reference"]
        speedup = t_loop / t_batched
        print(
            f"K={k:3d}  UNet pass: batched cond-only {t_batched * 1e3:7.1f} ms  loop [uncond, cond] "
            f"{t_loop * 1e3:7.1f} ms  speed-up {speedup:5.2f}x  (max map diff {diff:.1e})  |  whole image: engine "
            f"{t_engine * 1e3:7.1f} ms  reference {t_ref * 1e3:7.1f} ms  speed-up {t_ref / t_engine:5.2f}x"
        )
    print(f"batched_vs_loop_speedup={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
