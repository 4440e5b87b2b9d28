"""Host time per ``segment`` call, this engine against an earlier commit's, on the CPU (a proxy: not GPU figures).

On a GPU at batch 1 the engine was bound by its host work (Python, kernel launches, waits for the device), not by
the GPU. That host work can be measured on a CPU with a model whose compute is negligible: the tests' tiny random
model (UNet 0.27M parameters, latent 16x16), on a VOC-sized 500x375 image, so every step of the call runs (prompts,
VAE, capture, aggregation, full-size upsampling and labelling) and only the convolutions are small. Two measures:

* **wall ms per call** (median of ``--calls`` calls after a warm-up), one thread; on a shared machine it moves with
  the load, so the two engines run in alternating fresh processes (``--rounds``) and the medians of the rounds are
  compared;
* **Python function calls per call** (``cProfile``'s count): host work that does not depend on the machine's load.

It also checks that both engines return the same scores and labels, bit for bit (a SHA-1 of them per case).

The earlier engine is the ``src/`` of ``--baseline`` (a git revision, extracted with ``git archive``); the tiny model
is built the same way (same seed) for both. Run from the repository root::

    python benchmarks/host_overhead.py --baseline 7bb80cd --json benchmarks/results/host_overhead_cpu.json

These are CPU figures of host work: they say how much Python and launch work a call does, not what a GPU reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: (name, prompt mode, images per call, classes)
CASES = [
    ("per-class K=3, 1 image", "per_class", 1, 3),
    ("per-class K=3, 8 images", "per_class", 8, 3),
    ("single prompt K=3, 1 image", "single", 1, 3),
    ("single prompt K=3, 8 images", "single", 8, 3),
]
CLASSES = ["cat", "sofa", "dog", "person", "car"]


def worker(calls: int, session: bool) -> dict[str, Any]:
    """Measure every case with the ``diffsegmenter`` on ``sys.path`` (run in a fresh process)."""
    import contextlib
    import cProfile
    import hashlib
    import pstats

    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from tests.conftest import build_tiny_components

    import diffsegmenter
    from diffsegmenter import DiffSegmenter, SegmenterConfig

    c = build_tiny_components(seed=0)
    image = (np.random.RandomState(0).rand(375, 500, 3) * 255).astype(np.uint8)
    out: dict[str, Any] = {"diffsegmenter": str(Path(diffsegmenter.__file__).parent), "cases": {}}
    for name, mode, n_images, k in CASES:
        seg = DiffSegmenter(
            c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], SegmenterConfig(prompt_mode=mode)
        )
        images, classes = [image] * n_images, CLASSES[:k]
        ctx = seg.session() if session and hasattr(seg, "session") else contextlib.nullcontext()
        with ctx:
            seg.segment(images, classes=classes)  # warm-up
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                res = seg.segment(images, classes=classes)
                times.append(time.perf_counter() - t0)
            prof = cProfile.Profile()
            prof.enable()
            seg.segment(images, classes=classes)
            prof.disable()
        times.sort()
        stats = pstats.Stats(prof)
        out["cases"][name] = {
            "ms_per_call": round(1e3 * times[len(times) // 2], 2),
            "python_calls": int(stats.total_calls),
            "scores_sha1": hashlib.sha1(b"".join(r.scores.tobytes() + r.labels.tobytes() for r in res)).hexdigest(),
        }
    return out


def _run_worker(src: Path, calls: int, session: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--calls", str(calls)]
    cmd += [] if session else ["--no-session"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker on {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _extract(rev: str, into: Path) -> Path:
    """``src/`` of a git revision, extracted under ``into``."""
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="7bb80cd", help="git revision of the earlier engine (its src/ is used)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating (baseline, current) process pairs")
    ap.add_argument("--calls", type=int, default=15, help="timed calls per case and process (median)")
    ap.add_argument("--no-session", dest="session", action="store_false",
                    help="current engine without a session around the calls (each call installs its own)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.calls, args.session)))
        return {}
    t0 = time.perf_counter()
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        old_src = _extract(args.baseline, Path(tmp))
        for r in range(args.rounds):
            for which, src in (("baseline", old_src), ("current", REPO / "src")):
                runs[which].append(_run_worker(src, args.calls, args.session))
                print(f"  round {r + 1}/{args.rounds} {which}: "
                      + ", ".join(f"{v['ms_per_call']:.1f}" for v in runs[which][-1]["cases"].values()) + " ms", flush=True)  # fmt: skip
    rows = []
    print(f"\nhost time per segment() call, tiny model, 500x375 image, 1 thread, medians of {args.rounds} rounds")
    print(
        f"{'case':30s} {'baseline ms':>12s} {'current ms':>11s} {'ratio':>6s} {'py calls base':>14s} {'current':>8s} "
        "same results"
    )
    for name, *_ in CASES:
        base = _median([r["cases"][name]["ms_per_call"] for r in runs["baseline"]])
        cur = _median([r["cases"][name]["ms_per_call"] for r in runs["current"]])
        calls_b = runs["baseline"][0]["cases"][name]["python_calls"]
        calls_c = runs["current"][0]["cases"][name]["python_calls"]
        same = len({r["cases"][name]["scores_sha1"] for r in runs["baseline"] + runs["current"]}) == 1
        rows.append({"case": name, "baseline_ms": base, "current_ms": cur, "ratio": round(base / cur, 2),
                     "baseline_python_calls": calls_b, "current_python_calls": calls_c,
                     "python_calls_ratio": round(calls_b / calls_c, 2), "same_scores_and_labels": same})  # fmt: skip
        print(f"{name:30s} {base:12.1f} {cur:11.1f} {base / cur:5.2f}x {calls_b:14d} {calls_c:8d} {same}")
    report = {
        "what": "host time per segment() call on the CPU (tiny model, compute negligible): a proxy for host overhead, "
        "not a GPU figure",
        "baseline": args.baseline,
        "current": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "session": args.session,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load}",
        "threads": 1,
        "rounds": args.rounds,
        "calls": args.calls,
        "rows": rows,
        "runs": runs,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
