"""Scoring a folder of prediction PNGs against the ground truth: ``metrics.json``, ``metrics.md`` and the optional
(optimistic) background-threshold sweep. Needs no model: ``eval --score-only`` is only this."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..batch.runner import RUN_CONFIG, read_run_record
from ..io.atomic import write_json, write_text
from .datasets import SegmentationDataset
from .metrics import ConfusionMatrix

__all__ = [
    "NO_BACKGROUND_TAU",
    "RUN_INFO",
    "SWEEP_NOTE",
    "SWEEP_TAUS",
    "check_scored_run",
    "candidates_sha256",
    "file_sha256",
    "score_predictions",
]

logger = logging.getLogger(__name__)

NO_BACKGROUND_TAU = -1.0
"""Background score used on datasets without a background class: class scores are in [0, 1], so it never wins."""
SWEEP_TAUS: tuple[float, ...] = tuple(round(0.30 + 0.01 * i, 2) for i in range(45))
"""The released code's background-threshold sweep, 0.30 .. 0.74 step 0.01."""
SWEEP_NOTE = "tau tuned on this split (optimistic)"
RUN_INFO = "run_info.json"
"""What an ``eval`` run records for its report besides the metrics (protocol, prompt rule, candidate file, images
without candidates...), written by every run and read by ``--score-only``."""


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


def _fmt(value: float | None, ndigits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{ndigits}f}"


#: Settings shown in ``metrics.md`` (``metrics.json`` holds them all under ``segmenter_config``).
_SHOWN_SETTINGS = ("resolution", "timestep", "readout", "flip", "refine", "prompt_mode")


def _setting_rows(report: dict[str, Any]) -> list[str]:
    """``metrics.md`` rows naming the model and the settings that made the predictions (none for a run recorded by
    an older version)."""
    rows = [f"| {key.replace('_', ' ')} | {report[key]} |" for key in ("model", "input_protocol") if report.get(key)]
    config = report.get("segmenter_config") or {}
    shown = ", ".join(f"{k}={config[k]}" for k in _SHOWN_SETTINGS if config.get(k) is not None)
    if shown:
        rows.append(f"| settings | {shown} (all: metrics.json `segmenter_config`) |")
    if report.get("settings_provenance"):
        changed = report.get("settings_overridden")
        but = f" (except {', '.join(changed)}: set for this run, by its flags or its protocol)" if changed else ""
        rows.append(f"| settings chosen | {report['settings_provenance']}{but} |")
    return rows


def _markdown(report: dict[str, Any], dataset: SegmentationDataset) -> str:
    truth = report.get("ground_truth") or {}
    lines = [
        f"# Evaluation: {report['dataset']} ({report['split']})",
        "",
        "| setting | value |",
        "|---|---|",
        f"| protocol | {report['protocol']} |",
        f"| tau | {report['tau']} ({report['tau_note']}) |",
        *_setting_rows(report),
        f"| ground truth | `{truth.get('labels')}` under `{truth.get('root')}` |",
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
        reasons = report.get("missing_prediction_reasons") or {}
        shown = ", ".join(f"{i} ({reasons.get(i, 'missing')})" for i in report["missing_predictions"][:20])
        more = " ..." if len(report["missing_predictions"]) > 20 else ""
        lines += ["", f"Missing/unreadable predictions, scored as all background: {shown}{more}"]
    sweep = report.get("tau_sweep_optimistic")
    if sweep and sweep.get("missing_score_maps"):
        absent = sweep["missing_score_maps"]
        lines += [
            "",
            f"Tau sweep: no best value, {len(absent)} score map(s) missing or unreadable: "
            f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}",
        ]
    elif sweep:
        lines += [
            "",
            f"Tau sweep ({sweep['note']}): best mIoU {_fmt(sweep['best_mIoU'])} at tau = {sweep['best_tau']}. "
            "Not comparable with a fixed-tau number.",
        ]
    return "\n".join(lines) + "\n"


def _tau_note(dataset: SegmentationDataset, info: dict[str, Any]) -> str:
    """What the report's tau is, in words: fixed for the whole run, and where it came from. Whether it was chosen
    on the evaluated split is not known here (the model folder's ``_provenance``, under ``settings_provenance``,
    says how its settings were chosen)."""
    if not dataset.has_background:
        return (
            f"no background class: background never wins (tau = {NO_BACKGROUND_TAU}), every pixel gets its best class"
        )
    source = {
        "given": "given for this run (--tau)",
        "set on the segmenter": "set on the segmenter for this run (--set tau=..., from_pretrained(tau=...)), not "
        "its model folder's",
        "segmenter config": "the segmenter's configured tau (its model folder's or the library default); how the "
        "model's settings were chosen: settings_provenance",
    }.get(info.get("tau_source"), "its origin not recorded")
    return f"background score, fixed for the whole run: {source}"


def score_predictions(
    dataset: SegmentationDataset,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    sweep_tau: bool = False,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    tau: float | None = None,
    candidates_json: str | os.PathLike | None = None,
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
        info (`dict`, *optional*): run settings to record (protocol, tau, ...); without it (``--score-only``),
            those of ``run_info.json`` (or ``run_config.json``), after [`check_scored_run`].
        tau, candidates_json (*optional*): without `info`, the ``--tau`` and ``--candidates`` given, which must be
            the predictions' (:func:`check_scored_run`).

    Returns:
        `dict`: the content written to ``metrics.json`` (metrics in percent).
    """
    out = Path(out_dir)
    samples = dataset.samples[:limit] if limit is not None else list(dataset.samples)
    if info is None:
        check_scored_run(out, dataset, tau=tau, candidates_json=candidates_json)
        info = {}
        if (out / RUN_INFO).is_file():
            info = read_run_record(out / RUN_INFO)
        elif (out / RUN_CONFIG).is_file():  # a folder from a version that wrote no run_info.json
            previous = read_run_record(out / RUN_CONFIG)
            info = {k: previous.get(k) for k in ("protocol", "tau", "filter", "model")}
    no_pred = 0 if dataset.has_background else dataset.ignore_index
    report = _score(dataset, samples, out, no_pred, sweep_tau, progress)
    report.update(
        {
            "dataset": dataset.name,
            "split": dataset.split,
            "protocol": info.get("protocol"),
            "tau": info.get("tau") if dataset.has_background else NO_BACKGROUND_TAU,
            "tau_note": _tau_note(dataset, info),
            "ground_truth": {"root": str(dataset.root), "labels": dataset.label_folder},
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
    write_json(out / "metrics.json", ordered, ensure_ascii=True)
    write_text(out / "metrics.md", _markdown(ordered, dataset))
    logger.info(
        "%s %s (%s, tau=%s, %d images): mIoU %s%%", dataset.name, dataset.split, ordered["protocol"],
        ordered["tau"], len(samples), _fmt(ordered["mIoU"]),
    )  # fmt: skip
    return ordered


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex (how ``run_config.json`` recorded a candidate file before
    :func:`candidates_sha256`)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def candidates_sha256(path: str | os.PathLike) -> str:
    """The SHA-256, hex, of a candidate file's JSON content (keys sorted, no spacing): how ``run_config.json``
    records it (``candidates_content_sha256``), so that the same file with other line endings (a git checkout on
    Windows), a byte-order mark or other spacing resumes the run. A file that is not JSON: its bytes' hash."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return file_sha256(path)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def check_scored_run(
    out_dir: str | os.PathLike,
    dataset: SegmentationDataset,
    *,
    tau: float | None = None,
    candidates_json: str | os.PathLike | None = None,
) -> None:
    """Refuse to score predictions (``--score-only``) that ``run_config.json`` says were made otherwise.

    Another dataset, split or number of classes: their class ids would be read as this dataset's (``voc21``'s ids
    scored as ``voc20``'s are all shifted by one). A `tau` or `candidates_json` given (the same command as the
    prediction runs) other than the predictions': scoring cannot change them.

    Raises:
        ValueError: naming what differs and the way out.
    """
    path = Path(out_dir) / RUN_CONFIG
    if not path.is_file():
        return
    previous = read_run_record(path)
    if isinstance(previous.get("classes"), list):  # the names may be spelt otherwise (--class-names): ids count
        previous["num_classes"] = len(previous["classes"])
    wanted = {"dataset": dataset.name, "split": dataset.split, "num_classes": dataset.num_classes}
    changed = [k for k, v in wanted.items() if k in previous and previous[k] != v]
    if changed:
        made = f"{previous.get('dataset')} {previous.get('split')}"
        raise ValueError(
            f"the predictions in {out_dir} were made for {made} ({path}), not for {dataset.name} {dataset.split} "
            f"({', '.join(changed)} differ{'s' if len(changed) == 1 else ''}): score them with the --dataset, "
            "--split they were made with"
        )
    if tau is not None and previous.get("tau") is not None and float(tau) != float(previous["tau"]):
        raise ValueError(
            f"--tau {tau}: the predictions in {out_dir} were made with tau {previous['tau']} ({path}); --score-only "
            "scores them as they are: leave --tau out, or predict again into another --out"
        )
    # the content's hash; a folder of an older version recorded the file's bytes'
    key, digest = (
        ("candidates_content_sha256", candidates_sha256)
        if "candidates_content_sha256" in previous
        else ("candidates_sha256", file_sha256)
    )
    given = digest(candidates_json) if candidates_json is not None else None
    if given is not None and key in previous and given != previous[key]:
        raise ValueError(
            f"--candidates {candidates_json} is not the file the predictions in {out_dir} were made with "
            f"({path}); leave it out to score them as they are, or predict again into another --out"
        )


_REPORT_ORDER = (
    "dataset", "split", "protocol", "tau", "tau_note", "ground_truth", "num_images", "num_classes", "mIoU", "mAcc",
    "aAcc", "missing_predictions", "missing_prediction_reasons", "images_without_candidates", "per_class_iou",
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
        if missing_scores:  # scored as all background, a missing map would move the best tau: no best is given
            logger.warning(
                "%d of %d score maps missing or unreadable, so the tau sweep has no best value: %s",
                len(missing_scores), len(samples), ", ".join(missing_scores[:10]),
            )  # fmt: skip
        report["tau_sweep_optimistic"] = {
            "note": SWEEP_NOTE,
            "best_tau": None if missing_scores else float(best),
            "best_mIoU": None if missing_scores else curve[best],
            "mIoU_by_tau": curve,
            "missing_score_maps": missing_scores,
            "rule": "pixel = argmax class if its score > tau else background (ties -> background)",
        }
    return report


def _read_best(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) best class score (float32) and best class id (int64) of a ``scores/<id>.npz``: ``best_score`` and
    ``best_class`` as the harness writes them, or the (K, H, W) ``scores`` and ``class_ids`` of earlier versions."""
    with np.load(path) as data:
        if "best_score" in data:
            return data["best_score"].astype(np.float32), data["best_class"].astype(np.int64)
        scores, class_ids = data["scores"].astype(np.float32), data["class_ids"].astype(np.int64)
    if len(class_ids) != scores.shape[0]:
        raise ValueError(f"{len(class_ids)} class ids for {scores.shape[0]} score maps")
    if scores.shape[0] == 0:
        return np.full(scores.shape[1:], -np.inf, np.float32), np.zeros(scores.shape[1:], np.int64)
    return scores.max(axis=0), class_ids[scores.argmax(axis=0)]


def _update_sweep(
    sweep: dict[float, ConfusionMatrix], path: Path, gt: np.ndarray, missing: list[str], image_id: str
) -> None:
    valid = gt != 255
    target = gt[valid]
    try:
        best_score, best_class = _read_best(path)
        if best_score.shape != gt.shape or best_class.shape != gt.shape:
            raise ValueError(f"score maps of shape {best_score.shape} do not match the ground truth {gt.shape}")
    except Exception:  # missing or damaged score file: all background for every tau, and reported
        missing.append(image_id)
        best_score, best_class = np.full(gt.shape, -np.inf, np.float32), np.zeros(gt.shape, np.int64)
    best_score, best_class = best_score[valid], best_class[valid]
    for t, m in sweep.items():
        m.update(np.where(best_score > t, best_class, 0), target)
