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
* ``full-vocabulary``: every class of the dataset for every image: the class lists of the mmseg / SCLIP harness,
  not its inference (short side 336 and 224 sliding crops, background by ``prob_thd``); each image goes to the
  segmenter whole, as in the paper's protocol, and ``metrics.json`` says so under ``input_protocol``.

Background: on datasets with a background class (voc21, pc60, object, shapes) a pixel is background unless some class
scores strictly above ``tau``. On datasets without one (voc20, pc59, stuff, ade, city) every pixel must get a class, so
the harness calls ``segment(..., tau=-1.0)``: scores lie in [0, 1], so background never wins.

The run itself is the package's one [`~diffsegmenter.batch.BatchRunner`] with an [`EvalTask`] (resume from the
prediction PNGs, ``run_config.json`` as the folder's fingerprint, stop at the first error); scoring is
[`~diffsegmenter.evaluation.scoring`]. The ``eval`` command's flags live in ``diffsegmenter.cli.evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..batch.folder import shared_output_lock
from ..batch.runner import (
    RUN_CONFIG,
    BatchRunner,
    BatchTask,
    check_run_fingerprint,
    read_run_record,
    result_settings,
    segmenter_session,
)
from ..config import RELEASED_SCRIPT_RULES, check_tau
from ..images import read_stored_pixels
from ..io.atomic import write_json, write_npz
from ..io.formats.label_png import save_label_png
from ..io.paths import image_key
from .datasets import Sample, SegmentationDataset, normalize_class_name
from .scoring import NO_BACKGROUND_TAU, RUN_INFO, SWEEP_TAUS, candidates_sha256, file_sha256, score_predictions

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
    "DEFAULT_MODEL",
    "NO_BACKGROUND_TAU",
    "RELEASED_SCRIPT_OF_DATASET",
    "PROTOCOLS",
    "RUN_CONFIG",
    "SWEEP_TAUS",
    "EvalTask",
    "PeerProcessError",
    "evaluate",
    "load_candidates",
    "parse_shard",
    "prompt_rule_of",
    "score_predictions",
    "shard_bounds",
]

Protocol = Literal["paper", "oracle", "full-vocabulary"]
PROTOCOLS: tuple[str, ...] = ("paper", "oracle", "full-vocabulary")
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""The model ``eval`` loads when none is given (the paper's; ``shapes`` for ``--dataset shapes``)."""


# ------------------------------------------------------------------------------------------------------------ helpers
def shard_bounds(num_items: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of shard ``index`` of ``count`` (0-based), remainder to the first shards.

    This is the split of `accelerate.PartialState.split_between_processes`, so ``--shard i/n`` jobs and
    ``accelerate launch`` processes cover the image list the same way. With fewer items than shards the shards past
    the last item are empty, as in accelerate 1.14 and newer (older accelerate repeats the last item there); under
    ``accelerate launch`` the harness splits with this function whatever accelerate's version, so no image is
    predicted twice.
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
    if count < 1:
        raise argparse.ArgumentTypeError(f"--shard {text}: n, the number of parts, must be at least 1 (e.g. 0/4)")
    if index >= count:
        raise argparse.ArgumentTypeError(f"--shard {text}: the index is 0-based, use 0/{count} .. {count - 1}/{count}")
    return index, count


_sample_key = functools.partial(image_key, strip_coco2014=True, strip_extension=False)
"""An image id (of the dataset, or of a candidate file, which its reader has already cut to the base name without
extension) as matched: without the COCO-2014 prefix (``COCO_val2014_000000182611`` -> ``000000182611``). An id has
no extension left to strip, so a dot inside it (``scene.v1``) stays."""


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
    for raw_key, names in read_candidate_file(path).items():
        ids = union.setdefault(_sample_key(raw_key), set())
        for name in names:
            if normalize_class_name(name) == "background" and not dataset.has_background:
                continue  # nothing to segment, as on datasets with a background class (voc20 as voc21)
            try:
                class_id = dataset.class_index(name)
            except ValueError as exc:
                raise ValueError(f"{path}: image {raw_key!r} lists class {name!r}: {exc}") from None
            if class_id != background:
                ids.add(class_id)
    return {k: sorted(v) for k, v in union.items()}


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 in the stored pixel orientation (no EXIF rotation), i.e. aligned with the label PNG; modes
    are converted as ``segment`` converts them (a 16-bit image is rescaled, not clipped to white)."""
    return read_stored_pixels(path)


def _config_dict(segmenter: Any) -> dict[str, Any]:
    config = getattr(segmenter, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        values = dataclasses.asdict(config)
    elif config is not None and hasattr(config, "__dict__"):
        values = dict(vars(config))
    else:
        values = {}
    values.pop("tau", None)  # the effective tau is recorded separately
    # without the settings that do not change the predictions (batch_size, max_image_pixels): a resume may change them
    return json.loads(json.dumps(result_settings(values), default=str, sort_keys=True))


UNRECORDED = ("model",)
"""Settings an older version recorded as None when it could not tell them: the model of SD3, FLUX and PixArt runs
(not a change of model on resume)."""


def _model_id(segmenter: Any) -> str | None:
    """Best-effort id of the weights: ``segmenter.name_or_path``, else the denoiser's (the UNet's or, on SD3, FLUX
    and PixArt, the transformer's) config ``_name_or_path``: the hub id or folder it was loaded from."""
    value = getattr(segmenter, "name_or_path", None)
    if value is None:
        backbone = getattr(segmenter, "backbone", segmenter)
        # a transformer family has no UNet: reading only the UNet's config gave None, and a resume into a folder of
        # another model's predictions was accepted
        denoiser = getattr(backbone, getattr(backbone, "denoiser_folder", "unet"), None)
        config = getattr(denoiser, "config", None)
        value = config.get("_name_or_path") if isinstance(config, Mapping) else None
    return str(value) if value else None


def _backbone_name(segmenter: Any) -> str | None:
    """The backbone family's class name (``StableDiffusionBackbone``, ``FluxBackbone``...), None without one."""
    backbone = getattr(segmenter, "backbone", None)
    return None if backbone is None else type(backbone).__name__


def _partial_state(cpu: bool) -> Any | None:
    """accelerate's PartialState when running under `accelerate launch` / torchrun with several processes.

    Args:
        cpu (`bool`): the segmenter runs on the CPU. accelerate then needs ``PartialState(cpu=True)`` (a gloo process
            group); without it, CPU processes each see a single-process state, and each predicted every image.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.num_processes <= 1:
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate sees one process: launch the processes with "
            "torchrun or `accelerate launch` (several GPUs), or run shards with --shard i/n"
        )
    return state


# ------------------------------------------------------------------------------------------------------------ evaluate
def _check_protocol(protocol: str, candidates_json: Any, filter: Any) -> None:
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


def _check_options(
    dataset: SegmentationDataset, tau: float | None, shard: tuple[int, int] | None, limit: int | None, sweep_tau: bool
) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if shard is not None:
        shard_bounds(0, *shard)  # validates (i, n) before anything is written
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world > 1 and tuple(shard) != (rank, world):  # shard $RANK/$WORLD_SIZE, one per process, is fine
            raise ValueError(
                f"shard {shard[0]}/{shard[1]} in process {rank} of a launch of {world}: the processes would not "
                "cover the images once each. Either launch the processes without --shard (they split the images "
                "and the main process scores them), or run the --shard jobs without torchrun / accelerate launch"
            )
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


def _taus(segmenter: Any, dataset: SegmentationDataset, tau: float | None) -> tuple[float | None, float | None]:
    """(tau passed to ``segment`` (None = not passed), tau recorded for the run)."""
    if not dataset.has_background:
        return NO_BACKGROUND_TAU, NO_BACKGROUND_TAU
    default_tau = getattr(getattr(segmenter, "config", None), "tau", None)
    effective = float(tau) if tau is not None else (float(default_tau) if default_tau is not None else None)
    return tau, effective  # tau is forwarded only when given


def _fingerprint(
    segmenter: Any,
    dataset: SegmentationDataset,
    protocol: str,
    tau: float | None,
    candidates_json: str | os.PathLike | None,
    filter: Any,
) -> dict[str, Any]:
    """The settings that decide the predictions: a folder holding predictions made with others is refused.

    Besides the dataset, protocol and segmenter settings: the captioner (it writes the prompts), the weights' dtype,
    and for ``oracle`` the label folder (its classes are the prompts).
    """
    labels = dataset.label_folder if protocol == "oracle" else None
    dtype = getattr(segmenter, "dtype", None)
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "classes": list(dataset.classes),
        "labels": labels,
        "protocol": protocol,
        "tau": tau,
        # the content's, not the bytes' (line endings); an older folder's candidates_sha256 is not compared
        "candidates_content_sha256": candidates_sha256(candidates_json) if candidates_json is not None else None,
        "filter": _filter_id(filter),
        "segmenter": type(segmenter).__name__,
        "model": _model_id(segmenter),
        "dtype": None if dtype is None else str(dtype),
        "captioner": _captioner_id(segmenter),
        "segmenter_config": _config_dict(segmenter),
    }


def _with_older_keys(out: Path, fingerprint: dict[str, Any], candidates_json: Any) -> dict[str, Any]:
    """`fingerprint`, plus the candidate file's byte hash (``candidates_sha256``) where the folder's record is an
    older version's, which recorded only that: a setting one side lacks is not compared, so another candidate file
    was accepted there and the predictions mixed. (A copy of the same file with other line endings is refused there
    too: that record cannot tell.)"""
    path = out / RUN_CONFIG
    if candidates_json is None or not path.is_file():
        return fingerprint
    try:
        earlier = read_run_record(path)
    except ValueError:
        return fingerprint  # check_run_fingerprint says what is wrong with it
    if "candidates_sha256" in earlier and "candidates_content_sha256" not in earlier:
        return {**fingerprint, "candidates_sha256": file_sha256(candidates_json)}
    return fingerprint


def _filter_id(filter: Any) -> Any:
    """The filter as ``run_config.json`` records it: its name, a filter object's own ``fingerprint`` (the CLIP
    filter's models and settings) when it has one, else its class name."""
    if filter is None or isinstance(filter, str):
        return filter
    described = getattr(filter, "fingerprint", None)  # check_run_fingerprint makes it JSON-like
    return described if described is not None else type(filter).__name__


def _captioner_id(segmenter: Any) -> str | None:
    """The segmenter's captioner as recorded: its class and, when known, its weights' id (None without one)."""
    captioner = getattr(segmenter, "captioner", None)
    if captioner is None:
        return None
    model_config = getattr(getattr(captioner, "model", None), "config", None)
    weights = getattr(model_config, "_name_or_path", None) or getattr(captioner, "name_or_path", None)
    return f"{type(captioner).__name__}({weights})" if weights else type(captioner).__name__


@dataclasses.dataclass
class EvalTask(BatchTask[Sample]):
    """One dataset image -> ``segment`` with the protocol's classes -> a prediction PNG in dataset class ids.

    Done when ``predictions/<id>.png`` exists (and, with ``sweep_tau``, ``scores/<id>.npz``, written first).
    """

    segmenter: Any
    dataset: SegmentationDataset
    out: Path
    protocol: str
    candidates: dict[str, list[int]] | None = None
    filter: Any = None
    segment_tau: float | None = None
    sweep_tau: bool = False

    @property
    def no_pred(self) -> int:
        """Value of a pixel left to "background" (the ignore value on datasets without one)."""
        return 0 if self.dataset.has_background else self.dataset.ignore_index

    def prediction_path(self, sample: Sample) -> Path:
        return self.out / "predictions" / f"{sample.image_id}.png"

    def scores_path(self, sample: Sample) -> Path:
        return self.out / "scores" / f"{sample.image_id}.npz"

    def classes_for(self, sample: Sample) -> list[int]:
        """The class ids the protocol segments this image with."""
        dataset = self.dataset
        if self.protocol == "full-vocabulary" or (self.protocol == "paper" and self.candidates is None):
            return dataset.foreground_ids
        if self.protocol == "oracle":
            present = np.unique(dataset.load_label(sample))
            return [int(c) for c in present if c != dataset.ignore_index and (c != 0 or not dataset.has_background)]
        return self.candidates.get(_sample_key(sample.image_id), [])

    def is_done(self, sample: Sample) -> bool:
        """The prediction PNG (and, with ``sweep_tau``, the score file) exists and reads back, at the image's size:
        a damaged file from an earlier run is recomputed, not scored as missing."""
        path = self.prediction_path(sample)
        if not path.is_file():
            return False
        try:
            with Image.open(sample.image_path) as image:
                size = image.size
            with Image.open(path) as prediction:
                if prediction.size != size:
                    raise ValueError(f"size {prediction.size} is not the image's {size}")
                prediction.verify()  # every chunk and its checksum: a truncated file fails here
            if self.sweep_tau:
                with np.load(self.scores_path(sample)) as data:
                    if "best_score" not in data.files and "scores" not in data.files:
                        raise ValueError("no score maps in it")
        except Exception as exc:  # a damaged or foreign file: recomputed
            logger.info("%s: the saved prediction is not usable (%s); recomputing", sample.image_id, exc)
            return False
        return True

    def load(self, sample: Sample) -> tuple[np.ndarray, list[int]]:
        return _read_rgb(sample.image_path), self.classes_for(sample)

    def session(self):
        return segmenter_session(self.segmenter)

    def segment(self, samples: Sequence[Sample], items: Sequence[tuple[np.ndarray, list[int]]]) -> list[tuple]:
        return [self._predict(sample, image, class_ids) for sample, (image, class_ids) in zip(samples, items)]

    def _predict(self, sample: Sample, image: np.ndarray, class_ids: list[int]) -> tuple:
        """(prediction in dataset ids, and with ``sweep_tau`` each pixel's best score (float32, -inf where no class
        was segmented) and best class (dataset ids), else None, None)."""
        if not class_ids:  # nothing to segment: everything is background
            pred = np.full(image.shape[:2], self.no_pred, dtype=np.uint8)
            return pred, np.full(image.shape[:2], -np.inf, np.float32), np.zeros(image.shape[:2], np.uint8)
        kwargs: dict[str, Any] = {"classes": [self.dataset.classes[c] for c in class_ids]}
        if self.filter is not None:
            kwargs["filter"] = self.filter
        if self.segment_tau is not None:
            kwargs["tau"] = self.segment_tau
        result = self.segmenter.segment(image, **kwargs)
        labels = np.asarray(result.labels)
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"{type(self.segmenter).__name__}.segment returned labels of shape {labels.shape} for image "
                f"{sample.image_path} of shape {image.shape[:2]}; labels must be at the input's size"
            )
        score_ids = np.array([self.dataset.class_index(c) for c in result.classes], dtype=np.int64)
        lut = np.concatenate([[self.no_pred], score_ids])
        if labels.size and (labels.min() < 0 or labels.max() > len(score_ids)):
            raise ValueError(
                f"segment labels must lie in 0..{len(score_ids)} (0 = background, i = classes[i-1]), got "
                f"{int(labels.min())}..{int(labels.max())} for {sample.image_path}"
            )
        if not self.sweep_tau:
            return lut[labels].astype(np.uint8), None, None
        # what the sweep needs, at the scores' own precision: so that at the run's tau it gives the prediction
        # itself (float16 maps flipped pixels within 2e-4 of tau)
        scores = np.asarray(result.scores, dtype=np.float32)
        best_score, best_class = scores.max(axis=0), score_ids[scores.argmax(axis=0)].astype(np.uint8)
        return lut[labels].astype(np.uint8), best_score, best_class

    def write(self, sample: Sample, item: Any, result: tuple) -> None:
        pred, best_score, best_class = result
        if self.sweep_tau:  # scores first: a PNG without its scores is recomputed on resume
            write_npz(self.scores_path(sample), best_score=best_score, best_class=best_class)
        save_label_png(self.prediction_path(sample), pred, palette=self.dataset.palette)


def _my_part(samples: list[Sample], shard: tuple[int, int] | None, state: Any) -> list[Sample]:
    """The samples this process predicts: its ``--shard``, its :func:`shard_bounds` share under ``accelerate launch``
    (not accelerate's own split, whose result depends on its version), else all. Under a launcher, `samples` are the
    ones still to predict (:func:`_pending_everywhere`), so that a resume splits the remaining work evenly."""
    if shard is not None:
        start, end = shard_bounds(len(samples), *shard)
    elif state is not None:
        start, end = shard_bounds(len(samples), state.process_index, state.num_processes)
    else:
        start, end = 0, len(samples)
    return samples[start:end]


def _pending_everywhere(samples: list[Sample], task: EvalTask, state: Any) -> list[Sample]:
    """The samples without a prediction yet, as the main process sees them, on every process.

    Each process splitting the whole list left one with nothing to do on a resume, waiting at the final barrier for
    the others' whole share (past the process group's time-out: 30 minutes on gloo). Deciding on the main process and
    sending it to the others makes them agree, though the others may have started writing predictions already.
    """
    from accelerate.utils import broadcast_object_list

    names = [s.image_id for s in samples if not task.is_done(s)] if state.is_main_process else None
    message = [names]
    _collective(lambda: broadcast_object_list(message, from_process=0))
    pending = set(message[0])
    return [s for s in samples if s.image_id in pending]


class PeerProcessError(RuntimeError):
    """Another process of a launched evaluation stopped (with its own error); this one cannot go on."""


def _collective(step: Callable[[], Any]) -> Any:
    """Run a step every process of the launch takes part in; a process that died turns into
    :class:`PeerProcessError` (torch's own error is a traceback about a closed connection)."""
    try:
        return step()
    except RuntimeError as exc:  # torch.distributed.DistBackendError is one
        logger.debug("collective step failed", exc_info=exc)
        cause = " ".join(str(exc).split())[:300]
        raise PeerProcessError(
            "a step all processes of this launch take failed, most likely because another process stopped (its "
            f"error is printed above; here: {cause}); the predictions made so far are kept: rerun the same command "
            "to resume"
        ) from None


def _shard_summary(
    dataset: SegmentationDataset, protocol: str, shard: tuple[int, int] | None, state: Any, size: int, report: Any
) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "protocol": protocol,
        "shard": list(shard) if shard is not None else [state.process_index, state.num_processes],
        "num_images_in_shard": size,
        "computed": len(report.segmented),
        "reused": len(report.already_done),
        "metrics_computed": False,
        "note": "predictions of this shard are saved; run once more without --shard to score the whole split "
        "(existing predictions are reused)",
    }


def _tau_source(task: EvalTask, overridden: list[str] | None) -> str | None:
    """Where the run's tau came from: ``"given"`` (``--tau`` / ``evaluate(tau=...)``), ``"set on the segmenter"``
    (``--set tau=...``, ``from_pretrained(..., tau=...)``: not what its model folder recommends), ``"segmenter
    config"`` (the model folder's ``segmenter_config.json`` or the library default), None on a dataset without
    background."""
    if not task.dataset.has_background:
        return None
    if task.segment_tau is not None:
        return "given"
    return "set on the segmenter" if overridden and "tau" in overridden else "segmenter config"


def _overridden_settings(segmenter: Any) -> list[str] | None:
    """The settings of ``segmenter.config`` that differ from what its model folder (``segmenter_config.json``) and
    its backbone family recommend, as ``from_pretrained`` builds that (those whose provenance the folder does not
    tell), the paper protocol's released-script rules among them; None for a segmenter that does not say (another
    kind of segmenter: no dataclass config, model settings or backbone family). One built from components, without
    a folder, is compared with its family's and the library's defaults."""
    from ..config import SegmenterConfig
    from ..segmenter import recommended_config

    config = getattr(segmenter, "config", None)
    settings = getattr(segmenter, "model_settings", None)
    backbone = getattr(segmenter, "backbone", None)
    if not isinstance(config, SegmenterConfig) or settings is None or not hasattr(backbone, "family_defaults"):
        return None
    try:
        recommended = recommended_config(backbone, settings)
    except (TypeError, ValueError):
        return None
    names = result_settings({f.name: None for f in dataclasses.fields(config)})
    return sorted(name for name in names if getattr(config, name) != getattr(recommended, name))


def _input_protocol(segmenter: Any) -> str | None:
    """How each image reaches the segmenter, for the report: the harness passes the whole image, and a segmenter
    with a ``resolution`` resizes it to a square (no short-side resize, no sliding window: not the mmseg / SCLIP
    harness's inference, whose numbers are made at short side 336 with 224 crops)."""
    resolution = getattr(segmenter, "resolution", None)
    if resolution is None:
        return None
    return (
        f"whole image resized to {resolution}x{resolution} (aspect ratio not kept), scores resized back to the "
        "image; no sliding window"
    )


def _run_info(task: EvalTask, fingerprint: dict[str, Any], samples: list[Sample], candidates_json: Any) -> dict:
    """What ``metrics.json`` records about the run besides the metrics and the counts of this process's work; also
    kept in ``run_info.json`` for a later ``--score-only``."""
    overridden = _overridden_settings(task.segmenter)
    info: dict[str, Any] = {
        "protocol": task.protocol,
        "prompt_rule": prompt_rule_of(getattr(task.segmenter, "config", None)),
        "tau": fingerprint["tau"],
        "candidates_json": str(candidates_json) if candidates_json is not None else None,
        "filter": fingerprint["filter"],
        "model": fingerprint["model"],
        "backbone": _backbone_name(task.segmenter),
        "dtype": fingerprint["dtype"],
        "tau_source": _tau_source(task, overridden),
        "settings_provenance": getattr(getattr(task.segmenter, "model_settings", None), "provenance", None),
        "settings_overridden": overridden,
        "input_protocol": _input_protocol(task.segmenter),
        "captioner": fingerprint["captioner"],
        "segmenter_config": fingerprint["segmenter_config"],
    }
    if task.candidates is not None:
        absent = [s.image_id for s in samples if not task.candidates.get(_sample_key(s.image_id))]
        info["images_without_candidates"] = absent
        if absent:
            logger.warning(
                "%d images have no entry (or an empty list) in %s and were segmented with no class (all "
                "background): %s",
                len(absent), candidates_json, ", ".join(absent[:10]),
            )  # fmt: skip
    return info


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
            ``accelerate launch`` with several processes the list is split as
            ``PartialState().split_between_processes`` splits it (:func:`shard_bounds`) and the main process scores
            after all are done.
        limit (`int`, *optional*): evaluate only the first `limit` images of the split.
        progress (`bool`, defaults to `True`): show a tqdm progress bar (with ETA).
        sweep_tau (`bool`, defaults to `False`): also save each pixel's best class score and class
            (``scores/<id>.npz``: ``best_score`` float32, ``best_class`` dataset ids) and report the best mIoU over
            tau = 0.30 .. 0.74 under ``"tau_sweep_optimistic"`` (null when some score file is missing). That number is tuned on
            the evaluated split; the headline ``"mIoU"`` always uses the fixed tau.

    Returns:
        `dict`: the content of ``metrics.json`` (all metrics in percent): ``mIoU``, ``mAcc``, ``aAcc``,
        ``per_class_iou`` / ``per_class_acc`` by class name (None for a class absent from GT and prediction),
        ``dataset``, ``split``, ``protocol``, ``tau``, ``num_images``, ``missing_predictions``, ... For a shard run,
        a summary with ``"metrics_computed": False`` instead.
    """
    _check_protocol(protocol, candidates_json, filter)
    _check_options(dataset, tau, shard, limit, sweep_tau)  # all before anything is written

    out = Path(out_dir)
    samples = dataset.samples[:limit] if limit is not None else list(dataset.samples)
    segment_tau, effective_tau = _taus(segmenter, dataset, tau)
    candidates = load_candidates(candidates_json, dataset) if candidates_json is not None else None
    fingerprint = _fingerprint(segmenter, dataset, protocol, effective_tau, candidates_json, filter)
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("predictions", "scores"):
        if (out / folder).exists() and not (out / folder).is_dir():
            raise ValueError(
                f"{out / folder} is a file, where the run keeps its {folder}: move it away, or use another --out"
            )
    with shared_output_lock(out) as lock:  # shards with the same settings may share the folder, others may not
        fingerprint = _with_older_keys(out, fingerprint, candidates_json)
        check_run_fingerprint(out, fingerprint, may_replace=lock.exclusive, unrecorded_if_none=UNRECORDED)
        lock.share()
        # no other run replaced it while the lock changed
        check_run_fingerprint(out, fingerprint, may_replace=False, unrecorded_if_none=UNRECORDED)
        return _predict_and_score(segmenter, dataset, out, protocol, samples, candidates, candidates_json, filter,
                                  segment_tau, fingerprint, shard, limit, progress, sweep_tau)  # fmt: skip


def _predict_and_score(
    segmenter: Any,
    dataset: SegmentationDataset,
    out: Path,
    protocol: str,
    samples: list[Sample],
    candidates: dict[str, list[int]] | None,
    candidates_json: Any,
    filter: Any,
    segment_tau: float | None,
    fingerprint: dict[str, Any],
    shard: tuple[int, int] | None,
    limit: int | None,
    progress: bool,
    sweep_tau: bool,
) -> dict[str, Any]:
    """:func:`evaluate` once the folder's settings are checked: predict this process's part, then score (or return
    the shard's summary)."""
    task = EvalTask(segmenter, dataset, out, protocol, candidates, filter, segment_tau, sweep_tau)
    info = _run_info(task, fingerprint, samples, candidates_json)
    write_json(out / RUN_INFO, info, ensure_ascii=True)  # every process writes the same

    on_cpu = str(getattr(segmenter, "device", "cpu")).startswith("cpu")
    state = _partial_state(cpu=on_cpu) if shard is None else None
    todo = _pending_everywhere(samples, task, state) if state is not None else samples
    part = _my_part(todo, shard, state)
    show = progress and (state is None or state.is_local_main_process)
    runner = BatchRunner(on_error="raise", progress=show, desc=f"{dataset.name}/{protocol}", done_note=None)
    report = runner.run(part, task)
    logger.info(
        "%s: %d images predicted, %d reused from %s",
        dataset.name, len(report.segmented), len(report.already_done), out / "predictions",
    )  # fmt: skip

    computed, reused = len(report.segmented), len(report.already_done)
    if state is not None:  # every process's counts; also waits for all of them to finish
        from accelerate.utils import gather_object

        counts = _collective(lambda: gather_object([(len(report.segmented), len(report.already_done))]))
        computed = sum(made for made, _ in counts)
        reused = len(samples) - len(todo) + sum(found for _, found in counts)
    if (shard is not None and shard[1] > 1) or (state is not None and not state.is_main_process):
        return _shard_summary(dataset, protocol, shard, state, len(part), report)
    info.update(computed=computed, reused=reused)
    return score_predictions(dataset, out, limit=limit, sweep_tau=sweep_tau, progress=progress, info=info)
