"""Speed and memory of the DiffSegmenter engine against the released code's cost structure, on full-size SD1.5.

Builds the Stable Diffusion v1.5 architecture (UNet ~860M, VAE, CLIP ViT-L/14 text encoder) and, for captioner runs,
BLIP-large, all with random weights from ``benchmarks/configs`` (nothing is downloaded; random weights cost what
trained ones cost, see ``benchmarks/models.py``). Then, in one process, on the same image and classes:

* ``reference``: :class:`benchmarks.reference.ReferencePipeline`, the released code's per-class loop (a
  ``[uncond, cond]`` UNet pass with eager attention everywhere, all maps kept, explicit N x N self-attention, one
  captioner call per class);
* ``engine``: :class:`diffsegmenter.DiffSegmenter` with its defaults (one conditional-only UNet batch for all classes,
  capture only where read, implicit self-attention completion, one batched captioner call per image);
* ``single``: the engine with ``prompt_mode="single"`` (all class names in one prompt, one UNet sample per image).

For each K it reports seconds per image (median of the repeats; runs of the pipelines are interleaved so that load
from other processes hits them alike), the speed-up over the reference, the peak memory each adds above the loaded
weights, and the largest absolute difference between the engine's and the reference's score maps (same method, so
it must be ~0; the single-prompt mode is a different method and is not compared). ``--vocab-curve`` adds the cost
for K = 1, 10, 50, 171 (chunked UNet batches). On a GPU it runs in fp16 and adds images/s at batch 1 and at the best
batch size, with peak GPU memory.

Quick check::

    python benchmarks/speed.py --size 256 --ks 1 3 --no-captioner

Full CPU run (512², K = 1, 3, 10, captioner on at K = 3; repeats are lowered to fit ``--budget-min`` = 14, and the
log says so; ~15 minutes on one core, see benchmarks/README.md; ``--threads 1`` on a shared machine)::

    python benchmarks/speed.py --json speed512.json

The last line is ``speedup_vs_reference=<ratio>`` (K=3, default engine vs reference, captioner off).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.models import build_blip_large_captioner, build_sd15, count_parameters  # noqa: E402
from benchmarks.reference import ReferencePipeline  # noqa: E402
from benchmarks.timing import Measurement, load_average, run_measured, source_digest  # noqa: E402
from diffsegmenter import DiffSegmenter, SegmenterConfig  # noqa: E402

#: Class names for K <= 10: each one token in the fixture tokenizer (as VOC names are single CLIP tokens).
NAMES = ["cat", "sofa", "dog", "person", "car", "bus", "bird", "plant", "monitor", "tv"]
_NOUNS = [
    "cat", "sofa", "dog", "person", "car", "bus", "bird", "plant", "monitor", "tv", "circle", "square", "triangle",
    "cross", "light", "picture", "photo", "background",
]  # fmt: skip
_ADJECTIVES = ["red", "blue", "green", "yellow", "left", "right", "top", "bottom", "flying", "sitting", "standing"]
MIB = 1024**2


def class_names(k: int) -> list[str]:
    """K distinct class names of one or two whole-word tokens.

    Up to 10: :data:`NAMES`. Beyond: the 18 fixture nouns, then adjective-noun pairs ("red cat"), so that a large
    vocabulary averages under two tokens per name, like COCO-Stuff's 171 names under SD's CLIP BPE (single-prompt
    packing, and so its cost, depends on that token count; per-class cost does not).
    """
    if k <= len(NAMES):
        return NAMES[:k]
    pool = _NOUNS + [f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    if k > len(pool):
        raise ValueError(f"at most {len(pool)} synthetic class names, asked for {k}")
    return pool[:k]


def make_image(height: int = 375, width: int = 500, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image of VOC-like size (content does not change the cost)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


# ---------------------------------------------------------------------------------------------------- pipelines
@dataclass
class Pipelines:
    """The models and the pipelines run on them."""

    engine: DiffSegmenter
    single: DiffSegmenter
    reference: ReferencePipeline
    engine_cap: DiffSegmenter | None = None
    reference_cap: ReferencePipeline | None = None

    def run(self, name: str, image: np.ndarray, classes: list[str], seed: int = 0) -> dict[str, Any]:
        """Run one pipeline on one image; returns ``scores`` (K, H, W) and ``prompts``."""
        if name in ("reference", "reference+captioner"):
            ref = self.reference if name == "reference" else self.reference_cap
            return ref.segment(image, classes, seed=seed)
        seg = {"engine": self.engine, "single": self.single, "engine+captioner": self.engine_cap}[name]
        res = seg.segment(image, classes=classes, seed=seed)
        return {"scores": res.scores, "prompts": res.prompts}

    def run_batch(self, name: str, images: list[np.ndarray], classes: list[str], seed: int = 0) -> None:
        """An engine pipeline on several images at once (all their UNet samples batched)."""
        seg = {"engine": self.engine, "single": self.single}[name]
        seg.segment(images, classes=classes, seed=seed)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Pipelines, dict[str, Any]]:
    """Build the random-weight models and the pipelines; returns them and facts for the report."""
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    parts = build_sd15(device=device, dtype=dtype, seed=0, attention_sharpness=args.attention_sharpness)
    info["build_sd15_s"] = round(time.perf_counter() - t0, 1)
    info["params_M"] = {k: round(count_parameters(parts[k]) / 1e6, 1) for k in ("unet", "vae", "text_encoder")}
    cfg = SegmenterConfig(resolution=args.size)
    comps = (parts["vae"], parts["unet"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"])
    engine = DiffSegmenter(*comps, config=cfg)
    single = DiffSegmenter(*comps, config=cfg.replace(prompt_mode="single"))
    pipes = Pipelines(engine=engine, single=single, reference=ReferencePipeline(engine))
    if args.captioner:
        t0 = time.perf_counter()
        cap = build_blip_large_captioner(device=device, dtype=dtype, seed=0, max_length=cfg.caption_max_tokens)
        info["build_blip_s"] = round(time.perf_counter() - t0, 1)
        info["params_M"]["blip"] = round(count_parameters(cap.model) / 1e6, 1)
        pipes.engine_cap = DiffSegmenter(*comps, config=cfg, captioner=cap)
        pipes.reference_cap = ReferencePipeline(pipes.engine_cap)
    return pipes, info


# ---------------------------------------------------------------------------------------------------- plan
@dataclass
class Job:
    """One workload: K classes, the pipelines run on it, and how many interleaved repeats."""

    mode: str  # "default" (captioner off) or "captioner"
    k: int
    pipelines: list[str]
    repeats: int
    results: dict[str, Measurement] = field(default_factory=dict)
    warmup: bool = False  # one untimed call per pipeline first (on CUDA: cuDNN picks kernels per shape)

    def estimate(self, unit: dict[str, float]) -> float:
        """Seconds this job should take (its warm-up included), from per-class costs measured at K=1."""
        total = 0.0
        for p in self.pipelines:
            if p == "single":
                total += unit.get(p, 0.0) * max(1, math.ceil(self.k / 20))
            else:
                total += unit.get(p, 0.0) * self.k
        return total * (self.repeats + int(self.warmup))


def make_plan(args: argparse.Namespace) -> list[Job]:
    """The jobs of a run: each K with the default pipelines, then the captioner comparison."""
    base = ["reference", "engine"] + (["single"] if args.single_prompt else [])
    jobs = []
    for k in args.ks:
        reps = args.repeats_large if k >= args.large_k else args.repeats
        jobs.append(Job("default", k, list(base), reps))
    if args.captioner:
        for k in args.captioner_ks:
            jobs.append(Job("captioner", k, ["reference+captioner", "engine+captioner"], args.captioner_repeats))
    return jobs


def _remaining(jobs: list[Job], unit: dict[str, float], current: int, done: int) -> float:
    """Estimated seconds left: the current job's repeats after ``done`` plus every later job."""
    cur = jobs[current]  # its warm-up, if any, is behind it
    left = cur.estimate(unit) / max(cur.repeats + int(cur.warmup), 1) * max(cur.repeats - done, 0)
    return left + sum(j.estimate(unit) for j in jobs[current + 1 :])


def fit_to_budget(jobs: list[Job], unit: dict[str, float], budget_s: float, current: int, done: int) -> list[str]:
    """Lower repeats until the rest of the plan fits ``budget_s`` seconds.

    The K=3 default job (the headline figure) is lowered last; no job goes below one repeat, nor the current job
    below the ``done`` repeats it has run.

    Returns:
        `list[str]`: the changes made, for the log.
    """
    notes = []
    order = sorted(
        (j for j in jobs[current:] if j.repeats > 1),
        key=lambda j: (j.mode == "default" and j.k == 3, -j.estimate(unit) / j.repeats),
    )
    for job in order:
        floor = max(1, done) if job is jobs[current] else 1
        while job.repeats > floor and _remaining(jobs, unit, current, done) > budget_s:
            job.repeats -= 1
            notes.append(f"repeats of {job.mode} K={job.k} lowered to {job.repeats} to fit the time budget")
    left = _remaining(jobs, unit, current, done)
    if left > budget_s:
        notes.append(
            f"ETA {left:.0f}s exceeds the remaining budget {budget_s:.0f}s even with one repeat: lower --size "
            "(e.g. 384 or 256), drop --captioner or the K=10 job, or run on free cores"
        )
    return notes


# ---------------------------------------------------------------------------------------------------- reporting
def _fmt_mib(b: int) -> str:
    return f"{b / MIB:8.0f}"


def summarise(jobs: list[Job]) -> list[dict[str, Any]]:
    """One row per (job, pipeline) with the speed-up and the map difference against the job's reference."""
    rows = []
    for job in jobs:
        ref_name = "reference" if job.mode == "default" else "reference+captioner"
        ref = job.results.get(ref_name)
        for name, m in job.results.items():
            row: dict[str, Any] = {
                "mode": job.mode,
                "K": job.k,
                "pipeline": name,
                "repeats": len(m.seconds),
                "seconds": [round(s, 3) for s in m.seconds],
                "s_per_image": round(m.median, 3),
                "speedup": None,
                "peak_extra_MiB": round(m.peak_extra / MIB, 1),
                "peak_total_MiB": round(m.peak_total / MIB, 1),
                "memory_method": m.memory_method,
                "max_abs_diff": None,
            }
            if ref is not None and name != ref_name:
                row["speedup"] = round(ref.median / m.median, 2)
                if name != "single":
                    a, b = ref.output["scores"], m.output["scores"]
                    row["max_abs_diff"] = float(np.abs(a - b).max()) if a.size else 0.0
                    row["prompts_equal"] = ref.output["prompts"] == m.output["prompts"]
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], size: int) -> None:
    """The results table."""
    print(f"\nresults at {size}x{size} (seconds per image = median of the repeats)")
    print(f"{'mode':10s} {'K':>3s} {'pipeline':20s} {'n':>2s} {'s/image':>9s} {'speed-up':>8s} "
          f"{'peak+MiB':>8s} {'peakMiB':>8s} {'max|dmap|':>9s}")  # fmt: skip
    for r in rows:
        sp = f"{r['speedup']:7.2f}x" if r["speedup"] else f"{'':8s}"
        diff = f"{r['max_abs_diff']:9.1e}" if r["max_abs_diff"] is not None else f"{'':9s}"
        print(
            f"{r['mode']:10s} {r['K']:3d} {r['pipeline']:20s} {r['repeats']:2d} {r['s_per_image']:9.2f} {sp} "
            f"{_fmt_mib(r['peak_extra_MiB'] * MIB)} {_fmt_mib(r['peak_total_MiB'] * MIB)} {diff}"
        )


# ---------------------------------------------------------------------------------------------------- runs
def run_jobs(
    pipes: Pipelines,
    jobs: list[Job],
    image: np.ndarray,
    device: torch.device,
    budget_s: float,
    log: list[str],
    blip_s: float = 0.0,
) -> dict[str, float]:
    """Run the plan, interleaving pipelines within each repeat; returns the last per-class costs measured.

    After the first repeat of each job, the repeats of the jobs still to come are lowered if the ETA exceeds the
    remaining budget (``blip_s``, one BLIP call's seconds, seeds the captioner jobs' estimate).
    """
    unit: dict[str, float] = {}
    t_start = time.perf_counter()
    for job in jobs:
        job.warmup = device.type == "cuda"
    for ji, job in enumerate(jobs):
        classes = class_names(job.k)
        for name in job.pipelines:
            job.results[name] = Measurement()
            if job.warmup:  # cuDNN picks its kernels per shape: a new K's first call is not timed
                pipes.run(name, image, classes)
        r = 0
        while r < job.repeats:
            for name in job.pipelines:
                m = job.results[name]
                run_measured(lambda name=name, classes=classes: pipes.run(name, image, classes), m, device)
                # per-class (per-image for single) cost, refined as measurements come in
                unit[name] = m.seconds[-1] / (1 if name == "single" else job.k)
            r += 1
            elapsed = time.perf_counter() - t_start
            if r == 1:
                # until measured: the captioner adds one BLIP call per class (reference) or ~half of one (engine)
                if "reference" in unit and "reference+captioner" not in unit:
                    unit["reference+captioner"] = unit["reference"] + blip_s
                if "engine" in unit and "engine+captioner" not in unit:
                    unit["engine+captioner"] = unit["engine"] + 0.5 * blip_s
                notes = fit_to_budget(jobs, unit, budget_s - elapsed, ji, r)
                for n in notes:
                    print("  plan:", n)
                log.extend(notes)
            eta = _remaining(jobs, unit, ji, r)
            times = ", ".join(f"{n} {job.results[n].seconds[-1]:.1f}s" for n in job.pipelines)
            print(
                f"  [{elapsed:6.0f}s] {job.mode} K={job.k} repeat {r}/{job.repeats}: {times}  (ETA {eta:.0f}s)",
                flush=True,
            )
    return unit


def throughput(pipes: Pipelines, image: np.ndarray, device: torch.device, batches: list[int], k: int) -> dict:
    """Images/s of the engine pipelines at several image batch sizes (GPU), and of the reference at batch 1."""
    classes = class_names(k)
    out: dict[str, Any] = {}
    m = Measurement()
    for _ in range(3):
        run_measured(lambda: pipes.run("reference", image, classes), m, device)
    out["reference"] = {"1": {"images_per_s": round(1 / m.median, 3), "peak_MiB": round(m.peak_total / MIB)}}
    for name in ("engine", "single"):
        out[name] = {}
        best = 0.0
        for b in batches:
            imgs = [image] * b
            m = Measurement()
            try:
                pipes.run_batch(name, imgs, classes)  # warm-up at this shape
                for _ in range(3):
                    run_measured(lambda imgs=imgs, name=name: pipes.run_batch(name, imgs, classes), m, device)
            except torch.OutOfMemoryError:
                out[name][str(b)] = "out of memory"
                break
            ips = b / m.median
            out[name][str(b)] = {"images_per_s": round(ips, 3), "peak_MiB": round(m.peak_total / MIB)}
            print(f"  throughput {name} K={k} batch {b:3d}: {ips:7.2f} images/s, peak {m.peak_total / MIB:.0f} MiB")
            if ips < best * 0.97 and b >= 8:
                break
            best = max(best, ips)
        out[name]["best_images_per_s"] = round(best, 3)
    return out


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``seconds = a + b * K`` through measured (K, seconds) points; ``(0, s/K)`` from one point."""
    ks = np.array(sorted(points), dtype=float)
    ts = np.array([points[int(k)] for k in ks])
    if len(ks) == 1:
        return 0.0, float(ts[0] / ks[0])
    b, a = np.polyfit(ks, ts, 1)
    return float(a), float(b)


def vocab_curve(
    pipes: Pipelines,
    image: np.ndarray,
    device: torch.device,
    ks: list[int],
    batch_size: int,
    ref_line: tuple[float, float] | None,
) -> list[dict[str, Any]]:
    """Cost for large vocabularies: engine (chunked UNet batches of ``batch_size``) and single-prompt mode.

    The reference is not run at large K (hours on a CPU); its cost is linear in K by construction (one identical
    per-class pass each), so it is extrapolated from ``ref_line`` = (seconds per image, seconds per class).
    """
    rows = []
    engine = pipes.engine
    old = (engine.config, pipes.single.config)
    engine.config = engine.config.replace(batch_size=batch_size)
    pipes.single.config = pipes.single.config.replace(batch_size=batch_size)
    try:
        for k in ks:
            classes = class_names(k)
            n_prompts = len(pipes.single.build_prompts(image, classes))
            row: dict[str, Any] = {"K": k, "single_prompts": n_prompts, "reference_s_extrapolated": None}
            for name in ("engine", "single"):
                m = Measurement()
                if device.type == "cuda":  # one untimed call at this K (new shapes), as run_jobs does
                    pipes.run(name, image, classes)
                run_measured(lambda name=name, classes=classes: pipes.run(name, image, classes), m, device)
                row[f"{name}_s"] = round(m.median, 2)
                row[f"{name}_peak_extra_MiB"] = round(m.peak_extra / MIB)
            if ref_line:
                ref_s = ref_line[0] + ref_line[1] * k
                row["reference_s_extrapolated"] = round(ref_s, 1)
                row["engine_speedup"] = round(ref_s / row["engine_s"], 2)
                row["single_speedup"] = round(ref_s / row["single_s"], 2)
            print(
                f"  vocab K={k:4d}: engine {row['engine_s']:8.1f}s (peak +{row['engine_peak_extra_MiB']} MiB)  "
                f"single {row['single_s']:7.1f}s in {n_prompts} prompt(s) (peak +{row['single_peak_extra_MiB']} MiB)"
                + (f"  reference ~{row['reference_s_extrapolated']}s (extrapolated)" if ref_line else ""),
                flush=True,
            )
            rows.append(row)
    finally:
        engine.config, pipes.single.config = old
    return rows


def profile_engine(pipes: Pipelines, image: np.ndarray, k: int, device: torch.device, top: int = 25) -> str:
    """torch.profiler summary of one default-engine run: the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    classes = class_names(k)
    with profile(activities=activities) as prof:
        pipes.run("engine", image, classes)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description="Engine vs released-code cost structure on full-size SD1.5 with random weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--size", type=int, default=512, help="image side the models run at (512 = SD1.5's)")
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 3, 10], help="numbers of classes K (may be empty)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline for K < --large-k (median)")
    ap.add_argument("--repeats-large", type=int, default=1, help="timed runs for K >= --large-k")
    ap.add_argument("--large-k", type=int, default=10, help="K from which --repeats-large applies")
    ap.add_argument("--single-prompt", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the engine's single-prompt mode (prompt_mode='single')")  # fmt: skip
    ap.add_argument("--captioner", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare with BLIP-large on (reference: one call per class; engine: one per image)")  # fmt: skip
    ap.add_argument("--captioner-ks", type=int, nargs="+", default=[3], help="K values run with the captioner on")
    ap.add_argument("--captioner-repeats", type=int, default=1, help="timed runs per captioner measurement")
    ap.add_argument("--vocab-curve", action="store_true", help="add the large-vocabulary cost curve")
    ap.add_argument("--vocab-ks", type=int, nargs="+", default=[1, 10, 50, 171], help="K values of the curve")
    ap.add_argument("--batch-size", type=int, default=8, help="UNet samples per forward in the vocabulary curve")
    ap.add_argument("--attention-sharpness", type=float, default=4.0,
                    help="scale of the random UNet's query/key projections (1 = plain init; see models.py)")  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="auto: float16 on GPU, float32 on CPU")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                    help="image batch sizes tried for GPU throughput")  # fmt: skip
    ap.add_argument("--budget-min", type=float, default=14.0,
                    help="time budget in minutes: repeats are lowered (never below 1) when the ETA exceeds it")  # fmt: skip
    ap.add_argument("--throughput", action="store_true",
                    help="measure images/s over --gpu-batches also on CPU (always done on a GPU)")  # fmt: skip
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler summary of one engine run (K=3)")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report (also written with ``--json``)."""
    args = parse_args(argv)
    t_all = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = {
        "auto": torch.float16 if device.type == "cuda" else torch.float32,
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }[args.dtype]
    report: dict[str, Any] = {
        "size": args.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": importlib.metadata.version("diffusers"),
        "src_sha256": source_digest(),
        "load_average_start": load_average(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tokenizer_note": "fixture CLIP tokenizer (278 tokens, not SD's 49,408); the text encoder still runs 77 "
        "positions with the real 49,408 x 768 embedding, so its cost is unchanged",
    }
    print(
        f"DiffSegmenter speed benchmark: size {args.size}x{args.size}, {report['device_name']} ({device}), "
        f"{report['dtype']}, {report['threads']} threads, load average {report['load_average_start']}"
    )
    cores = os.cpu_count() or 1
    if device.type == "cpu" and report["threads"] > 1 and (report["load_average_start"] or (0,))[0] > 0.5:
        print(
            f"note: the load average is {report['load_average_start'][0]:.1f} on {cores} cores before we start: "
            "other processes compete, and multi-threaded runs then stall on every parallel region; --threads 1 "
            "gives steadier timings on a shared machine"
        )
    if args.size < 128:
        print(
            f"note: at {args.size}x{args.size} the coarsest attention level is 1x1 or smaller: its map is constant and "
            "min-max of float rounding noise can make the pipelines' maps differ; use --size 128 or more"
        )
    pipes, info = build(args, device, dtype)
    report.update(info)
    print(f"built random-weight models in {info.get('build_sd15_s')}s (+BLIP {info.get('build_blip_s', '-')}s): "
          f"{info['params_M']} M parameters")  # fmt: skip
    image = make_image()
    print(f"image {image.shape[1]}x{image.shape[0]} RGB, resized to {args.size}x{args.size} "
          f"(latent {args.size // 8}x{args.size // 8})")  # fmt: skip
    blip_s = 0.0
    if args.warmup:
        t0 = time.perf_counter()
        pipes.run("engine", image, class_names(1))
        print(f"warm-up, engine K=1: {time.perf_counter() - t0:.1f}s")
        if pipes.engine_cap is not None:
            t0 = time.perf_counter()
            pipes.engine_cap.captioner.continue_captions(image, ["a photograph of cat"])
            blip_s = time.perf_counter() - t0
            print(f"warm-up, one BLIP-large call (20 tokens): {blip_s:.1f}s")
    jobs = make_plan(args)
    log: list[str] = []
    budget_s = args.budget_min * 60 - (time.perf_counter() - t_all)
    print("plan: " + "; ".join(f"{j.mode} K={j.k} x{j.repeats} [{', '.join(j.pipelines)}]" for j in jobs))
    if jobs:
        run_jobs(pipes, jobs, image, device, budget_s, log, blip_s)
    rows = summarise(jobs)
    for job in jobs:
        for name, m in job.results.items():
            if m.output is not None and not np.isfinite(m.output["scores"]).all():
                print(f"WARNING: {name} K={job.k} produced non-finite scores (dtype {report['dtype']})")
                report.setdefault("non_finite_scores", []).append({"pipeline": name, "K": job.k})
    report["results"] = rows
    report["plan_changes"] = log
    if rows:
        print_table(rows, args.size)
    if device.type == "cuda" or args.throughput:
        print("\nthroughput (K=3)")
        report["throughput"] = throughput(pipes, image, device, args.gpu_batches, 3)
    if args.vocab_curve:
        points = {r["K"]: r["s_per_image"] for r in rows if r["mode"] == "default" and r["pipeline"] == "reference"}
        for k in (1, 2):
            if len(points) < 2 and k not in points:
                m = Measurement()
                run_measured(lambda k=k: pipes.run("reference", image, class_names(k)), m, device)
                points[k] = m.median
        ref_line: tuple[float, float] | None = fit_line(points)
        report["reference_line_s"] = {"per_image": round(ref_line[0], 2), "per_class": round(ref_line[1], 2)}
        if ref_line[1] <= 0:  # the reference runs one pass per class: a cost that falls with K is noise
            print(f"WARNING: the reference's cost per class came out {ref_line[1]:.2f}s from K={sorted(points)} "
                  "(a loaded machine?); it is not extrapolated")  # fmt: skip
            report["reference_line_s"]["rejected"] = "per-class cost <= 0: not extrapolated"
            ref_line = None
        print(f"\nlarge-vocabulary curve (engine batch_size={args.batch_size}; reference "
              + (f"extrapolated as {ref_line[0]:.1f}s + K x {ref_line[1]:.1f}s from its runs at K={sorted(points)})"
                 if ref_line else "not extrapolated)"))  # fmt: skip
        report["vocab_curve"] = vocab_curve(pipes, image, device, args.vocab_ks, args.batch_size, ref_line)
    if args.profile:
        table = profile_engine(pipes, image, 3, device)
        print("\ntorch.profiler, one default-engine run at K=3:\n" + table)
        report["profile_engine_k3"] = table
    report["load_average_end"] = load_average()
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    headline = next((r for r in rows if r["mode"] == "default" and r["K"] == 3 and r["pipeline"] == "engine"), None)
    report["speedup_vs_reference"] = headline["speedup"] if headline else None
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    print(f"total {report['total_s']:.0f}s at {args.size}x{args.size}; load average {report['load_average_end']}")
    print(f"speedup_vs_reference={headline['speedup'] if headline else 'nan'}")
    return report


if __name__ == "__main__":
    main()
