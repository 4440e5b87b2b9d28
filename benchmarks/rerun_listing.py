"""What listing a rerun's inputs costs: ``collect_jobs`` over an output folder an earlier run filled, and the part of
it that reads the earlier runs' sidecars to refuse outputs over another image's files (``check_earlier_owners``).

A rerun (a resume, or ``--overwrite``) of a large run lists every input before any work and holds the output folder's
lock meanwhile. The earlier-owner check indexes each output folder's sidecars once; a first version scanned every
listed file for each heat-map job, quadratic in the number of images. Two same-process measures per size N (fake
sidecars listing 10 heat maps each, 4x4 images, no model):

* **owner check share**: the check's time over the whole ``collect_jobs`` time (which includes the check);
* **growth**: the check's time at N over its time at the smallest N, against N's own ratio (linear: equal).

Run from the repository root::

    python benchmarks/rerun_listing.py --sizes 500 2000 --json benchmarks/results/rerun_listing_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from diffsegmenter.io.paths import check_earlier_owners, collect_jobs

FORMATS = ["png", "overlay", "heatmaps"]
CLASSES = [f"c{i}" for i in range(10)]


def _folder(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` inputs and an output folder holding an earlier run's sidecar for each (its label map, overlay and 10
    heat maps listed)."""
    src, out = root / "src", root / "out"
    src.mkdir(parents=True)
    out.mkdir()
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for i in range(n):
        stem = f"img{i:06d}"
        image.save(src / f"{stem}.png")
        files = [f"{stem}.png", f"{stem}.overlay.png", *(f"{stem}.heatmaps/{c}.png" for c in CLASSES)]
        sidecar = {
            "diffsegmenter_version": "0",
            "source": str(src / f"{stem}.png"),
            "classes": CLASSES,
            "files": files,
        }
        (out / f"{stem}.json").write_text(json.dumps(sidecar))
    return src, out


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            src, out = _folder(Path(tmp) / str(n), n)
            jobs = collect_jobs([str(src)], out, FORMATS)
            whole = _best_of(args.repeats, lambda src=src, out=out: collect_jobs([str(src)], out, FORMATS))
            check = _best_of(args.repeats, lambda jobs=jobs: check_earlier_owners(jobs, FORMATS))
            rows.append({"images": n, "collect_jobs_s": round(whole, 4), "owner_check_s": round(check, 4)})
    first = rows[0]
    for row in rows:
        row["owner_check_share"] = round(row["owner_check_s"] / row["collect_jobs_s"], 3)
        row["growth"] = round(row["owner_check_s"] / first["owner_check_s"], 2)
        row["size_ratio"] = round(row["images"] / first["images"], 2)
        print(
            f"N={row['images']:>6}: collect_jobs {row['collect_jobs_s']:.3f} s, owner check {row['owner_check_s']:.3f} s"
            f" ({100 * row['owner_check_share']:.0f}%), check grew {row['growth']}x for {row['size_ratio']}x images"
        )
    if args.json is not None:
        record = {"formats": FORMATS, "classes": len(CLASSES), "machine": platform.platform(), "rows": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
