"""Diagnostic, val only (issue 17): where do a shapes model's image queries put their attention over the prompt?

For each model folder: the first N val scenes, the probe's prompt naming the present classes ("a circle and a
square"), noised as the binding probe does (t = 100; flow models at the equal-SNR sigma), one denoiser forward.
A wrapping attention processor on every text-reading layer (UNet: cross-attention; SD3: joint attention, image
rows of the joint softmax read at the text columns) records, per layer, the head-averaged attention of the image
queries, split by the kind of text position: the class words, the other words, the start token, the end token,
the end-token padding after it, and (SD3) the T5 zero tokens. Processors are restored afterwards. Reported as
shares of the image->text mass per layer, and for SD3 also the text's share of the joint softmax.

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD python research/shapes/runs/mmdit_cpu_text_routes/attention_mass.py 16 \
        shapes /work/runs/dit-p4/best /work/runs/dit-p4-np/best
"""

import sys
from collections import defaultdict

import numpy as np
import torch

from diffsegmenter.joint_attention import joint_text_probs
from diffsegmenter.segmenter import DiffSegmenter
from research.shapes.quality import scenes_of

KINDS = ("class words", "other words", "start", "end", "padding", "T5 zeros")


def heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, s, _ = x.shape
    return x.view(b, s, n, -1).transpose(1, 2)


class MassProcessor:
    """Records (B, N, T) image->text probabilities of one layer, then calls the wrapped processor."""

    def __init__(self, original, name: str, out: dict, joint: bool) -> None:
        self.original, self.name, self.out, self.joint = original, name, out, joint

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            with torch.no_grad():
                q = heads(attn.to_q(hidden_states), attn.heads)
                if self.joint:
                    k = heads(attn.to_k(hidden_states), attn.heads)
                    kt = heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
                    if attn.norm_q is not None:
                        q, k = attn.norm_q(q), attn.norm_k(k)
                    if attn.norm_added_k is not None:
                        kt = attn.norm_added_k(kt)
                    probs = joint_text_probs(q, torch.cat([k, kt], 2), slice(q.shape[2], None), q.shape[-1] ** -0.5)
                else:
                    kt = heads(attn.to_k(encoder_hidden_states), attn.heads)
                    probs = torch.softmax(q @ kt.transpose(-1, -2) * q.shape[-1] ** -0.5, -1).mean(1)
                self.out[self.name].append(probs.float().mean(1))  # (B, T): mean over image queries
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


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
    joint = hasattr(seg.backbone, "num_blocks")
    model = seg.backbone.transformer if joint else seg.backbone.unet
    layers = {k: v for k, v in model.attn_processors.items() if joint or "attn2" in k}
    out: dict[str, list] = defaultdict(list)
    original = dict(model.attn_processors)
    wrapped = {k: (MassProcessor(v, k, out, joint) if k in layers else v) for k, v in original.items()}
    tok = seg.tokenizer
    shares, text_share = defaultdict(list), defaultdict(list)
    model.set_attn_processor(wrapped)
    try:
        for scene in scenes_of("val", n):
            prompt = " and ".join(f"a {c}" for c in scene.classes)
            ids = tok(prompt, padding="max_length", max_length=77).input_ids
            words = tok(prompt).input_ids[1:-1]
            positions = [i + 1 for i, w in enumerate(words) if tok.decode([w]).strip() in scene.classes]
            text = seg.backbone.encode_text(ids)[None]
            latents = seg.encode_images([scene.image], 0)
            out.clear()
            with torch.inference_mode():
                seg.backbone.denoise(latents, 100, text)
            for name, recs in out.items():
                mass = recs[0][0].numpy()
                kinds = kinds_of(ids, positions, tok.eos_token_id, mass.shape[0])
                total = mass.sum()
                shares[name].append([mass[kinds == i].sum() / total for i in range(len(KINDS))])
                text_share[name].append(total)
    finally:
        model.set_attn_processor(original)
    print(f"# {folder}: {n} val scenes, shares of the image->text attention by kind of text position", flush=True)
    print("layer".ljust(44), "  ".join(k.rjust(11) for k in KINDS), "  text share" if joint else "")
    for name in layers:
        row = np.mean(shares[name], 0)
        extra = f"  {np.mean(text_share[name]):10.3f}" if joint else ""
        print(name[:44].ljust(44), "  ".join(f"{v:11.3f}" for v in row), extra, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for folder in sys.argv[2:]:
        measure(folder, int(sys.argv[1]))
