"""``diffsegmenter eval``: a benchmark split -> prediction PNGs and ``metrics.json`` (resumable, shardable).

The run is :func:`diffsegmenter.evaluation.harness.evaluate`; this module turns flags into its arguments, forwarding
only the flags a user set, so library defaults stay the single source of truth.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..batch.runner import EXIT_OK
from .model import check_clip_filter_flags
from .parser import CliError, Command, add_model_arguments, configure, load_kwargs, register_command
from .segment import add_clip_filter_arguments

__all__ = ["EVAL_MODEL_HELP", "add_eval_arguments", "cmd_eval", "load_eval_segmenter", "main_eval", "run_eval"]

logger = logging.getLogger(__name__)

EVAL_MODEL_HELP = "'shapes' for --dataset shapes, else stable-diffusion-v1-5/stable-diffusion-v1-5"


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """``eval``'s own flags; every optional one defaults to None = "not given"."""
    from ..evaluation.catalog import DATASET_NAMES
    from ..evaluation.harness import PROTOCOLS, parse_shard

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
    add_clip_filter_arguments(parser)
    parser.add_argument("--captioner", default=None, help="BLIP id or folder for captioned prompts (default: none)")
    parser.add_argument(
        "--split", default=None, help="split to evaluate, e.g. train for WSSS (default: val; test for shapes)"
    )
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


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` flags, and the shared ``--model --device --dtype --set``, to a parser (the ``diffsegmenter``
    parser adds ``--offline`` and ``--verbose`` too). Every optional flag defaults to None = "not given"."""
    _add_eval_flags(parser)
    add_model_arguments(parser, EVAL_MODEL_HELP)
    return parser


def _given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {kw: getattr(args, attr) for attr, kw in mapping.items() if getattr(args, attr, None) is not None}


def _dataset_key(args: argparse.Namespace) -> str:
    from ..evaluation.catalog import DATASET_ALIASES

    return DATASET_ALIASES.get(args.dataset.lower(), args.dataset.lower())


def load_eval_segmenter(args: argparse.Namespace) -> Any:
    """``DiffSegmenter.from_pretrained`` for ``eval``: only the flags the user set, plus, for ``--protocol paper`` on a
    dataset the paper reported, that dataset's released script's prompt rule (a ``--set`` wins over it).

    The model is ``--model``, else ``shapes`` for ``--dataset shapes``, else the harness's ``DEFAULT_MODEL``.
    """
    from .. import DiffSegmenter
    from ..config import RELEASED_SCRIPT_RULES
    from ..evaluation.harness import DEFAULT_MODEL, RELEASED_SCRIPT_OF_DATASET

    kwargs = load_kwargs(args)
    key = _dataset_key(args)
    if (getattr(args, "protocol", None) or "paper") == "paper" and key in RELEASED_SCRIPT_OF_DATASET:
        # the paper's numbers come from one script per dataset: its prompt wording and class-token rule
        kwargs.update(RELEASED_SCRIPT_RULES[RELEASED_SCRIPT_OF_DATASET[key]])
    kwargs.update(dict(getattr(args, "config_set", None) or []))  # the user's --set wins
    model = args.model if args.model is not None else ("shapes" if key == "shapes" else DEFAULT_MODEL)
    if kwargs.get("device") == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one process per GPU under torchrun / accelerate launch: "cuda" alone would put every model on GPU 0
        kwargs["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return DiffSegmenter.from_pretrained(model, **kwargs)


def run_eval(
    args: argparse.Namespace,
    segmenter: Any = None,
    filter: Any = None,
    load_segmenter: Callable[[argparse.Namespace], Any] | None = None,
) -> dict[str, Any]:
    """Run ``diffsegmenter eval`` from parsed [`add_eval_arguments`] flags.

    Args:
        args (`argparse.Namespace`): parsed flags.
        segmenter (*optional*): an already built segmenter (then --model/--device/--dtype/--captioner are unused).
            With ``--score-only`` no segmenter is used or loaded.
        filter (*optional*): a category-filter object to use instead of the ``--filter`` name.
        load_segmenter (*optional*): ``callable(args) -> segmenter`` replacing [`load_eval_segmenter`].

    Returns:
        `dict`: what :func:`~diffsegmenter.evaluation.harness.evaluate` returns.
    """
    from ..evaluation import harness
    from ..evaluation.datasets import load_dataset

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file; give a folder for the predictions and metrics")
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
    name = kwargs.get("filter")  # a filter object given to run_eval takes no --clip / --blip
    filter_models = check_clip_filter_flags(args, name if isinstance(name, str) else None)
    if getattr(args, "score_only", None):
        scoring = ("limit", "sweep_tau", "progress", "tau", "candidates_json")  # the last two: checked, not used
        return harness.score_predictions(dataset, args.out, **{k: v for k, v in kwargs.items() if k in scoring})
    if segmenter is None:
        # every check that needs no model, before one loads (evaluate repeats them)
        harness._check_protocol(kwargs.get("protocol", "paper"), kwargs.get("candidates_json"), kwargs.get("filter"))
        harness._check_options(
            dataset, kwargs.get("tau"), kwargs.get("shard"), kwargs.get("limit"), kwargs.get("sweep_tau", False)
        )
        segmenter = (load_segmenter or load_eval_segmenter)(args)
    if filter_models:
        from ..filters.base import build_filter

        kwargs["filter"] = build_filter("clip", segmenter, **filter_models)
    return harness.evaluate(segmenter, dataset, args.out, **kwargs)


def _missing_advice(report: dict[str, Any]) -> str:
    """What to do about the predictions ``metrics.json`` lists as missing, from their reasons."""
    reasons = report.get("missing_prediction_reasons") or {}
    absent = [i for i in report.get("missing_predictions") or [] if reasons.get(i, "missing") == "missing"]
    damaged = [i for i in report.get("missing_predictions") or [] if i not in absent]
    advice = []
    if absent:
        advice.append(f"{len(absent)} were never predicted: run the missing shards (or eval without --score-only)")
    if damaged:
        first = damaged[0]
        advice.append(
            f"{len(damaged)} cannot be used (e.g. {first}: {reasons[first]}; all in metrics.md): a damaged file is "
            "predicted again by a run without --score-only; a size that differs from the ground truth means the "
            "image and its label file differ in size"
        )
    return "; ".join(advice)


def cmd_eval(args: argparse.Namespace) -> int:
    """``diffsegmenter eval``: prints the mIoU and where the report is; a failure is a one-line usage error. Exit 1
    when some images had no prediction to score (``--score-only`` before every shard ran): the number printed then
    counts them as all background and is not the benchmark's."""
    from ..evaluation.harness import PeerProcessError
    from .model import quiet_weight_loading

    quiet = quiet_weight_loading(args.model) if args.model is not None else contextlib.nullcontext()
    try:
        with quiet:
            report = run_eval(args)
    except (ValueError, OSError, PeerProcessError) as exc:  # ModelNotFoundError, bad dataset root, refused resume...
        logger.debug("evaluation failed", exc_info=exc)
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None
    if isinstance(report, dict) and report.get("metrics_computed") is False:
        if args.shard is None:  # a process of a launch other than the main one, which scores and reports
            return EXIT_OK
        print(
            f"Predictions of this shard saved in {Path(args.out) / 'predictions'}; once every shard has run, score "
            "them with the same command and --score-only (instead of --shard)"
        )
        return EXIT_OK
    if isinstance(report, dict) and report.get("mIoU") is not None:
        print(
            f"mIoU {report['mIoU']:.2f} on {report.get('num_images', '?')} image(s) of {report.get('dataset')} "
            f"{report.get('split')} ({report.get('protocol')} protocol, tau {report.get('tau')})"
        )
    print(f"Report in {Path(args.out) / 'metrics.json'}")
    problems = _incomplete_report(report, args.out)
    for problem in problems:
        print(f"diffsegmenter: {problem}", file=sys.stderr)
    return 1 if problems else EXIT_OK


def _incomplete_report(report: Any, out: str | os.PathLike) -> list[str]:
    """Why a scored report is not the benchmark's number (missing predictions, missing score maps); [] if none."""
    if not isinstance(report, dict):
        return []
    problems = []
    missing = report.get("missing_predictions")
    if missing:
        total = report.get("num_images", "?")
        problems.append(
            f"{len(missing)} of {total} image(s) have no usable prediction in {out} and were scored as all "
            f"background, so this is not the benchmark's number: {_missing_advice(report)}"
        )
    sweep = report.get("tau_sweep_optimistic")
    if sweep and sweep.get("missing_score_maps"):
        problems.append(
            f"{len(sweep['missing_score_maps'])} score map(s) are missing from {Path(out) / 'scores'}, so the tau "
            "sweep has no best value; predict them with --sweep-tau (rerun without --score-only)"
        )
    return problems


def main_eval(argv: Sequence[str] | None = None) -> int:
    """``diffsegmenter eval`` as a function: ``main_eval(["--dataset", "voc21", "--root", "data", "--out", "o"])``.

    Unlike the command, errors propagate as exceptions (for scripts and tests). Returns 1, as the command exits,
    when the report is not the benchmark's number (images without a prediction, scored as all background; or score
    maps missing for the tau sweep), after logging why; else 0.
    """
    from .parser import build_parser

    args = build_parser().parse_args(["eval", *(argv or [])])
    configure(args.offline, verbose=True)
    report = run_eval(args)
    if report.get("metrics_computed", True):
        logger.info("metrics written to %s", Path(args.out) / "metrics.json")
    problems = _incomplete_report(report, args.out)
    for problem in problems:
        logger.warning("%s", problem)
    return 1 if problems else EXIT_OK


register_command(
    Command(
        "eval",
        help="evaluate on a benchmark (resumable, shardable; see `diffsegmenter eval --help`)",
        description="Evaluate the segmenter on a benchmark (resumable, shardable).",
        add_arguments=_add_eval_flags,
        run=cmd_eval,
        model_help=EVAL_MODEL_HELP,
        verbose=True,
    )
)
