"""``segment --ray`` vs the local loop on the same machine: images/s, and what changes with the number of workers.

Each run is a fresh ``diffsegmenter segment`` process on N shapes scenes (``research.shapes.world.make_scene``) into a
fresh ``--out``, timed end to end (wall clock: start-up, model loading (once per actor with Ray), Ray start-up,
segmenting, writing). ``images/s`` = N / wall. The steady state is also reported: (N - 1) / (wall - wall of a 1-image
run of the same kind), which removes the fixed cost of start-up and model loading.

    python benchmarks/ray_vs_local.py --images 12 --workers 1 2 --json benchmarks/results/ray_vs_local.json
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

import numpy as np
from PIL import Image

SETTINGS = ["--set", "resolution=64", "--format", "png,coco", "--quiet", "--offline"]


def _scenes(folder: Path, count: int) -> Path:
    from research.shapes.world import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        Image.fromarray(np.asarray(make_scene(50_000 + seed).image)).save(folder / f"scene{seed:03d}.png")
    return folder


def _run(inputs: Path, out: Path, ray_workers: int | None) -> float:
    command = [sys.executable, "-m", "diffsegmenter", "segment", str(inputs), "--out", str(out), *SETTINGS]
    if ray_workers is not None:
        command += ["--ray", "--workers", str(ray_workers)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        many, one = _scenes(tmp / "many", args.images), _scenes(tmp / "one", 1)
        kinds = [("local loop", None)] + [(f"ray, {w} worker(s)", w) for w in args.workers]
        for number, (name, workers) in enumerate(kinds):
            fixed = _run(one, tmp / f"o1-{number}", workers)
            wall = _run(many, tmp / f"on-{number}", workers)
            # None when the N-image run was not measurably longer than the 1-image run (noise on a shared machine)
            steady = (args.images - 1) / (wall - fixed) if wall - fixed > 1.0 else None
            rows.append(
                {
                    "run": name,
                    "workers": workers,
                    "images": args.images,
                    "wall_s": round(wall, 1),
                    "images_per_s": round(args.images / wall, 3),
                    "one_image_wall_s": round(fixed, 1),
                    "steady_images_per_s": None if steady is None else round(steady, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": f"{os.cpu_count()} CPU cores, shared with other jobs ({platform.processor() or platform.machine()})",
        "load_average_at_end": os.getloadavg(),
        "settings": SETTINGS,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
