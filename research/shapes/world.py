"""The shapes world: synthetic 64×64 scenes of coloured shapes with exact ground truth.

The image distribution is fixed (issue 7) and must not drift, since the shipped model is trained on it and the
quality regression test measures on it:

- 64×64 RGB. Background: one gray level drawn uniformly from [20, 90], plus N(0, 6) noise per pixel and channel.
- 1–3 shapes (count uniform over {1, 2, 3}), non-overlapping with a gap of at least 1.5 px between any two of them
  (measured between the continuous shapes, so also between their pixels).
- Each shape is a circle, square, triangle or cross (uniform), coloured red (220, 40, 40), green (40, 200, 60),
  blue (50, 80, 230) or yellow (230, 220, 40) (uniform), plus N(0, 8) noise per pixel and channel.
- Size parameter r uniform in [0.14, 0.26]·64. Circle: radius r. Square: half-side 0.85r. Triangle: upward, apex at
  cy − r, base at cy + 0.8r, half-width growing linearly from 0 at the apex to r at the base. Cross: two bars with
  arms of half-length r and half-width 0.35r. Each shape lies inside the image with a 1 px margin.
- Labels: 0 background, 1 circle, 2 square, 3 triangle, 4 cross. Pixel values are rounded and clipped to uint8.

Geometry uses continuous image coordinates in [0, 64]²: pixel (row i, column j) has its centre at
(x, y) = (j + 0.5, i + 0.5), and a pixel belongs to a shape when its centre lies inside it.

Scenes are deterministic by seed (``make_scene(seed)``). The splits draw seeds from disjoint ranges
(``SPLIT_SEED_OFFSETS``): scene ``k`` of split ``s`` has seed ``SPLIT_SEED_OFFSETS[s] + k``, with ``k`` below
``SPLIT_SIZE_LIMIT``, so training, validation, test and example scenes never share a seed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffsegmenter.shapes import CLASS_NAMES, SHAPE_NAMES  # noqa: F401  (SHAPE_NAMES: re-exported)

logger = logging.getLogger(__name__)

IMAGE_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 40),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

BACKGROUND_LEVEL_RANGE = (20.0, 90.0)
BACKGROUND_NOISE_STD = 6.0
SHAPE_NOISE_STD = 8.0
R_RANGE = (0.14 * IMAGE_SIZE, 0.26 * IMAGE_SIZE)
MIN_GAP = 1.5
MARGIN = 1.0
MAX_OBJECTS = 3

SQUARE_HALF_SIDE = 0.85
TRIANGLE_BASE = 0.8
CROSS_HALF_WIDTH = 0.35

SPLIT_SIZE_LIMIT = 10_000_000
SPLIT_SEED_OFFSETS: dict[str, int] = {
    "train": 0,
    "val": 10_000_000,
    "test": 20_000_000,
    "examples": 30_000_000,
}

# Seeds of the shipped example scenes (``example_scenes``), from the "examples" range: picked once (see
# ``_pick_example_seeds``) so that together they show every shape and colour, with 1, 2 and 3 objects.
EXAMPLE_SEEDS: tuple[int, ...] = (30_000_000, 30_000_001, 30_000_003, 30_000_008, 30_000_009, 30_000_010)

_BOUNDARY_STEP = 0.05  # spacing (px) of the boundary samples used to measure gaps; error <= half of it


@dataclass(frozen=True)
class ShapeObject:
    """One shape of a scene.

    Args:
        label (`int`): class index in ``CLASS_NAMES`` (1 circle, 2 square, 3 triangle, 4 cross).
        colour (`str`): one of ``COLOUR_NAMES``.
        centre (`tuple[float, float]`): ``(cx, cy)`` in continuous image coordinates (pixel centres at ``j + 0.5``).
        r (`float`): size parameter in pixels, in ``R_RANGE``.
    """

    label: int
    colour: str
    centre: tuple[float, float]
    r: float

    @property
    def name(self) -> str:
        """`str`: the class name, e.g. ``"circle"``."""
        return CLASS_NAMES[self.label]


@dataclass
class Scene:
    """A rendered scene.

    Args:
        seed (`int`): the seed it was made from.
        image (`np.ndarray`): (64, 64, 3) uint8 RGB.
        labels (`np.ndarray`): (64, 64) uint8 class indices (0 background, 1..4 as ``CLASS_NAMES``).
        objects (`list[ShapeObject]`): the shapes, in drawing order.
    """

    seed: int
    image: np.ndarray
    labels: np.ndarray
    objects: list[ShapeObject] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """`list[str]`: names of the classes present, without duplicates, in ``CLASS_NAMES`` order."""
        present = {o.label for o in self.objects}
        return [CLASS_NAMES[k] for k in sorted(present)]


# --------------------------------------------------------------------------------------------------------------
# Geometry: every shape as a circle or a polygon, with an exact signed distance function (negative inside).
# --------------------------------------------------------------------------------------------------------------


def shape_polygons(obj: ShapeObject) -> list[np.ndarray]:
    """The shape as a union of convex polygons (empty for a circle).

    Args:
        obj (`ShapeObject`): the shape.

    Returns:
        `list[np.ndarray]`: float64 arrays of shape (V, 2) with ``(x, y)`` vertices, clockwise as seen on screen
        (image coordinates, y pointing down). The cross is two overlapping bars.
    """
    cx, cy = obj.centre
    r = obj.r
    name = obj.name
    if name == "circle":
        return []
    if name == "square":
        return [_box(cx, cy, SQUARE_HALF_SIDE * r, SQUARE_HALF_SIDE * r)]
    if name == "triangle":
        return [np.array([[cx, cy - r], [cx - r, cy + TRIANGLE_BASE * r], [cx + r, cy + TRIANGLE_BASE * r]])]
    if name == "cross":
        w = CROSS_HALF_WIDTH * r
        return [_box(cx, cy, r, w), _box(cx, cy, w, r)]
    raise ValueError(f"unknown shape label {obj.label}")


def _box(cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    return np.array([[cx - hx, cy - hy], [cx - hx, cy + hy], [cx + hx, cy + hy], [cx + hx, cy - hy]])


def _convex_polygon_sdf(poly: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Exact signed distance from points to a convex polygon (negative inside); vertices as ``shape_polygons``."""
    n = len(poly)
    dist = np.full(px.shape, np.inf)
    inside = np.ones(px.shape, dtype=bool)
    for k in range(n):
        ax, ay = poly[k]
        bx, by = poly[(k + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dx, dy = wx - t * ex, wy - t * ey
        dist = np.minimum(dist, np.sqrt(dx * dx + dy * dy))
        inside &= ex * wy - ey * wx <= 0  # vertices run clockwise on screen (y down): interior on the right
    return np.where(inside, -dist, dist)


def shape_sdf(obj: ShapeObject, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (px) from points to the shape: negative inside, positive outside.

    Exact for every shape (the cross, a union of two bars, takes the minimum of the bars' distances, which is exact
    outside and on the boundary; inside it is only guaranteed negative).

    Args:
        obj (`ShapeObject`): the shape.
        px (`np.ndarray`), py (`np.ndarray`): float arrays of the same shape, point coordinates.

    Returns:
        `np.ndarray`: float64 array of the points' shape.
    """
    if obj.name == "circle":
        cx, cy = obj.centre
        return np.hypot(px - cx, py - cy) - obj.r
    polys = shape_polygons(obj)
    out = _convex_polygon_sdf(polys[0], px, py)
    for poly in polys[1:]:
        out = np.minimum(out, _convex_polygon_sdf(poly, px, py))
    return out


def shape_boundary(obj: ShapeObject, step: float = _BOUNDARY_STEP) -> np.ndarray:
    """Points along the shape's outline, at most ``step`` px apart.

    Args:
        obj (`ShapeObject`): the shape.
        step (`float`, *optional*, defaults to 0.05): spacing in pixels.

    Returns:
        `np.ndarray`: (P, 2) float64 ``(x, y)`` points. For the cross the outlines of both bars are given (points
        inside the other bar do no harm when measuring the distance to another shape).
    """
    if obj.name == "circle":
        cx, cy = obj.centre
        n = max(16, int(np.ceil(2 * np.pi * obj.r / step)))
        a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + obj.r * np.cos(a), cy + obj.r * np.sin(a)], axis=1)
    pts = []
    for poly in shape_polygons(obj):
        for k in range(len(poly)):
            a, b = poly[k], poly[(k + 1) % len(poly)]
            n = max(2, int(np.ceil(np.linalg.norm(b - a) / step)))
            t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
            pts.append(a + t * (b - a))
    return np.concatenate(pts, axis=0)


def shape_gap(a: ShapeObject, b: ShapeObject) -> float:
    """Distance (px) between two shapes; negative or zero when they touch or overlap.

    The minimum over ``b``'s outline of ``a``'s signed distance, and vice versa, sampled every 0.05 px (the signed
    distance is 1-Lipschitz, so the error is below 0.025 px). A shape wholly inside the other gives a negative value.

    Args:
        a (`ShapeObject`), b (`ShapeObject`): the two shapes.

    Returns:
        `float`: the gap in pixels.
    """
    pb = shape_boundary(b)
    pa = shape_boundary(a)
    return float(min(shape_sdf(a, pb[:, 0], pb[:, 1]).min(), shape_sdf(b, pa[:, 0], pa[:, 1]).min()))


def shape_extent(obj: ShapeObject) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of the shape in continuous coordinates."""
    cx, cy = obj.centre
    r = obj.r
    if obj.name == "square":
        h = SQUARE_HALF_SIDE * r
        return cx - h, cy - h, cx + h, cy + h
    if obj.name == "triangle":
        return cx - r, cy - r, cx + r, cy + TRIANGLE_BASE * r
    return cx - r, cy - r, cx + r, cy + r


def _pixel_grid(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float64) + 0.5
    py, px = np.meshgrid(c, c, indexing="ij")
    return px, py


_GRID = _pixel_grid()


def shape_mask(obj: ShapeObject) -> np.ndarray:
    """(64, 64) bool mask of the pixels whose centre lies inside (or on) the shape."""
    return shape_sdf(obj, *_GRID) <= 0.0


# --------------------------------------------------------------------------------------------------------------
# Sampling and rendering.
# --------------------------------------------------------------------------------------------------------------


def _outer_inner_radius(obj: ShapeObject) -> tuple[float, float]:
    """Radii of a disc around the centre that contains the shape, and of one that the shape contains."""
    r = obj.r
    if obj.name == "circle":
        return r, r
    if obj.name == "square":
        return SQUARE_HALF_SIDE * r * np.sqrt(2.0), SQUARE_HALF_SIDE * r
    if obj.name == "triangle":
        return r * np.hypot(1.0, TRIANGLE_BASE), r / np.hypot(1.0, 1.0 + TRIANGLE_BASE)
    return r * np.hypot(1.0, CROSS_HALF_WIDTH), CROSS_HALF_WIDTH * r


def _point_sdf(obj: ShapeObject, x: float, y: float) -> float:
    """``shape_sdf`` at one point, in plain Python (the placement loop calls it thousands of times)."""
    if obj.name == "circle":
        return math.hypot(x - obj.centre[0], y - obj.centre[1]) - obj.r
    best = math.inf
    for poly in shape_polygons(obj):
        pts = poly.tolist()
        n = len(pts)
        dist = math.inf
        inside = True
        for k in range(n):
            ax, ay = pts[k]
            bx, by = pts[(k + 1) % n]
            ex, ey = bx - ax, by - ay
            wx, wy = x - ax, y - ay
            t = min(1.0, max(0.0, (wx * ex + wy * ey) / (ex * ex + ey * ey)))
            dist = min(dist, math.hypot(wx - t * ex, wy - t * ey))
            inside &= ex * wy - ey * wx <= 0  # our polygons run clockwise on screen (y down): interior on the right
        best = min(best, -dist if inside else dist)
    return best


def gap_at_least(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """Whether the two shapes lie at least ``gap`` px apart (exact up to 0.025 px, on the safe side).

    Cheap tests first (enclosing and inscribed discs), the sampled outline distance (``shape_gap``) otherwise.
    """
    d = float(np.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]))
    ra_out, ra_in = _outer_inner_radius(a)
    rb_out, rb_in = _outer_inner_radius(b)
    if d - ra_out - rb_out >= gap:
        return True
    # A disc of radius rb_in around b's centre lies in b: if a comes closer to that centre than rb_in + gap, fail.
    if _point_sdf(a, *b.centre) < rb_in + gap or _point_sdf(b, *a.centre) < ra_in + gap:
        return False
    return shape_gap(a, b) >= gap + 0.5 * _BOUNDARY_STEP


def _sample_objects(rng: np.random.Generator, n: int, max_tries: int = 200) -> list[ShapeObject] | None:
    objects: list[ShapeObject] = []
    for _ in range(n):
        label = int(rng.integers(1, len(CLASS_NAMES)))
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        for _try in range(max_tries):
            r = float(rng.uniform(*R_RANGE))
            lo, hi = r + MARGIN, IMAGE_SIZE - MARGIN - r
            cx = float(rng.uniform(lo, hi))
            # The triangle reaches only 0.8r below its centre, so its centre may sit 0.2r lower.
            hi_y = hi + (1.0 - TRIANGLE_BASE) * r if label == CLASS_NAMES.index("triangle") else hi
            cy = float(rng.uniform(lo, hi_y))
            cand = ShapeObject(label=label, colour=colour, centre=(cx, cy), r=r)
            if all(gap_at_least(cand, o, MIN_GAP) for o in objects):
                objects.append(cand)
                break
        else:
            return None
    return objects


def make_scene(seed: int) -> Scene:
    """Render the scene of a seed (deterministic, same result on every platform with the same numpy).

    Args:
        seed (`int`): non-negative seed; see ``SPLIT_SEED_OFFSETS`` for the split ranges.

    Returns:
        `Scene`: image (64, 64, 3) uint8, labels (64, 64) uint8, and the objects.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = None
    while objects is None:  # a crowded draw that cannot be placed is redrawn whole, keeping the count
        objects = _sample_objects(rng, n)
    level = rng.uniform(*BACKGROUND_LEVEL_RANGE)
    img = level + rng.normal(0.0, BACKGROUND_NOISE_STD, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    shape_noise = rng.normal(0.0, SHAPE_NOISE_STD, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    for obj in objects:
        m = shape_mask(obj)
        img[m] = np.asarray(COLOURS[obj.colour], dtype=np.float64) + shape_noise[m]
        labels[m] = obj.label
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(seed=seed, image=image, labels=labels, objects=objects)


def scene_seed(split: str, index: int) -> int:
    """Seed of scene ``index`` of a split.

    Args:
        split (`str`): one of ``SPLIT_SEED_OFFSETS`` ("train", "val", "test", "examples").
        index (`int`): 0 <= index < ``SPLIT_SIZE_LIMIT``.

    Returns:
        `int`: the seed.
    """
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_OFFSETS)}")
    if not 0 <= index < SPLIT_SIZE_LIMIT:
        raise ValueError(f"scene index {index} outside [0, {SPLIT_SIZE_LIMIT})")
    return SPLIT_SEED_OFFSETS[split] + index


def make_split_scene(split: str, index: int) -> Scene:
    """``make_scene(scene_seed(split, index))``."""
    return make_scene(scene_seed(split, index))


def render_batch(seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Render several scenes into stacked arrays (a picklable worker for ``multiprocessing``).

    Args:
        seeds (`Sequence[int]`): scene seeds.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: images (N, 64, 64, 3) uint8 and labels (N, 64, 64) uint8.
    """
    scenes = [make_scene(int(s)) for s in seeds]
    return np.stack([s.image for s in scenes]), np.stack([s.labels for s in scenes])


def example_scenes() -> list[Scene]:
    """The shipped example scenes (for ``diffsegmenter demo`` and the model card).

    Returns:
        `list[Scene]`: scenes of ``EXAMPLE_SEEDS``, which together hold every shape and colour.
    """
    return [make_scene(s) for s in EXAMPLE_SEEDS]


# --------------------------------------------------------------------------------------------------------------
# VOC export.
# --------------------------------------------------------------------------------------------------------------


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), flattened to ``[r0, g0, b0, r1, ...]`` for ``Image.putpalette``.

    Args:
        n (`int`, *optional*, defaults to 256): number of entries.

    Returns:
        `list[int]`: ``3 * n`` values in [0, 255]; entry 0 is black, 1 (128, 0, 0), 2 (0, 128, 0), ...
    """
    from diffsegmenter.io.palette import VOC_PALETTE

    return VOC_PALETTE[:n].reshape(-1).tolist()


def scene_id(split: str, index: int) -> str:
    """File id of scene ``index`` of a split, e.g. ``"test_000123"``."""
    return f"{split}_{index:06d}"


def _export_one(args: tuple[str, str, int]) -> str:
    from PIL import Image

    root, split, index = args
    sid = scene_id(split, index)
    scene = make_split_scene(split, index)
    base = Path(root)
    Image.fromarray(scene.image, mode="RGB").save(base / "JPEGImages" / f"{sid}.png")
    lab = Image.fromarray(scene.labels, mode="P")
    lab.putpalette(voc_palette())
    lab.save(base / "SegmentationClass" / f"{sid}.png")
    return sid


def export_voc(
    root: str | Path,
    splits: Mapping[str, int] | None = None,
    workers: int | None = None,
) -> Path:
    """Write scenes in the PASCAL VOC layout that the evaluation harness reads.

    Layout::

        root/JPEGImages/<id>.png             RGB image, lossless PNG (not JPEG, despite the folder name)
        root/SegmentationClass/<id>.png      palette PNG (VOC palette), pixel value = class index
        root/ImageSets/Segmentation/<split>.txt   one id per line
        root/shapes_world.json               class names, seed offsets and split sizes

    Ids are ``<split>_<index:06d>`` (e.g. ``test_000123``) and scene ``index`` of split ``s`` has seed
    ``SPLIT_SEED_OFFSETS[s] + index``.

    Args:
        root (`str` or `Path`): output folder (created if needed; existing files are overwritten).
        splits (`Mapping[str, int]`, *optional*): scenes per split, defaults to
            ``{"train": 0, "val": 300, "test": 300}``.
        workers (`int`, *optional*): processes to render with; defaults to ``min(8, os.cpu_count())``; 1 renders
            in this process.

    Returns:
        `Path`: the root folder.
    """
    splits = dict(splits) if splits is not None else {"train": 0, "val": 300, "test": 300}
    base = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(str(base), s, i) for s, n in splits.items() for i in range(int(n))]
    for s in splits:
        scene_seed(s, 0)  # validates the split name
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 64:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            list(pool.imap(_export_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _export_one(job)
    for s, n in splits.items():
        ids = [scene_id(s, i) for i in range(int(n))]
        (base / "ImageSets" / "Segmentation" / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
    meta = {
        "class_names": list(CLASS_NAMES),
        "split_seed_offsets": SPLIT_SEED_OFFSETS,
        "splits": {s: int(n) for s, n in splits.items()},
        "image_size": IMAGE_SIZE,
    }
    (base / "shapes_world.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("exported %d shapes-world scenes to %s", len(jobs), base)
    return base


def _pick_example_seeds(count: int = 6, start: int = SPLIT_SEED_OFFSETS["examples"]) -> list[int]:
    """Greedy search (run once, by hand) for ``EXAMPLE_SEEDS``: scenes that add a new shape, colour or object
    count, then scenes of distinct shapes with two or more objects."""
    picked: list[int] = []
    shapes: set[int] = set()
    colours: set[str] = set()
    counts: set[int] = set()
    seed = start
    while len(picked) < count:
        sc = make_scene(seed)
        labels = {o.label for o in sc.objects}
        cols = {o.colour for o in sc.objects}
        n = len(sc.objects)
        distinct = len(picked) >= 4 and n >= 2 and len(labels) == n
        if labels - shapes or cols - colours or n not in counts or distinct:
            picked.append(seed)
            shapes |= labels
            colours |= cols
            counts.add(n)
        seed += 1
    return picked


def iter_split(split: str, count: int, start: int = 0) -> Iterable[Scene]:
    """Yield scenes ``start .. start + count - 1`` of a split."""
    for i in range(start, start + count):
        yield make_split_scene(split, i)
