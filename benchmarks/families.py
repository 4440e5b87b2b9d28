"""Cost of one attention pass per backbone family against the same family's plain denoiser forward.

Random weights at full architecture size (random weights cost what trained ones cost); the configs are written here
by hand from the published ``config.json`` of each model's denoiser (sources beside each). Only the denoiser is
built: text embeddings are random tensors of the right shape, so the timing is the denoiser forward with and
without DiffSegmenter's capture (the text encoders and VAE cost the same in both). FLUX.1's 12B transformer does not
fit a 24 GiB CPU machine in fp32: it is reported with analytic FLOPs (its GPU cost is measured end to end by
``benchmarks/gpu_throughput.py``). Each mode is called once untimed, then the modes alternate for ``--repeats``
rounds; the median is reported.

    python benchmarks/families.py --families pixart sd3 --size 256 --json benchmarks/results/families_cpu.json
    python benchmarks/families.py --device cuda --dtype bfloat16 --json families_gpu.json   # native sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from types import SimpleNamespace

import torch

from diffsegmenter.attention import AttentionStore

# SDXL base 1.0 unet/config.json (stabilityai/stable-diffusion-xl-base-1.0)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)  # fmt: skip
# SD3-medium transformer/config.json (stabilityai/stable-diffusion-3-medium-diffusers)
SD3_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)  # fmt: skip
# PixArt-Sigma-XL-2-1024-MS transformer/config.json (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS)
PIXART_SIGMA = dict(
    sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16, caption_channels=4096,
    in_channels=4, out_channels=8, cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    interpolation_scale=2, use_additional_conditions=False,
)  # fmt: skip
# FLUX.1-schnell transformer/config.json (black-forest-labs/FLUX.1-schnell): 19 double + 38 single blocks, width 3072
FLUX_SCHNELL = dict(layers=19, single_layers=38, width=3072, text_tokens=256, params=11.9e9)


def build(family: str, device, dtype):
    """(backbone-like object, latents, text) at full architecture size with random weights."""
    from diffsegmenter import backbones

    torch.manual_seed(0)
    if family == "sdxl":
        from diffusers import UNet2DConditionModel

        bb = object.__new__(backbones.StableDiffusionXLBackbone)
        bb.unet = UNet2DConditionModel(**SDXL_UNET).to(device, dtype).eval()
        bb.vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=[1, 2, 3, 4]))
        bb.text_encoder_2 = SimpleNamespace(config=SimpleNamespace(projection_dim=1280))
        return bb, 4, 77 + 1, 2048
    if family == "sd3":
        from diffusers import SD3Transformer2DModel

        bb = object.__new__(backbones.StableDiffusion3Backbone)
        bb.transformer = SD3Transformer2DModel(**SD3_MEDIUM).to(device, dtype).eval()
        return bb, 16, 77 + 256 + 1, 4096
    if family == "pixart":
        from diffusers import PixArtTransformer2DModel

        bb = object.__new__(backbones.PixArtBackbone)
        bb.transformer = PixArtTransformer2DModel(**PIXART_SIGMA).to(device, dtype).eval()
        return bb, 4, 300, 4096
    raise ValueError(family)


def flux_flops(size: int) -> dict:
    """Analytic FLOPs of FLUX.1-schnell's forward and of the capture's extra work at ``size``² (2 FLOPs per MAC)."""
    f = FLUX_SCHNELL
    n, t, w = (size // 16) ** 2, f["text_tokens"], f["width"]
    s = n + t
    plain = 2 * f["params"] * s + (f["layers"] + f["single_layers"]) * 4 * s * s * w
    # per double-stream block read: image q, k and text k projections + the joint scores of the image rows
    per_block = 2 * (2 * n * w * w + t * w * w) + 2 * n * s * w
    capture = f["layers"] * per_block
    return {"plain_tflop": plain / 1e12, "capture_extra_tflop": capture / 1e12, "overhead": capture / plain}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(family, size, device, dtype, repeats):
    bb, channels, t_len, width = build(family, device, dtype)
    lat = size // 8
    z = torch.randn(1, channels, lat, lat, device=device, dtype=dtype)
    text = torch.randn(1, t_len, width, device=device, dtype=dtype)
    if family == "pixart":
        text[:, 40:] = 0  # a 40-token prompt, padding masked

    def call(mode: str) -> None:
        with torch.inference_mode():
            if mode == "plain":
                bb.denoise(z, 100, text)
            else:
                store = AttentionStore(latent_size=(lat, lat))
                with bb.capture(store):
                    bb.denoise(z, 100, text)

    modes = ("plain", "capture")
    rss: dict[str, float] = {}  # on the CPU the peak RSS is the process's high-water mark: read after each warm-up
    for mode in modes:  # untimed: first-call costs (allocation, kernel choice) would fall on whichever runs first
        call(mode)
        rss[mode] = peak_rss_gib()
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    peaks: dict[str, float] = {}
    for _ in range(repeats):  # the modes alternate, so a slow spell of a shared machine hits both
        for mode in modes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            start = time.perf_counter()
            call(mode)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else rss[mode]
            peaks[mode] = max(peaks.get(mode, 0.0), peak)
    out = {mode: {"seconds": statistics.median(times[mode]), "peak_gib": round(peaks[mode], 2)} for mode in modes}
    out["overhead"] = out["capture"]["seconds"] / out["plain"]["seconds"] - 1
    params = sum(p.numel() for p in (bb.unet if family == "sdxl" else bb.transformer).parameters())
    out["params"] = params
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=["sdxl", "sd3", "pixart"])
    ap.add_argument("--size", type=int, default=1024, help="input side (native: 1024 for all four)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = {
        "size": args.size, "device": args.device, "dtype": args.dtype, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
        "statistic": "median of the repeats after one untimed call per mode, modes alternating",
        "families": {}, "flux_schnell_analytic_1024": flux_flops(1024),
    }  # fmt: skip
    for fam in args.families:
        results["families"][fam] = r = measure(fam, args.size, device, dtype, args.repeats)
        print(f"{fam}: plain {r['plain']['seconds']:.2f}s capture {r['capture']['seconds']:.2f}s "
              f"(+{100 * r['overhead']:.0f}%), peak {r['capture']['peak_gib']} GiB, {r['params'] / 1e9:.2f}B params")  # fmt: skip
    print("flux-schnell analytic at 1024²:", results["flux_schnell_analytic_1024"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
