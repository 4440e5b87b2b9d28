"""Diagnostic, val only (issue 17): does a shapes model use its caption at all?

For each model folder: the first N val scenes, each denoised once per timestep with three prompts (the probe's
prompt naming its present classes; the next scene's prompt; the empty prompt), the same noise for all three. Printed
per timestep: the mean squared error against the prediction target with the right prompt, and how much higher it is
(in %) with the wrong and the empty prompt. A model that ignores its caption shows ~0 %.

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/mmdit_cpu_text_routes/caption_use.py 32 \
        shapes /work/runs/dit-p4/best /work/runs/dit-p4-np/best /work/runs/dit-p4-t1/best
"""

import sys

import torch

from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.quality import scenes_of

TIMESTEPS = (100, 300, 500, 700, 900)


def measure(folder: str, n: int) -> None:
    seg = DiffSegmenter.from_pretrained(folder)
    bb, tok = seg.backbone, seg.tokenizer
    scenes = scenes_of("val", n)
    prompts = [" and ".join(f"a {c}" for c in s.classes) for s in scenes]

    def text(prompt: str) -> torch.Tensor:
        return bb.encode_text(tok(prompt, padding="max_length", max_length=77).input_ids)

    right = torch.stack([text(p) for p in prompts])
    wrong = torch.roll(right, 1, 0)
    empty = text("")[None].expand_as(right)
    with torch.inference_mode():
        clean = seg.encode_latents([s.image for s in scenes], 0)
        print(f"# {folder}: {n} val scenes; MSE with the right prompt, and % more with the wrong / empty prompt")
        for t in TIMESTEPS:
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(t))
            x = bb.add_noise(clean, noise, t)
            target = bb.prediction_target(clean, noise, t)
            errs = [float((bb.denoise(x, t, emb).float() - target).pow(2).mean()) for emb in (right, wrong, empty)]
            up = [100 * (e / errs[0] - 1) for e in errs[1:]]
            print(f"t={t:4d}  right {errs[0]:.4f}  wrong +{up[0]:.2f} %  empty +{up[1]:.2f} %", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for folder in sys.argv[2:]:
        measure(folder, int(sys.argv[1]))
