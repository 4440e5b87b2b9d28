"""The README's demo picture (docs/images/demo.png) from a real ``diffsegmenter demo`` run.

Run from the repository root: ``python -m research.demo_figure [--out docs/images/demo.png]``. Top row: the shipped
example scenes enlarged 4x (nearest neighbour); bottom row: the demo's overlays as written (enlarged, with a legend).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from diffsegmenter.cli import example_images, main


def build_figure(demo_dir: Path, scenes: list[Path], gap: int = 8) -> Image.Image:
    overlays = [Image.open(demo_dir / f"{p.stem}.overlay.png").convert("RGB") for p in scenes]
    cell_w = max(o.width for o in overlays)
    top_h = max(Image.open(p).height * 4 for p in scenes)
    bottom_h = max(o.height for o in overlays)
    figure = Image.new("RGB", (len(scenes) * (cell_w + gap) - gap, top_h + gap + bottom_h), (255, 255, 255))
    for column, (scene, overlay) in enumerate(zip(scenes, overlays)):
        x = column * (cell_w + gap)
        with Image.open(scene) as image:
            figure.paste(image.convert("RGB").resize((image.width * 4, image.height * 4), Image.NEAREST), (x, 0))
        figure.paste(overlay, (x, top_h + gap))
    return figure


def main_figure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/demo.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, example_images() as scenes:
        status = main(["demo", "--out", tmp])
        if status != 0:
            raise SystemExit(f"diffsegmenter demo failed with exit status {status}")
        build_figure(Path(tmp), scenes).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main_figure()
