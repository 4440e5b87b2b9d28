"""Diagnostic, val only (issue 17): where do a shapes model's image queries put their attention over the prompt?

For each model folder: the first N val scenes, the probe's prompt naming the present classes ("a circle and a
square"), noised as the binding probe does (t = 100; flow models at the equal-SNR sigma), one denoiser forward.
The library's own capture (``backbone.capture`` with ``AttentionStore.keep_layers``; UNet: every cross-attention
layer; SD3: every joint block, image rows of the joint softmax read at the text columns) gives, per layer, the
head-averaged attention of the image queries, split by the kind of text position: the class words, the other
words, the start token, the end token, the end-token padding after it, and (SD3) the T5 zero tokens. Reported as
shares of the image->text mass per layer, and for SD3 also the text's share of the joint softmax.

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/mmdit_cpu_text_routes/attention_mass.py 16 \
        shapes /work/runs/dit-p4/best /work/runs/dit-p4-np/best
"""

import sys
from collections import defaultdict

import numpy as np
import torch

from diffsegmenter.attention import AttentionStore
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.quality import scenes_of

KINDS = ("class words", "other words", "start", "end", "padding", "T5 zeros")


def kinds_of(ids: list[int], class_positions: list[int], end_id: int, total: int) -> np.ndarray:
    """(total,) index into KINDS for each text position."""
    end = ids.index(end_id)
    out = np.full(total, 5)
    out[: len(ids)] = 4
    out[1:end] = 1
    out[class_positions] = 0
    out[0], out[end] = 2, 3
    return out


def measure(folder: str, n: int) -> None:
    seg = DiffSegmenter.from_pretrained(folder)
    seg.config = seg.config.replace(timestep=100, flip=False)
    bb, tok = seg.backbone, seg.tokenizer
    joint = hasattr(bb, "num_blocks")
    blocks = {"blocks": list(range(bb.num_blocks()))} if joint else {}
    shares, text_share = defaultdict(list), defaultdict(list)
    for scene in scenes_of("val", n):
        prompt = " and ".join(f"a {c}" for c in scene.classes)
        ids = tok(prompt, padding="max_length", max_length=77).input_ids
        words = tok(prompt).input_ids[1:-1]
        positions = [i + 1 for i, w in enumerate(words) if tok.decode([w]).strip() in scene.classes]
        latents = seg.encode_images([scene.image], 0)
        store = AttentionStore(latent_size=tuple(latents.shape[-2:]), keep_layers=True)
        with torch.inference_mode(), bb.capture(store, **blocks):
            bb.denoise(latents, 100, bb.encode_text(ids)[None])
        for name, probs in store.layer_maps:
            mass = probs[0].mean(0).numpy()  # (T,): mean over the image queries
            kinds = kinds_of(ids, positions, tok.eos_token_id, mass.shape[0])
            total = mass.sum()
            shares[name].append([mass[kinds == i].sum() / total for i in range(len(KINDS))])
            text_share[name].append(total)
    print(f"# {folder}: {n} val scenes, shares of the image->text attention by kind of text position", flush=True)
    print("layer".ljust(44), "  ".join(k.rjust(11) for k in KINDS), "  text share" if joint else "")
    for name in shares:
        row = np.mean(shares[name], 0)
        extra = f"  {np.mean(text_share[name]):10.3f}" if joint else ""
        print(name[:44].ljust(44), "  ".join(f"{v:11.3f}" for v in row), extra, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for folder in sys.argv[2:]:
        measure(folder, int(sys.argv[1]))
