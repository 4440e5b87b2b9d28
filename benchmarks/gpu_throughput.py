"""Throughput on one GPU, in one time-boxed run: the engine against the VAE + denoiser ceiling, every family.

What it measures, in this order (each case is skipped, saying so, when ``--budget-s`` would be overrun; the JSON is
rewritten after every case, so a run cut short keeps what it measured):

1. **SD1.5 architecture** (random weights, full size, 512², ``--dtype``, K = 3 classes, VOC-sized 500x375 images),
   at image batches ``--batches`` (1, 32, 128, 64, 8 in that order): the **ceiling** (the VAE encode of the batch
   and the UNet forward alone, default processors, no capture: UNet batch B for the single-prompt mode, 3B for the
   per-class mode), the **engine** (``segment`` in its default per-class mode) and the **single-prompt mode**, in a
   capture session; images/s, seconds per call (the latency at batch 1), peak GPU memory.
2. **Host syncs** in one ``segment`` call at batch 1 (``torch.cuda.set_sync_debug_mode``), with where they happen.
3. **Maps against the CPU float32 path** on ``--check-images`` images: max abs difference of the score maps and label
   agreement, both modes (goal: <= 1e-2 and >= 0.999).
4. **Loader**: JPEG files decoded and segmented at the single mode's best batch, decoding serially vs prefetched on a
   background thread (:func:`diffsegmenter.batch.prefetch.prefetch`).
5. **Options** at each mode's best batch: channels-last; PAMR post-processing.
6. **Other families** (SDXL, SD3-medium, FLUX.1-schnell, PixArt-Σ; denoiser and VAE at full size, native 1024²;
   :mod:`benchmarks.family_backbones`): ceiling and engine at batch 1 and growing batches until images/s stops
   improving (its best batch). SD1.5's models wait on the CPU meanwhile, so each family's peak memory is its own.
7. **torch.compile** (``--compile MODE``), last: compiling takes minutes and changes the model for good, so it only
   uses what budget the families left (compile time reported).

``--smoke``: tiny models on the CPU, all of the above in seconds (``tests/test_benchmarks_smoke.py`` runs it).
The tables of README.md and benchmarks/README.md are made from the JSON: ``python benchmarks/gpu_tables.py OUT.json``.

    python benchmarks/gpu_throughput.py --json OUT.json --budget-s 480          # on a CUDA machine (gpu_run.sh)
    python benchmarks/gpu_throughput.py --smoke --json /tmp/smoke.json            # CPU, seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.family_backbones import FAMILIES, NATIVE_SIZE, build_backbone  # noqa: E402
from benchmarks.timing import source_digest  # noqa: E402
from diffsegmenter import DiffSegmenter, SegmenterConfig  # noqa: E402

CLASSES = ["cat", "sofa", "dog"]  # K = 3, each one token in the fixture CLIP tokenizer
FAMILY_DTYPE = {"sdxl": torch.float16, "sd3": torch.bfloat16, "flux": torch.bfloat16, "pixart": torch.float16}
MIB = 1024**2


# ---------------------------------------------------------------------------------------------------- plumbing
class Run:
    """The report, the clock and the device; the JSON is rewritten after every case."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device, self.start = args, device, time.perf_counter()
        self.path: Path | None = args.json
        self.data: dict[str, Any] = {"env": _environment(device), "args": _jsonable(vars(args)), "sd15": {},
                                     "families": {}, "skipped": [], "errors": [], "cases": [],
                                     "finished": False}  # fmt: skip

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def allows(self, case: str, need_s: float) -> bool:
        """Whether ``need_s`` more seconds fit the budget; records the skip when not."""
        if self.left() >= need_s:
            return True
        self.data["skipped"].append(
            {"case": case, "reason": f"budget: {self.left():.0f}s left, ~{need_s:.0f}s needed"}
        )
        print(f"  skip {case}: budget ({self.left():.0f}s left, ~{need_s:.0f}s needed)", flush=True)
        self.save()
        return False

    def attempt(self, case: str, fn: Callable[[], Any]) -> Any:
        """``fn()``; an exception is recorded (with its traceback's tail) and None returned. The case names are
        kept in the order they ran (``cases``)."""
        self.data["cases"].append(case)
        try:
            return fn()
        except torch.OutOfMemoryError:
            self.data["skipped"].append({"case": case, "reason": "out of memory"})
            print(f"  {case}: out of memory", flush=True)
        except Exception as exc:  # noqa: BLE001 - one case failing must not lose the others
            self.data["errors"].append({"case": case, "error": repr(exc), "traceback": traceback.format_exc()[-2000:]})
            print(f"  {case}: ERROR {exc!r}", flush=True)
        finally:
            _free(self.device)
            self.save()
        return None

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = None  # the device machine's copy of the working tree has no .git: src_sha256 still names the code
    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "commit": commit,
           "src_sha256": source_digest(),
           "device": str(device), "cudnn_benchmark": torch.backends.cudnn.benchmark}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)  # fmt: skip
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones, and the peak device memory."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return {"seconds": [round(t, 5) for t in times], "median_s": times[len(times) // 2],
            "peak_mib": None if peak is None else round(peak)}  # fmt: skip


def make_images(n: int, height: int, width: int) -> list[np.ndarray]:
    """``n`` smooth random RGB uint8 images (content does not change the cost)."""
    from PIL import Image

    out = []
    for i in range(n):
        small = (np.random.default_rng(i).random((12, 16, 3)) * 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)))
    return out


# ---------------------------------------------------------------------------------------------------- cases
def ceiling(seg: DiffSegmenter, b: int, k: int, size: int, device, repeats: int) -> dict[str, Any]:
    """The VAE encode of ``b`` images and the denoiser alone on ``b`` (single) and ``k*b`` (per-class) samples."""
    bb = seg.backbone
    vae = bb.vae
    vparam = next(vae.parameters())
    pixels = torch.randn(b, 3, size, size, device=device, dtype=vparam.dtype)
    prompt = seg.build_prompts(np.zeros((8, 8, 3), np.uint8), CLASSES[:1])[0]
    text = seg.encode_prompt(prompt)
    with torch.inference_mode():
        z = vae.encode(pixels[:1]).latent_dist.mean
    out: dict[str, Any] = {"batch": b}
    with torch.inference_mode():
        out["vae"] = timed(lambda: vae.encode(pixels).latent_dist.mean, device, repeats)
        for name, n in (("denoiser_single", b), ("denoiser_per_class", k * b)):
            lat = torch.randn(n, *z.shape[1:], device=device, dtype=bb.dtype)
            txt = text.unsqueeze(0).expand(n, -1, -1)
            out[name] = timed(lambda lat=lat, txt=txt: bb.denoise(lat, 100, txt), device, repeats)
    vae_s = out["vae"]["median_s"]
    out["images_per_s_single"] = round(b / (vae_s + out["denoiser_single"]["median_s"]), 3)
    out["images_per_s_per_class"] = round(b / (vae_s + out["denoiser_per_class"]["median_s"]), 3)
    return out


def engine(seg: DiffSegmenter, images: list[np.ndarray], device, repeats: int) -> dict[str, Any]:
    """``segment`` on the images (one call), in a capture session."""
    with seg.session():
        t = timed(lambda: seg.segment(images, classes=CLASSES), device, repeats)
    b = len(images)
    return {"batch": b, **t, "images_per_s": round(b / t["median_s"], 3), "latency_ms": round(1e3 * t["median_s"], 2)}


def count_syncs(seg: DiffSegmenter, images: list[np.ndarray], device) -> dict[str, Any] | None:
    """Synchronising CUDA operations in one ``segment`` call, by the Python line that caused them."""
    if device.type != "cuda":
        return None
    with seg.session():
        seg.segment(images, classes=CLASSES)  # warm (first-call caches)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                seg.segment(images, classes=CLASSES)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())
    return {"total": sum(sites.values()), "sites": dict(sites.most_common(15))}


def check_maps(seg_dev: DiffSegmenter, seg_cpu: DiffSegmenter, images: list[np.ndarray]) -> dict[str, Any]:
    """Score maps and labels of the device path against the CPU float32 path."""
    dev = seg_dev.segment(images, classes=CLASSES)
    cpu = seg_cpu.segment(images, classes=CLASSES)
    diff = max(float(np.abs(a.scores - b.scores).max()) for a, b in zip(dev, cpu))
    agree = float(np.mean([np.mean(a.labels == b.labels) for a, b in zip(dev, cpu)]))
    return {"images": len(images), "max_abs_diff": diff, "label_agreement": agree,
            "pass": diff <= 1e-2 and agree >= 0.999}  # fmt: skip


def loader(seg: DiffSegmenter, image: np.ndarray, batch: int, batches: int, device) -> dict[str, Any]:
    """JPEG files decoded and segmented in batches: decoding in turn vs prefetched on a background thread."""
    from PIL import Image

    from diffsegmenter.batch.prefetch import prefetch
    from diffsegmenter.images import load_image

    out: dict[str, Any] = {"batch": batch, "images": batch * batches}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(batch * batches):
            p = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(np.roll(image, i, axis=1)).save(p, quality=90)
            paths.append(p)
        groups = [paths[i : i + batch] for i in range(0, len(paths), batch)]

        def decode(group):
            return [load_image(p) for p in group]

        with seg.session():
            seg.segment(decode(groups[0]), classes=CLASSES)  # warm
            for name, depth in (("serial", 0), ("prefetch", 2)):
                _sync(device)
                t0 = time.perf_counter()
                for imgs in prefetch(groups, decode, depth=depth):
                    seg.segment(imgs, classes=CLASSES)
                _sync(device)
                out[f"{name}_images_per_s"] = round(len(paths) / (time.perf_counter() - t0), 3)
        t0 = time.perf_counter()
        for g in groups:
            decode(g)
        out["decode_only_images_per_s"] = round(len(paths) / (time.perf_counter() - t0), 3)
    return out


# ---------------------------------------------------------------------------------------------------- sections
def _best(cases: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [c for c in cases if "images_per_s" in c]
    return max(ok, key=lambda c: c["images_per_s"]) if ok else None


def sd15_section(run: Run, dtype: torch.dtype) -> tuple[dict[str, DiffSegmenter], list[np.ndarray]]:
    """Ceiling, engine and single-prompt mode over the batches; syncs; the CPU check; the loader; options. Returns
    the two modes' segmenters and the images, for :func:`compile_section`."""
    args, device, rec = run.args, run.device, run.data["sd15"]
    t0 = time.perf_counter()
    if args.smoke:
        from tests.conftest import build_tiny_components

        parts = build_tiny_components(seed=0)
        size, (h, w) = 32, (40, 48)
    else:
        from benchmarks.models import build_sd15

        parts = build_sd15(device="cpu", dtype=torch.float32, seed=0, attention_sharpness=4.0)
        size, (h, w) = 512, (375, 500)
    names = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
    cpu_parts = [parts[n] for n in names]
    dev_parts = [copy.deepcopy(p).to(device, dtype) if isinstance(p, torch.nn.Module) else p for p in cpu_parts]
    dev_parts[4] = copy.deepcopy(cpu_parts[4])  # its own scheduler: add_noise moves tables to the latents' device
    cfg = SegmenterConfig(resolution=size)
    seg = {"per_class": DiffSegmenter(*dev_parts, config=cfg),
           "single": DiffSegmenter(*dev_parts, config=cfg.replace(prompt_mode="single"))}  # fmt: skip
    rec.update(size=size, image=[h, w], k=len(CLASSES), dtype=str(dtype).replace("torch.", ""),
               build_s=round(time.perf_counter() - t0, 1), ceiling=[], per_class=[], single=[])  # fmt: skip
    images = make_images(max(args.batches), h, w)
    per_image = 0.05 if not args.smoke else 0.01  # seconds per image per call, refined as cases are measured
    for b in args.batches:
        need = (1 + args.repeats) * b * per_image * 6 + 5
        if not run.allows(f"sd15 batch {b}", need):
            continue
        t_case = time.perf_counter()
        c = run.attempt(
            f"sd15 ceiling batch {b}", lambda b=b: ceiling(seg["per_class"], b, 3, size, device, args.repeats)
        )
        if c:
            rec["ceiling"].append(c)
        for mode in ("per_class", "single"):
            e = run.attempt(f"sd15 {mode} batch {b}", lambda b=b, mode=mode: engine(seg[mode], images[:b], device,
                                                                                       args.repeats))  # fmt: skip
            if e:
                rec[mode].append(e)
                print(f"  sd15 {mode:9s} batch {b:4d}: {e['images_per_s']:8.2f} images/s, {e['latency_ms']:8.1f} ms "
                      f"per call" + (f" (ceiling {c['images_per_s_' + mode]:.2f})" if c else ""), flush=True)  # fmt: skip
        per_image = max(per_image * 0.25, (time.perf_counter() - t_case) / ((1 + args.repeats) * b * 6))
    rec["syncs"] = {mode: run.attempt(f"syncs {mode}", lambda mode=mode: count_syncs(seg[mode], images[:1], device))
                    for mode in ("per_class", "single")}  # fmt: skip
    if run.allows("check against the CPU float32 path", 60 if not args.smoke else 2):
        cpu_seg = {"per_class": DiffSegmenter(*cpu_parts, config=cfg),
                   "single": DiffSegmenter(*cpu_parts, config=cfg.replace(prompt_mode="single"))}  # fmt: skip
        rec["check"] = {mode: run.attempt(f"check {mode}", lambda mode=mode: check_maps(
            seg[mode], cpu_seg[mode], images[: args.check_images])) for mode in ("per_class", "single")}  # fmt: skip
    del cpu_parts
    best = _best(rec["single"])
    if best and run.allows("loader", 20 if not args.smoke else 2):
        rec["loader"] = run.attempt("loader", lambda: loader(seg["single"], images[0], best["batch"], 4, device))
    options_section(run, seg, images)
    return seg, images


def _place(seg: dict[str, DiffSegmenter], device: torch.device | str) -> None:
    """Move SD1.5's models (shared by both modes' segmenters) to ``device``."""
    backbone = seg["single"].backbone
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.to(device)
    _free(torch.device(device) if isinstance(device, str) else device)


def options_section(run: Run, seg: dict[str, DiffSegmenter], images: list[np.ndarray]) -> None:
    """Channels-last at each mode's best batch; PAMR post-processing (``refine="pamr"``) at the single mode's best
    batch."""
    args, device, rec = run.args, run.device, run.data["sd15"]
    rec["options"] = []
    unet, vae = seg["single"].backbone.unet, seg["single"].backbone.vae
    for mode in ("single", "per_class"):
        best = _best(rec[mode])
        if not best or not run.allows(f"channels-last {mode}", 4 * best["median_s"] * (1 + args.repeats) + 5):
            continue

        def channels_last(mode=mode, b=best["batch"]):
            seg[mode].optimize(channels_last=True)
            try:
                return engine(seg[mode], images[:b], device, args.repeats)
            finally:
                unet.to(memory_format=torch.contiguous_format)
                vae.to(memory_format=torch.contiguous_format)

        e = run.attempt(f"channels-last {mode}", channels_last)
        if e:
            rec["options"].append({"option": "channels_last", "mode": mode, **e})
    best = _best(rec["single"])
    if best and run.allows("refine pamr single", 2 * best["median_s"] * (1 + args.repeats) + 5):
        single = seg["single"]
        pamr = DiffSegmenter(backbone=single.backbone, config=single.config.replace(refine="pamr"))
        e = run.attempt("refine pamr single", lambda b=best["batch"]: engine(pamr, images[:b], device, args.repeats))
        if e:
            rec["options"].append({"option": "refine=pamr", "mode": "single", **e})


def compile_section(run: Run, seg: dict[str, DiffSegmenter], images: list[np.ndarray]) -> None:
    """torch.compile (single mode, batch 1 and its best batch), when ``--compile`` is given and budget is left."""
    args, device, rec = run.args, run.device, run.data["sd15"]
    best = _best(rec["single"])
    if not args.compile or not best:
        return
    rec.setdefault("options", [])
    if not run.allows(f"compile {args.compile}", args.compile_need_s):
        return
    from torch import _dynamo

    from diffsegmenter.runtime import optimize_backbone

    _dynamo.config.automatic_dynamic_shapes = False  # one static graph per batch shape
    _dynamo.config.cache_size_limit = 16
    optimize_backbone(seg["single"].backbone, compile=args.compile, compile_vae=args.compile_vae,
                      backend=args.compile_backend)  # fmt: skip
    for b in sorted({1, best["batch"]}):
        if not run.allows(f"compile {args.compile} batch {b}", 30):
            break

        def compiled(b=b):
            t0 = time.perf_counter()
            with seg["single"].session():
                seg["single"].segment(images[:b], classes=CLASSES)  # compiles this shape
            _sync(device)
            first = time.perf_counter() - t0
            return {"first_call_s": round(first, 1), **engine(seg["single"], images[:b], device, args.repeats)}

        e = run.attempt(f"compile {args.compile} batch {b}", compiled)
        if e:
            rec["options"].append({"option": f"compile={args.compile}", "mode": "single", **e})


def family_section(run: Run, family: str) -> None:
    """A family's ceiling and engine at batch 1 and growing batches until images/s stops improving."""
    args, device = run.args, run.device
    dtype = torch.float32 if args.smoke else FAMILY_DTYPE[family]
    t0 = time.perf_counter()
    bb, facts = build_backbone(family, device, dtype, tiny=args.smoke)
    size = 32 if args.smoke else NATIVE_SIZE[family]
    seg = DiffSegmenter(backbone=bb, config=SegmenterConfig().replace(**bb.family_defaults(), resolution=size))
    rec = run.data["families"][family] = {**facts, "size": size, "build_s": round(time.perf_counter() - t0, 1),
                                          "ceiling": [], "per_class": []}  # fmt: skip
    images = make_images(max(args.family_batches), *((40, 48) if args.smoke else (375, 500)))
    best = 0.0
    for b in args.family_batches:
        last = rec["per_class"][-1]["median_s"] if rec["per_class"] else (0.5 if not args.smoke else 0.05)
        # the next batch costs about twice the last one's call, for the engine and again for the ceiling
        if not run.allows(f"{family} batch {b}", 2 * 2 * (1 + args.repeats) * last + 5):
            break
        c = run.attempt(f"{family} ceiling batch {b}", lambda b=b: ceiling(seg, b, 3, size, device, args.repeats))
        if c:
            rec["ceiling"].append(c)
        e = run.attempt(f"{family} per_class batch {b}", lambda b=b: engine(seg, images[:b], device, args.repeats))
        if not e:
            break
        rec["per_class"].append(e)
        print(f"  {family:6s} batch {b:3d}: {e['images_per_s']:7.2f} images/s, {e['latency_ms']:8.1f} ms per call"
              + (f" (ceiling {c['images_per_s_per_class']:.2f})" if c else ""), flush=True)  # fmt: skip
        if e["images_per_s"] < 1.05 * best:
            break
        best = max(best, e["images_per_s"])


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here (rewritten after every case)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop adding cases after this many seconds "
                    "(default 480; --smoke 300)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: every code path in seconds")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                    help="SD1.5's dtype (default float16; float32 with --smoke); other families use their own")  # fmt: skip
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="SD1.5 image batches (default 1 32 128 64 8)")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--family-batches", type=int, nargs="+", default=None, help="default 1 2 4 8 16")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per case (median; default 3, smoke 1)")
    ap.add_argument("--check-images", type=int, default=2, help="images compared with the CPU float32 path")
    ap.add_argument("--compile", default=None, help="also time torch.compile in this mode (e.g. default)")
    ap.add_argument("--compile-need-s", type=float, default=None,
                    help="budget the compile cases need to start (default 240; --smoke 5)")  # fmt: skip
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: tests)")
    ap.add_argument("--compile-vae", action=argparse.BooleanOptionalAction, default=True,
                    help="compile the VAE encoder too")  # fmt: skip
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.device = args.device or ("cpu" if smoke else "cuda")
    args.dtype = args.dtype or ("float32" if smoke else "float16")
    args.budget_s = args.budget_s if args.budget_s is not None else (300.0 if smoke else 480.0)
    args.batches = args.batches or ([1, 2] if smoke else [1, 32, 128, 64, 8])
    args.family_batches = args.family_batches or ([1, 2] if smoke else [1, 2, 4, 8, 16])
    args.repeats = args.repeats or (1 if smoke else 3)
    args.compile_need_s = args.compile_need_s if args.compile_need_s is not None else (5.0 if smoke else 240.0)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke (tiny models on the CPU)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per case: let cuDNN pick its fastest convolutions
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)  # tiny models on a shared CPU: more threads only stall (restored at the end)
    try:
        return _main(args, device)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    run = Run(args, device)
    print(f"gpu_throughput: {run.data['env'].get('device_name')} ({device}), budget {args.budget_s:.0f}s"
          + (" [smoke]" if args.smoke else ""), flush=True)  # fmt: skip
    held = run.attempt("sd15", lambda: sd15_section(run, getattr(torch, args.dtype)))
    if held and args.families:
        run.attempt("park sd15 on the cpu", lambda: _place(held[0], "cpu"))
    for family in args.families:
        if run.allows(f"family {family}", 30 if not args.smoke else 1):
            run.attempt(f"family {family}", lambda family=family: family_section(run, family))
    if held and args.compile:  # last: it takes minutes and changes the model for good
        run.attempt("compile", lambda: (_place(held[0], device), compile_section(run, *held)))
    run.data["finished"] = True
    run.save()
    from benchmarks.gpu_tables import render

    print(render(run.data))
    return run.data


if __name__ == "__main__":
    main()
