"""Resumable, shardable benchmark evaluation of any segmenter with the `DiffSegmenter.segment` contract.

`evaluate(segmenter, dataset, out_dir, ...)` writes one palette PNG per image (``OUT/predictions/<image id>.png``,
dataset class ids, 255 = no prediction), skips images whose PNG already exists (so a killed run resumes where it
stopped), and at the end scores **all** prediction PNGs of the split against the ground truth into
``OUT/metrics.json`` and ``OUT/metrics.md``. A missing or unreadable prediction counts as all background (all
"no prediction" on datasets without a background class) and is listed in the report; nothing is skipped silently.

Protocols (which class names each image is segmented with):

* ``paper``: the per-image candidate classes of a candidate JSON in the released DiffSegmenter format
  (``predict_syn_txt_0.8_img_0.97.json``: ``image_similarity`` and ``text_similarity``, image key -> class names; the
  union is used, keys may be absolute paths or basenames), or the classes kept by a category filter.
* ``oracle``: the ground-truth classes present in each image (the weakly supervised / WSSS setting). No filter.
* ``full-vocabulary``: every class of the dataset for every image (the mmseg / SCLIP harness setting).

Background: on datasets with a background class (voc21, pc60, object, shapes) a pixel is background unless some class
scores strictly above ``tau``. On datasets without one (voc20, pc59, stuff, ade, city) every pixel must get a class, so
the harness calls ``segment(..., tau=-1.0)``: scores lie in [0, 1], so background never wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..config import RELEASED_SCRIPT_RULES, add_override_argument, check_tau
from .datasets import DATASET_ALIASES, DATASET_NAMES, SegmentationDataset, load_dataset
from .metrics import ConfusionMatrix

logger = logging.getLogger(__name__)

#: The released evaluation script whose prompt wording and class-token rule ``--protocol paper`` applies to each
#: dataset (``config.RELEASED_SCRIPT_RULES``): VOC12 -> ``voc12/ptp_stable_best.py``, Pascal Context ->
#: ``voc10/ptp_stable_voc10.py``, COCO-Object -> ``coco/ptp_stable_coco.py``. Other datasets had no released script.
RELEASED_SCRIPT_OF_DATASET: dict[str, str] = {
    "voc21": "voc12",
    "voc20": "voc12",
    "pc60": "context",
    "pc59": "context",
    "object": "coco",
}


def prompt_rule_of(config: Any) -> str:
    """Name the released script whose prompt rule a segmenter config follows, or describe the config's own.

    Args:
        config: a :class:`~diffsegmenter.config.SegmenterConfig` (or None when the segmenter has none).

    Returns:
        `str`: e.g. ``"released voc12 script (template 'a photograph of {}', first sub-token, -ing offset 1)"`` or
        ``"own: template ..., token_rule ..., ..."``.
    """
    if config is None:
        return "unknown (the segmenter has no config)"
    fields = {k: getattr(config, k, None) for k in ("template", "token_rule", "ing_heuristic", "ing_offset")}
    desc = f"template {fields['template']!r}, {fields['token_rule']} sub-token, " + (
        f"-ing offset {fields['ing_offset']}" if fields["ing_heuristic"] else "no -ing rule"
    )
    if getattr(config, "prompt_mode", "per_class") == "per_class":
        for script, rule in RELEASED_SCRIPT_RULES.items():
            if all(fields[k] == v for k, v in rule.items()):
                return f"released {script} script ({desc})"
    return f"own ({desc}, prompt_mode {getattr(config, 'prompt_mode', None)!r})"


__all__ = [
    "NO_BACKGROUND_TAU",
    "RELEASED_SCRIPT_OF_DATASET",
    "PROTOCOLS",
    "SWEEP_TAUS",
    "add_eval_arguments",
    "evaluate",
    "load_candidates",
    "prompt_rule_of",
    "main_eval",
    "run_eval",
    "score_predictions",
    "shard_bounds",
]

Protocol = Literal["paper", "oracle", "full-vocabulary"]
PROTOCOLS: tuple[str, ...] = ("paper", "oracle", "full-vocabulary")
NO_BACKGROUND_TAU = -1.0
"""Background score used on datasets without a background class: class scores are in [0, 1], so it never wins."""
SWEEP_TAUS: tuple[float, ...] = tuple(round(0.30 + 0.01 * i, 2) for i in range(45))
"""The released code's background-threshold sweep, 0.30 .. 0.74 step 0.01."""
SWEEP_NOTE = "tau tuned on this split (optimistic)"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
RUN_CONFIG = "run_config.json"


# ------------------------------------------------------------------------------------------------------------ helpers
def shard_bounds(num_items: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of shard ``index`` of ``count`` (0-based), remainder to the first shards.

    This is the split of `accelerate.PartialState.split_between_processes`, so ``--shard i/n`` jobs and
    ``accelerate launch`` processes cover the image list the same way.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= i < n (0-based), got {index}/{count}")
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based shard index ``i`` of ``n``) into ``(i, n)``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f"--shard {text}: the index is 0-based, use 0/{count} .. {count - 1}/{count}")
    return index, count


def _candidate_key(key: str) -> str:
    """Normalise an image key of a candidate JSON or an image id: basename, no extension, no COCO-2014 prefix."""
    name = re.split(r"[\\/]", key.strip())[-1]
    name = re.sub(r"\.(jpe?g|png)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"^COCO_(?:val|train)2014_", "", name)


def load_candidates(path: str | os.PathLike, dataset: SegmentationDataset) -> dict[str, list[int]]:
    """Read a candidate-class JSON in the released DiffSegmenter format and map it onto a dataset.

    Parsing is [`diffsegmenter.filters.candidates.load_candidates`] (the union of ``image_similarity`` and
    ``text_similarity``; ``synonym_matching`` is ignored, as in the released code); this adds the dataset side.

    Args:
        path: the JSON. Image keys may be absolute paths (``/root/.../JPEGImages/2007_000033.jpg``), basenames
            (``2008_000002.jpg``) or COCO-2014 names (``COCO_val2014_000000182611.jpg``); they are matched to image
            ids by basename without extension (and without the COCO-2014 prefix).
        dataset ([`SegmentationDataset`]): maps class names (standard or paper spelling) to class ids.

    Returns:
        `dict[str, list[int]]`: normalised image key -> sorted foreground class ids.
    """
    from ..filters.candidates import load_candidates as read_candidate_file

    background = 0 if dataset.has_background else None
    union: dict[str, set[int]] = {}
    for image_key, names in read_candidate_file(path).items():
        ids = union.setdefault(_candidate_key(image_key), set())
        for name in names:
            try:
                class_id = dataset.class_index(name)
            except ValueError as exc:
                raise ValueError(f"{path}: image {image_key!r} lists class {name!r}: {exc}") from None
            if class_id != background:
                ids.add(class_id)
    return {k: sorted(v) for k, v in union.items()}


@contextmanager
def _atomic_path(path: Path) -> Iterator[IO[bytes]]:
    """Open a temp file next to `path` for writing; `os.replace` it onto `path` on success, delete it on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_palette_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette(palette.reshape(-1).tolist())
    with _atomic_path(path) as fh:
        img.save(fh, format="PNG")


def _write_text(path: Path, text: str) -> None:
    with _atomic_path(path) as fh:
        fh.write(text.encode("utf-8"))


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 in the stored pixel orientation (no EXIF rotation), i.e. aligned with the label PNG."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def _read_prediction(path: Path, shape: tuple[int, ...], num_classes: int) -> tuple[np.ndarray | None, str]:
    if not path.is_file():
        return None, "missing"
    try:
        with Image.open(path) as img:
            pred = np.array(img)
    except Exception as exc:  # any decoding failure makes the file unusable; reported, never fatal
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if pred.shape != shape:
        return None, f"shape {pred.shape} differs from the ground truth {shape}"
    bad = (pred >= num_classes) & (pred != 255)
    if bad.any():
        return None, f"holds values {np.unique(pred[bad])[:5].tolist()} that are not class ids"
    return pred.astype(np.int64), ""


def _config_dict(segmenter: Any) -> dict[str, Any]:
    config = getattr(segmenter, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        values = dataclasses.asdict(config)
    elif config is not None and hasattr(config, "__dict__"):
        values = dict(vars(config))
    else:
        values = {}
    values.pop("tau", None)  # the effective tau is recorded separately
    values.pop("max_image_pixels", None)  # a limit on the inputs, not a setting of the predictions
    return json.loads(json.dumps(values, default=str, sort_keys=True))


def _model_id(segmenter: Any) -> str | None:
    """Best-effort id of the weights: ``segmenter.name_or_path``, else the UNet config's ``_name_or_path``."""
    value = getattr(segmenter, "name_or_path", None)
    if value is None:
        unet_config = getattr(getattr(segmenter, "unet", None), "config", None)
        value = unet_config.get("_name_or_path") if isinstance(unet_config, Mapping) else None
    return str(value) if value else None


def _check_run_config(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to mix predictions made with different settings in one output folder."""
    path = out_dir / RUN_CONFIG
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            raise ValueError(
                f"{out_dir} holds predictions made with other settings ({details}). Resuming would mix them: use "
                f"another output folder, or delete {out_dir / 'predictions'} and {path} to start over."
            )
        return
    _write_text(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _partial_state() -> Any | None:
    """accelerate's PartialState when running under `accelerate launch` / torchrun with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState()
    return state if state.num_processes > 1 else None


def _fmt(value: float | None, ndigits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{ndigits}f}"


def _markdown(report: dict[str, Any], dataset: SegmentationDataset) -> str:
    lines = [
        f"# Evaluation: {report['dataset']} ({report['split']})",
        "",
        "| setting | value |",
        "|---|---|",
        f"| protocol | {report['protocol']} |",
        f"| tau | {report['tau']} |",
        f"| images | {report['num_images']} |",
        f"| missing predictions | {len(report['missing_predictions'])} |",
        f"| **mIoU (%)** | **{_fmt(report['mIoU'])}** |",
        f"| mAcc (%) | {_fmt(report['mAcc'])} |",
        f"| aAcc (%) | {_fmt(report['aAcc'])} |",
        "",
        "| class | IoU (%) | Acc (%) |",
        "|---|---|---|",
    ]
    for name in dataset.classes:
        lines.append(f"| {name} | {_fmt(report['per_class_iou'][name])} | {_fmt(report['per_class_acc'][name])} |")
    lines += ["", "n/a: the class occurs in neither the ground truth nor the prediction (left out of the mean)."]
    if report["missing_predictions"]:
        shown = ", ".join(report["missing_predictions"][:20])
        more = " ..." if len(report["missing_predictions"]) > 20 else ""
        lines += ["", f"Missing/unreadable predictions, scored as all background: {shown}{more}"]
    sweep = report.get("tau_sweep_optimistic")
    if sweep:
        lines += [
            "",
            f"Tau sweep ({sweep['note']}): best mIoU {_fmt(sweep['best_mIoU'])} at tau = {sweep['best_tau']}. "
            "Not comparable with a fixed-tau number.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ evaluate
def evaluate(
    segmenter: Any,
    dataset: SegmentationDataset,
    out_dir: str | os.PathLike,
    protocol: Protocol = "paper",
    tau: float | None = None,
    candidates_json: str | os.PathLike | None = None,
    filter: Any = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
    sweep_tau: bool = False,
) -> dict[str, Any]:
    """Segment every image of a dataset split, save the predictions, and score them.

    Args:
        segmenter: any object with ``segment(image, classes=[...], filter=..., tau=...) -> result`` where
            ``result.labels`` is an (H, W) integer array (0 = background, i = ``result.classes[i-1]``),
            ``result.classes`` the class names segmented and, for ``sweep_tau``, ``result.scores`` a (K, H, W) float
            array in [0, 1]; plus ``segmenter.config.tau`` (float). Images are passed as (H, W, 3) uint8 RGB arrays
            in the stored pixel orientation (no EXIF rotation), so predictions align with the label PNGs.
        dataset ([`SegmentationDataset`]): from [`load_dataset`].
        out_dir: output folder; ``predictions/``, ``metrics.json``, ``metrics.md``, ``run_config.json`` (and
            ``scores/`` with ``sweep_tau``) are written there. Reusing a folder resumes the run.
        protocol (`"paper"`, `"oracle"` or `"full-vocabulary"`, defaults to `"paper"`): see the module docstring.
        tau (`float`, *optional*): background score for datasets with a background class; ``segment`` receives
            ``tau`` only when it is given here (default: the segmenter's ``config.tau``). Must be None on datasets
            without a background class, where ``tau = -1.0`` is always used.
        candidates_json (*optional*): candidate-class JSON for the ``paper`` protocol, see [`load_candidates`].
            An image without an entry is segmented with no class (all background) and listed in the report.
        filter (*optional*): category filter forwarded to ``segment(..., filter=filter)`` with the whole vocabulary,
            for the ``paper`` protocol without a candidate JSON (e.g. ``"clip"``, ``"diffusion"`` or an object).
        shard (`tuple[int, int]`, *optional*): ``(i, n)``, process only the i-th (0-based) of n contiguous parts of
            the image list and skip scoring (rerun without a shard to score everything). Without it, under
            ``accelerate launch`` with several processes the list is split with
            ``PartialState().split_between_processes`` and the main process scores after all are done.
        limit (`int`, *optional*): evaluate only the first `limit` images of the split.
        progress (`bool`, defaults to `True`): show a tqdm progress bar (with ETA).
        sweep_tau (`bool`, defaults to `False`): also save per-image score maps (``scores/<id>.npz``, float16) and
            report the best mIoU over tau = 0.30 .. 0.74 under ``"tau_sweep_optimistic"``. That number is tuned on
            the evaluated split; the headline ``"mIoU"`` always uses the fixed tau.

    Returns:
        `dict`: the content of ``metrics.json`` (all metrics in percent): ``mIoU``, ``mAcc``, ``aAcc``,
        ``per_class_iou`` / ``per_class_acc`` by class name (None for a class absent from GT and prediction),
        ``dataset``, ``split``, ``protocol``, ``tau``, ``num_images``, ``missing_predictions``, ... For a shard run,
        a summary with ``"metrics_computed": False`` instead.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "paper" and candidates_json is None and filter is None:
        raise ValueError(
            "protocol 'paper' needs per-image candidate classes: pass candidates_json= (--candidates, the released "
            "predict_syn_txt_0.8_img_0.97.json or one in that format) or filter= (e.g. 'clip'); or use "
            "protocol='oracle' (ground-truth classes) or 'full-vocabulary' (all classes)"
        )
    if protocol == "paper" and candidates_json is not None and filter is not None:
        raise ValueError("give either candidates_json or filter for protocol 'paper', not both")
    if protocol != "paper" and (candidates_json is not None or filter is not None):
        raise ValueError(f"candidates_json / filter apply to protocol 'paper' only, not to {protocol!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if shard is not None:
        shard_bounds(0, *shard)  # validates (i, n) before anything is written
    if tau is not None and dataset.has_background:
        check_tau(tau)  # before anything is written
    if not dataset.has_background:
        if tau is not None:
            raise ValueError(
                f"{dataset.name} has no background class: every pixel is assigned to its best class (tau = "
                f"{NO_BACKGROUND_TAU}, background never wins), so tau={tau} does not apply; leave it unset"
            )
        if sweep_tau:
            raise ValueError(f"sweep_tau needs a background class to threshold; {dataset.name} has none")

    out = Path(out_dir)
    pred_dir, score_dir = out / "predictions", out / "scores"
    samples = dataset.samples[:limit] if limit is not None else list(dataset.samples)
    no_pred = 0 if dataset.has_background else dataset.ignore_index  # value of a pixel left to "background"
    default_tau = getattr(getattr(segmenter, "config", None), "tau", None)
    if dataset.has_background:
        segment_tau = tau  # forwarded only when given
        effective_tau = float(tau) if tau is not None else (float(default_tau) if default_tau is not None else None)
    else:
        segment_tau = effective_tau = NO_BACKGROUND_TAU
    candidates = load_candidates(candidates_json, dataset) if candidates_json is not None else None

    fingerprint = {
        "dataset": dataset.name,
        "split": dataset.split,
        "classes": list(dataset.classes),
        "protocol": protocol,
        "tau": effective_tau,
        "candidates_sha256": hashlib.sha256(Path(candidates_json).read_bytes()).hexdigest()
        if candidates_json is not None
        else None,
        "filter": filter if isinstance(filter, str) or filter is None else type(filter).__name__,
        "segmenter": type(segmenter).__name__,
        "model": _model_id(segmenter),
        "segmenter_config": _config_dict(segmenter),
    }
    _check_run_config(out, fingerprint)

    def classes_for(sample) -> list[int]:
        if protocol == "full-vocabulary" or (protocol == "paper" and candidates is None):
            return dataset.foreground_ids
        if protocol == "oracle":
            present = np.unique(dataset.load_label(sample))
            return [int(c) for c in present if c != dataset.ignore_index and (c != 0 or not dataset.has_background)]
        return candidates.get(_candidate_key(sample.image_id), [])

    def predict(sample) -> None:
        image = _read_rgb(sample.image_path)
        class_ids = classes_for(sample)
        if not class_ids:  # nothing to segment: everything is background
            pred = np.full(image.shape[:2], no_pred, dtype=np.uint8)
            scores, score_ids = np.zeros((0, *image.shape[:2]), np.float16), np.zeros(0, np.int64)
        else:
            kwargs: dict[str, Any] = {"classes": [dataset.classes[c] for c in class_ids]}
            if filter is not None:
                kwargs["filter"] = filter
            if segment_tau is not None:
                kwargs["tau"] = segment_tau
            result = segmenter.segment(image, **kwargs)
            labels = np.asarray(result.labels)
            if labels.shape != image.shape[:2]:
                raise ValueError(
                    f"{type(segmenter).__name__}.segment returned labels of shape {labels.shape} for image "
                    f"{sample.image_path} of shape {image.shape[:2]}; labels must be at the input's size"
                )
            score_ids = np.array([dataset.class_index(c) for c in result.classes], dtype=np.int64)
            lut = np.concatenate([[no_pred], score_ids])
            if labels.size and (labels.min() < 0 or labels.max() > len(score_ids)):
                raise ValueError(
                    f"segment labels must lie in 0..{len(score_ids)} (0 = background, i = classes[i-1]), got "
                    f"{int(labels.min())}..{int(labels.max())} for {sample.image_path}"
                )
            pred = lut[labels].astype(np.uint8)
            scores = np.asarray(result.scores, dtype=np.float16) if sweep_tau else None
        if sweep_tau:  # scores first: a PNG without its scores is recomputed on resume
            with _atomic_path(score_dir / f"{sample.image_id}.npz") as fh:
                np.savez_compressed(fh, scores=scores, class_ids=score_ids)
        _save_palette_png(pred_dir / f"{sample.image_id}.png", pred, dataset.palette)

    def done(sample) -> bool:
        if not (pred_dir / f"{sample.image_id}.png").is_file():
            return False
        return not sweep_tau or (score_dir / f"{sample.image_id}.npz").is_file()

    state = _partial_state() if shard is None else None
    if shard is not None:
        start, end = shard_bounds(len(samples), *shard)
        part_ctx = nullcontext(samples[start:end])
    elif state is not None:
        part_ctx = state.split_between_processes(samples)
    else:
        part_ctx = nullcontext(samples)

    computed = reused = 0
    with part_ctx as part:
        show = progress and (state is None or state.is_local_main_process)
        bar = tqdm(part, desc=f"{dataset.name}/{protocol}", unit="img", disable=not show, dynamic_ncols=True)
        for sample in bar:
            if done(sample):
                reused += 1
            else:
                predict(sample)
                computed += 1
            bar.set_postfix(new=computed, reused=reused, refresh=False)
        part_size = len(part)
    logger.info("%s: %d images predicted, %d reused from %s", dataset.name, computed, reused, pred_dir)

    if state is not None:
        state.wait_for_everyone()
    if (shard is not None and shard[1] > 1) or (state is not None and not state.is_main_process):
        return {
            "dataset": dataset.name,
            "protocol": protocol,
            "shard": list(shard) if shard is not None else [state.process_index, state.num_processes],
            "num_images_in_shard": part_size,
            "computed": computed,
            "reused": reused,
            "metrics_computed": False,
            "note": "predictions of this shard are saved; run once more without --shard to score the whole split "
            "(existing predictions are reused)",
        }

    info: dict[str, Any] = {
        "protocol": protocol,
        "prompt_rule": prompt_rule_of(getattr(segmenter, "config", None)),
        "tau": effective_tau,
        "candidates_json": str(candidates_json) if candidates_json is not None else None,
        "filter": fingerprint["filter"],
        "model": fingerprint["model"],
        "computed": computed,
        "reused": reused,
    }
    if candidates is not None:
        absent = [s.image_id for s in samples if _candidate_key(s.image_id) not in candidates]
        info["images_without_candidates"] = absent
        if absent:
            logger.warning(
                "%d images have no entry in %s and were segmented with no class (all background): %s",
                len(absent), candidates_json, ", ".join(absent[:10]),
            )  # fmt: skip
    return score_predictions(dataset, out, limit=limit, sweep_tau=sweep_tau, progress=progress, info=info)


def score_predictions(
    dataset: SegmentationDataset,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    sweep_tau: bool = False,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the prediction PNGs in ``out_dir/predictions`` against the ground truth; write metrics.json / .md.

    Needs no segmenter: use it to score predictions merged from shards run elsewhere (``--score-only``). A missing
    or unreadable prediction (or one of the wrong size) is scored as all background (all "no prediction" on datasets
    without a background class) and listed under ``missing_predictions``.

    Args:
        dataset ([`SegmentationDataset`]): the evaluated split.
        out_dir: the folder `evaluate` wrote to.
        limit (`int`, *optional*): score only the first `limit` images.
        sweep_tau (`bool`, defaults to `False`): also compute the optimistic tau sweep from ``scores/*.npz``.
        progress (`bool`, defaults to `True`): show a progress bar.
        info (`dict`, *optional*): run settings to record (protocol, tau, ...); defaults to those of
            ``run_config.json`` when present.

    Returns:
        `dict`: the content written to ``metrics.json`` (metrics in percent).
    """
    out = Path(out_dir)
    samples = dataset.samples[:limit] if limit is not None else list(dataset.samples)
    if info is None:
        info = {}
        config_path = out / RUN_CONFIG
        if config_path.is_file():
            previous = json.loads(config_path.read_text(encoding="utf-8"))
            info = {k: previous.get(k) for k in ("protocol", "tau", "filter", "model")}
    no_pred = 0 if dataset.has_background else dataset.ignore_index
    report = _score(dataset, samples, out, no_pred, sweep_tau, progress)
    report.update(
        {
            "dataset": dataset.name,
            "split": dataset.split,
            "protocol": info.get("protocol"),
            "tau": info.get("tau") if dataset.has_background else NO_BACKGROUND_TAU,
            "tau_note": (
                "background score of the segmenter (fixed, not tuned on this split)"
                if dataset.has_background
                else f"no background class: background never wins (tau = {NO_BACKGROUND_TAU}), every pixel gets "
                "its best class"
            ),
            "num_images": len(samples),
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.classes),
            "limit": limit,
            "units": "percent",
        }
    )
    report.update({k: v for k, v in info.items() if k not in ("protocol", "tau")})
    ordered = {k: report[k] for k in _REPORT_ORDER if k in report}
    ordered.update({k: v for k, v in report.items() if k not in ordered})
    _write_text(out / "metrics.json", json.dumps(ordered, indent=2) + "\n")
    _write_text(out / "metrics.md", _markdown(ordered, dataset))
    logger.info(
        "%s %s (%s, tau=%s, %d images): mIoU %s%%", dataset.name, dataset.split, ordered["protocol"],
        ordered["tau"], len(samples), _fmt(ordered["mIoU"]),
    )  # fmt: skip
    return ordered


_REPORT_ORDER = (
    "dataset", "split", "protocol", "tau", "tau_note", "num_images", "num_classes", "mIoU", "mAcc", "aAcc",
    "missing_predictions", "missing_prediction_reasons", "images_without_candidates", "per_class_iou",
    "per_class_acc", "tau_sweep_optimistic",
)  # fmt: skip


def _score(
    dataset: SegmentationDataset, samples: Sequence, out: Path, no_pred: int, sweep_tau: bool, progress: bool
) -> dict[str, Any]:
    """Score every prediction PNG (and, with `sweep_tau`, every score map) of `samples` against the ground truth."""
    num_classes = dataset.num_classes
    cm = ConfusionMatrix(num_classes, dataset.ignore_index)
    sweep = {t: ConfusionMatrix(num_classes, dataset.ignore_index) for t in SWEEP_TAUS} if sweep_tau else {}
    missing: dict[str, str] = {}
    missing_scores: list[str] = []
    for sample in tqdm(samples, desc="scoring", unit="img", disable=not progress, dynamic_ncols=True):
        gt = dataset.load_label(sample)
        pred, reason = _read_prediction(out / "predictions" / f"{sample.image_id}.png", gt.shape, num_classes)
        if pred is None:
            missing[sample.image_id] = reason
            pred = np.full(gt.shape, no_pred, dtype=np.int64)
        cm.update(pred, gt)
        if sweep_tau:
            _update_sweep(sweep, out / "scores" / f"{sample.image_id}.npz", gt, missing_scores, sample.image_id)
    if missing:
        logger.warning(
            "%d of %d predictions missing or unreadable, scored as all background: %s",
            len(missing), len(samples), ", ".join(list(missing)[:10]),
        )  # fmt: skip
    report = cm.compute().to_dict(list(dataset.classes))
    report["missing_predictions"] = list(missing)
    report["missing_prediction_reasons"] = missing
    if sweep_tau:
        curve = {f"{t:.2f}": m.compute().to_dict(list(dataset.classes))["mIoU"] for t, m in sweep.items()}
        best = max(curve, key=lambda k: -1.0 if curve[k] is None else curve[k])
        report["tau_sweep_optimistic"] = {
            "note": SWEEP_NOTE,
            "best_tau": float(best),
            "best_mIoU": curve[best],
            "mIoU_by_tau": curve,
            "missing_score_maps": missing_scores,
            "rule": "pixel = argmax class if its score > tau else background (ties -> background)",
        }
    return report


def _update_sweep(
    sweep: dict[float, ConfusionMatrix], path: Path, gt: np.ndarray, missing: list[str], image_id: str
) -> None:
    valid = gt != 255
    target = gt[valid]
    try:
        with np.load(path) as data:
            scores, class_ids = data["scores"].astype(np.float32), data["class_ids"].astype(np.int64)
        if scores.shape[1:] != gt.shape or len(class_ids) != scores.shape[0]:
            raise ValueError(f"score maps of shape {scores.shape} do not match the ground truth {gt.shape}")
    except Exception:  # missing or damaged score file: all background for every tau, and reported
        missing.append(image_id)
        scores, class_ids = np.zeros((0, *gt.shape), np.float32), np.zeros(0, np.int64)
    if scores.shape[0] == 0:
        best_score = np.full(target.shape, -np.inf, dtype=np.float32)
        best_class = np.zeros(target.shape, dtype=np.int64)
    else:
        flat = scores[:, valid]
        best_score = flat.max(axis=0)
        best_class = class_ids[flat.argmax(axis=0)]
    for t, m in sweep.items():
        m.update(np.where(best_score > t, best_class, 0), target)


# ------------------------------------------------------------------------------------------------------------ CLI glue
def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` flags to a parser. Every optional flag defaults to None = "not given": `run_eval` forwards
    only the flags a user set, so library defaults stay the single source of truth."""
    parser.add_argument("--dataset", required=True, help=f"benchmark: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--root", required=True, help="dataset folder or a parent of it (e.g. mmseg's data/)")
    parser.add_argument("--out", required=True, help="output folder (predictions/, metrics.json, metrics.md)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="paper: per-image candidates from --candidates or --filter; oracle: ground-truth classes (WSSS); "
        "full-vocabulary: all classes (default: paper)",
    )
    parser.add_argument(
        "--tau",
        type=float,
        default=None,
        help="background score for datasets with a background class (default: the model's SegmenterConfig.tau)",
    )
    parser.add_argument("--candidates", default=None, help="candidate-class JSON for --protocol paper (default: none)")
    parser.add_argument(
        "--filter",
        default=None,
        help="category filter for --protocol paper without --candidates, e.g. clip (default: none)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"model id or folder (default: 'shapes' for --dataset shapes, else {DEFAULT_MODEL})",
    )
    add_override_argument(
        parser,
        "config_overrides",
        "override one SegmenterConfig field, repeatable, e.g. --set token_rule=last (default: the model's config)",
    )
    parser.add_argument("--captioner", default=None, help="BLIP id or folder for captioned prompts (default: none)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default: the library's, cpu)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="default: the library's, float32"
    )
    parser.add_argument("--split", default=None, help="split to evaluate, e.g. train for WSSS (default: val)")
    parser.add_argument(
        "--class-names",
        choices=("standard", "paper"),
        default=None,
        help="prompt with the dataset's names or the paper's renames, e.g. plane/people (default: standard)",
    )
    parser.add_argument("--label-dir", default=None, help="VOC/Context label folder name (default: auto)")
    parser.add_argument(
        "--shard", type=parse_shard, default=None, help="i/n: only the i-th (0-based) of n parts (default: all)"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (default: all)")
    parser.add_argument(
        "--sweep-tau",
        action="store_true",
        default=None,
        help="also report the optimistic best tau over 0.30..0.74 (saves score maps; default: off)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        default=None,
        help="load no model: score the predictions already in --out, e.g. after shards (default: off)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="hide the progress bar"
    )
    return parser


def _given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {kw: getattr(args, attr) for attr, kw in mapping.items() if getattr(args, attr, None) is not None}


def _load_segmenter(args: argparse.Namespace) -> Any:
    from diffsegmenter import DiffSegmenter

    kwargs = _given(args, {"device": "device", "captioner": "captioner"})
    key = DATASET_ALIASES.get(args.dataset.lower(), args.dataset.lower())
    if (getattr(args, "protocol", None) or "paper") == "paper" and key in RELEASED_SCRIPT_OF_DATASET:
        # the paper's numbers come from one script per dataset: its prompt wording and class-token rule
        kwargs.update(RELEASED_SCRIPT_RULES[RELEASED_SCRIPT_OF_DATASET[key]])
    kwargs.update(dict(getattr(args, "config_overrides", None) or []))  # the user's --set wins
    if getattr(args, "dtype", None) is not None:
        import torch

        kwargs["dtype"] = getattr(torch, args.dtype)
    model = args.model
    if model is None:
        model = (
            "shapes" if DATASET_ALIASES.get(args.dataset.lower(), args.dataset.lower()) == "shapes" else DEFAULT_MODEL
        )
    return DiffSegmenter.from_pretrained(model, **kwargs)


def run_eval(
    args: argparse.Namespace,
    segmenter: Any = None,
    filter: Any = None,
    load_segmenter: Callable[[argparse.Namespace], Any] | None = None,
) -> dict[str, Any]:
    """Run ``diffsegmenter eval`` from parsed `add_eval_arguments` flags.

    Args:
        args (`argparse.Namespace`): parsed flags.
        segmenter (*optional*): an already built segmenter (then --model/--device/--dtype/--captioner are unused).
            With ``--score-only`` no segmenter is used or loaded.
        filter (*optional*): a category-filter object to use instead of the ``--filter`` name.
        load_segmenter (*optional*): ``callable(args) -> segmenter`` replacing the default
            ``DiffSegmenter.from_pretrained(--model, device=..., dtype=..., captioner=..., **--set overrides)``
            (each keyword only when its flag was given).

    Returns:
        `dict`: what [`evaluate`] returns.
    """
    dataset = load_dataset(
        args.dataset,
        args.root,
        **_given(args, {"split": "split", "class_names": "class_names", "label_dir": "label_dir"}),
    )
    kwargs = _given(
        args,
        {
            "protocol": "protocol",
            "tau": "tau",
            "candidates": "candidates_json",
            "filter": "filter",
            "shard": "shard",
            "limit": "limit",
            "progress": "progress",
            "sweep_tau": "sweep_tau",
        },
    )
    if filter is not None:
        kwargs["filter"] = filter
    if getattr(args, "score_only", None):
        return score_predictions(
            dataset, args.out, **{k: v for k, v in kwargs.items() if k in ("limit", "sweep_tau", "progress")}
        )
    if segmenter is None:
        segmenter = (load_segmenter or _load_segmenter)(args)
    return evaluate(segmenter, dataset, args.out, **kwargs)


def main_eval(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``main_eval(["--dataset", "voc21", "--root", "data", "--out", "out", ...])``."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="diffsegmenter eval", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run_eval(args)
    if report.get("metrics_computed", True):
        logger.info("metrics written to %s", Path(args.out) / "metrics.json")
    return 0
