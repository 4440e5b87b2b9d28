"""The ``diffsegmenter`` command: ``segment`` your own images, run the offline ``demo``, or ``eval`` a benchmark.

Examples:

```bash
diffsegmenter demo                                   # shipped model on shipped images -> ./diffsegmenter-demo
diffsegmenter segment photos/ --classes "cat,sofa,plant" --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
    --out masks/ --format png,overlay,rle
diffsegmenter eval --dataset shapes --root data/shapes --out runs/shapes
```

Rules the command follows:

- The library holds every default once. Every flag that maps to a library setting defaults to ``None`` ("not
  given"), and only the flags a user set are forwarded (as segment-anything's ``amg.py`` does): the model folder's
  ``segmenter_config.json`` and then :class:`~diffsegmenter.config.SegmenterConfig` decide the rest.
- One result per image, named after it; a folder input keeps its sub-folder structure under ``--out``.
- Every file is written atomically and each image's ``<stem>.json`` sidecar is written last, so an interrupted run
  resumes where it stopped: images whose outputs are complete (and were made with the same settings) are skipped.
- One bad image never stops the batch: it is reported at the end (and in ``<out>/skipped.json``) and the exit
  status is 1. Usage errors (bad flags, missing model, no classes, unwritable output folder) exit with status 2 and a
  one-line message.
- ``--offline`` sets ``HF_HUB_OFFLINE=1`` for the run; nothing is changed at import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import add_override_argument

__all__ = [
    "CONFIG_FLAGS",
    "DEFAULT_DEMO_OUT",
    "DEFAULT_FORMATS",
    "BatchReport",
    "CliError",
    "ImageJob",
    "build_parser",
    "collect_jobs",
    "config_overrides",
    "load_kwargs",
    "main",
    "parse_classes",
    "parse_formats",
    "run_batch",
]

logger = logging.getLogger(__name__)

PROG = "diffsegmenter"

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_USAGE = 2

DEFAULT_FORMATS: tuple[str, ...] = ("png", "overlay")
"""Formats written when ``--format`` is not given (a CLI choice: the library itself writes nothing)."""

DEMO_FORMATS: tuple[str, ...] = ("png", "overlay")
DEFAULT_DEMO_OUT = "diffsegmenter-demo"
SKIPPED_FILE = "skipped.json"

CONFIG_FLAGS: dict[str, str] = {
    "tau": "tau",
    "seed": "seed",
    "timestep": "timestep",
    "prompt_mode": "prompt_mode",
    "template": "template",
    "batch_size": "batch_size",
}
"""argparse destination -> :class:`~diffsegmenter.config.SegmenterConfig` field, for the dedicated flags."""

DTYPES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Temporary files of outputs._atomic_open: ".<target name>.<pid>.<8 hex>.tmp".
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")
_GLOB_CHARS = frozenset("*?[")


class CliError(Exception):
    """A usage error: printed as one line (no traceback), exit status 2."""


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_filter_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--filter",
        choices=("none", "clip", "diffusion"),
        default=None,
        help="category filter keeping only the classes present in each image: clip (the paper's BLIP+CLIP), "
        f"diffusion (diffusion model only) (default: {default})",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="'shapes' (the shipped model), a Hugging Face Hub id, or a local folder in the diffusers layout "
        "(default: the library's, 'shapes')",
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, mps or auto (= cuda if available) (default: cpu)"
    )
    group.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="model precision (default: fp32)")
    group.add_argument(
        "--offline", action="store_true", help="never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``diffsegmenter`` argument parser (``segment``, ``demo`` and a stub of ``eval`` for ``--help``).

    Returns:
        `argparse.ArgumentParser`: every flag that maps to a library setting defaults to `None`.
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free open-vocabulary semantic segmentation with a frozen diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{segment,demo,eval}", required=True)

    seg = sub.add_parser(
        "segment",
        help="segment image files, folders or glob patterns",
        description="Segment images into the given classes and write one result per image under --out. "
        "Rerunning the same command skips the images already done.",
    )
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    seg.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names, e.g. 'cat,sofa,plant', or @FILE with one name per line "
        "(default: the model's own classes, if it declares any). With --filter, the vocabulary to choose from",
    )
    seg.add_argument("--out", required=True, help="output folder (created if needed)")
    seg.add_argument(
        "--format",
        default=None,
        help="comma-separated output formats: png (palette label map), overlay, heatmaps, rle (COCO RLE JSON), "
        f"npz (score maps) (default: {','.join(DEFAULT_FORMATS)}); a <name>.json sidecar is always written",
    )
    _add_filter_argument(seg, default="none")
    seg.add_argument(
        "--captioner",
        default=None,
        help="BLIP Hub id or folder continuing each prompt with a caption, e.g. "
        "Salesforce/blip-image-captioning-large, or 'none' (default: none)",
    )
    seg.add_argument(
        "--images-per-batch",
        type=_positive_int,
        default=1,
        help="images segmented per model call; raise it on a GPU (default: 1, right for CPU)",
    )
    seg.add_argument("--overwrite", action="store_true", help="recompute images that are already done")
    seg.add_argument("--quiet", action="store_true", help="no progress bar and no summary; problems are still shown")
    seg.add_argument("-v", "--verbose", action="store_true", help="log progress details (and tracebacks)")
    _add_model_arguments(seg)
    method = seg.add_argument_group("method settings (default: the model's segmenter_config.json, else the paper's)")
    method.add_argument("--tau", type=float, default=None, help="background score (SegmenterConfig.tau)")
    method.add_argument("--seed", type=int, default=None, help="noise seed (SegmenterConfig.seed)")
    method.add_argument("--timestep", type=int, default=None, help="diffusion timestep (SegmenterConfig.timestep)")
    method.add_argument(
        "--prompt-mode",
        choices=("per_class", "single"),
        default=None,
        help="one prompt per class, or all classes in one prompt (SegmenterConfig.prompt_mode)",
    )
    method.add_argument(
        "--template", default=None, help="prompt template with '{}' for the class (SegmenterConfig.template)"
    )
    method.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="UNet samples per forward pass (SegmenterConfig.batch_size; default: as many as fit in memory)",
    )
    add_override_argument(
        method,
        "config_set",
        "set any other SegmenterConfig field, repeatable, e.g. --set token_rule=last --set emphasis=1.0",
    )

    demo = sub.add_parser(
        "demo",
        help="run the shipped model on the shipped example images (offline)",
        description="Segment the example images shipped with the package and write overlays and label maps.",
    )
    demo.add_argument("--out", default=None, help=f"output folder (default: ./{DEFAULT_DEMO_OUT})")
    demo.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names (default: the model's own classes, else the shapes-world shapes)",
    )
    _add_filter_argument(
        demo,
        default="'diffusion' when the model folder recommends its settings, as the shipped shapes model does; else none",
    )
    _add_model_arguments(demo)
    demo.add_argument("-v", "--verbose", action="store_true", help="log progress details")

    sub.add_parser(
        "eval",
        help="evaluate on a benchmark (see `diffsegmenter eval --help`)",
        description="Evaluate on a benchmark; run `diffsegmenter eval --help` for its flags.",
        add_help=False,
    )
    return parser


def parse_formats(text: str | None) -> list[str]:
    """``"png,overlay"`` -> ``["png", "overlay"]``; None -> the default formats.

    Raises:
        CliError: an unknown or empty format list.
    """
    from .outputs import OUTPUT_FORMATS

    if text is None:
        return list(DEFAULT_FORMATS)
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not formats:
        raise CliError(f"--format is empty; choose from {','.join(OUTPUT_FORMATS)}")
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise CliError(f"unknown output format(s) {', '.join(unknown)}; choose from {','.join(OUTPUT_FORMATS)}")
    return [f for f in OUTPUT_FORMATS if f in formats]


def parse_classes(text: str | None) -> list[str] | None:
    """``"cat, sofa,potted plant"`` -> ``["cat", "sofa", "potted plant"]``; ``"@file.txt"`` reads one name per line.

    Whitespace inside a name is normalised to single spaces; duplicates are compared case-insensitively.

    Raises:
        CliError: an empty name, a duplicate, or an unreadable @file.
    """
    if text is None:
        return None
    if text.startswith("@"):
        try:
            raw = Path(text[1:]).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read the class file {text[1:]!r}: {exc.strerror or exc}") from None
        names = [line for line in raw.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if len(names) == 1 and "," in names[0]:
            names = names[0].split(",")
    else:
        names = text.split(",")
    classes: list[str] = []
    seen: dict[str, str] = {}
    for position, name in enumerate(names, start=1):
        clean = " ".join(name.split())
        if not clean:
            raise CliError(f"class name {position} in {text!r} is empty; give names like --classes 'cat,sofa,plant'")
        key = clean.lower()
        if key in seen:
            raise CliError(
                f"duplicate class name {clean!r} in --classes (also given as {seen[key]!r}); give each once"
            )
        seen[key] = clean
        classes.append(clean)
    if not classes:
        raise CliError("--classes is empty; give names like --classes 'cat,sofa,plant'")
    return classes


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SegmenterConfig fields the user set on the command line (and only those).

    ``--set FIELD=VALUE`` entries come first, so a dedicated flag (``--tau``...) wins over ``--set tau=...``.

    Args:
        args (`argparse.Namespace`): parsed ``segment`` flags.

    Returns:
        `dict[str, Any]`: field -> value; empty when no such flag was given.
    """
    overrides: dict[str, Any] = dict(getattr(args, "config_set", None) or [])
    for dest, field in CONFIG_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[field] = value
    return overrides


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``DiffSegmenter.from_pretrained`` besides the model and config overrides.

    Only the flags a user set appear (``device``, ``dtype``, ``captioner``); ``--captioner none`` is the same as
    not giving it.
    """
    kwargs: dict[str, Any] = {}
    if getattr(args, "device", None) is not None:
        kwargs["device"] = _resolve_device(args.device)
    if getattr(args, "dtype", None) is not None:
        import torch

        kwargs["dtype"] = getattr(torch, DTYPES[args.dtype])
    captioner = getattr(args, "captioner", None)
    if captioner is not None and captioner.strip().lower() != "none":
        kwargs["captioner"] = captioner
    return kwargs


# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One input image and where its outputs go.

    Attributes:
        path (`Path`): the image file.
        out_dir (`Path`): the folder its outputs go to (``--out`` plus the image's sub-folder inside a folder input).
        stem (`str`): the outputs' file name stem (the image's name without suffix, made unique).
    """

    path: Path
    out_dir: Path
    stem: str

    @property
    def label(self) -> str:
        """Short name for reports: the path as given."""
        return str(self.path)


def _input_root(text: str) -> Path | None:
    """The folder that a folder or glob input's matches are made relative to (None for a file)."""
    path = Path(text)
    if path.is_file():
        return None
    if path.is_dir():
        return path
    prefix: list[str] = []
    for part in path.parts:
        if _GLOB_CHARS.intersection(part):
            break
        prefix.append(part)
    return Path(*prefix) if prefix else Path()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collect_jobs(inputs: Sequence[str], out: str | os.PathLike) -> list[ImageJob]:
    """Expand the inputs into image jobs with unique output names.

    A folder (or glob) input keeps each image's sub-folder under ``out``, so ``a/x.png`` and ``b/x.png`` inside
    the folder go to ``out/a/x.*`` and ``out/b/x.*``. Images that would still share an output name (``x.png`` and
    ``x.jpg``, or two files given explicitly) get the full file name (``x.jpg.png``...) or a ``-2`` suffix, in
    input order; each sidecar records its source. Files inside ``out`` are never taken as inputs of a folder.

    Args:
        inputs (`Sequence[str]`): files, folders and glob patterns.
        out (`str` or `os.PathLike`): the output folder.

    Returns:
        `list[ImageJob]`: in input order, each image once.

    Raises:
        FileNotFoundError: an input names nothing (the message names it).
        CliError: the output folder is one of the input folders, or holds an input file.
    """
    from .images import iter_image_paths

    out_root = Path(out)
    out_resolved = out_root.resolve()
    jobs: list[ImageJob] = []
    seen: set[Path] = set()
    taken: set[tuple[str, str]] = set()
    for text in inputs:
        root = _input_root(text)
        exclude_out = False
        if root is not None:
            root_resolved = root.resolve()
            if root_resolved == out_resolved:
                raise CliError(
                    f"--out {str(out)!r} is the input folder {text!r}; choose another output folder so results are "
                    "not mixed with (and later read as) inputs"
                )
            exclude_out = _is_within(out_resolved, root_resolved)
        for path in iter_image_paths([text]):
            resolved = path.resolve()
            if resolved in seen or (exclude_out and _is_within(resolved, out_resolved)):
                continue
            seen.add(resolved)
            rel = Path()
            if root is not None:
                with contextlib.suppress(ValueError):
                    rel = path.parent.relative_to(root)
            key_dir = rel.as_posix().lower()
            stem = path.stem
            if (key_dir, stem.lower()) in taken:
                stem = path.name
                counter = 1
                while (key_dir, stem.lower()) in taken:
                    counter += 1
                    stem = f"{path.stem}-{counter}"
                logger.warning("two inputs map to the same output name; writing %s as %r", path, stem)
            taken.add((key_dir, stem.lower()))
            job = ImageJob(path=path, out_dir=out_root / rel, stem=stem)
            if job.out_dir.resolve() == resolved.parent:
                raise CliError(
                    f"--out {str(out)!r} is the folder of the input {str(path)!r}; choose another output folder "
                    f"(the label map {stem}.png could replace an input image)"
                )
            jobs.append(job)
    return jobs


def _prepare_out_dir(text: str) -> Path:
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"output folder {text!r} exists and is not a folder")
    probe = out / f".diffsegmenter-write-test.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"output folder {text!r} is not writable ({exc.strerror or exc})") from None
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(out: Path) -> int:
    """Remove temporary files that an interrupted run (a dead process) left in ``out``.

    Only names of the atomic writers' form (``.<name>.<pid>.<hex>.tmp``) whose process is gone are removed, so a
    second run writing into the same folder at the same time is not disturbed.

    Returns:
        `int`: how many files were removed.
    """
    removed = 0
    for folder, _dirs, files in os.walk(out):
        for name in files:
            match = _TEMP_RE.match(name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


def _write_json_atomic(path: Path, payload: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        temp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


# ----------------------------------------------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchReport:
    """What a batch did.

    Attributes:
        total (`int`): images in the batch.
        segmented (`list[tuple[ImageJob, list[str]]]`): images processed in this run, with the classes found.
        already_done (`list[ImageJob]`): images skipped because their outputs were complete.
        skipped (`list[tuple[ImageJob, str]]`): images that could not be processed, with the reason.
    """

    total: int = 0
    segmented: list[tuple[ImageJob, list[str]]] = dataclasses.field(default_factory=list)
    already_done: list[ImageJob] = dataclasses.field(default_factory=list)
    skipped: list[tuple[ImageJob, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of segmented, already done and skipped images."""
        return (
            f"{self.total} image(s): {len(self.segmented)} segmented, {len(self.already_done)} already done, "
            f"{len(self.skipped)} skipped"
        )


def _normalise(payload: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, int dict keys -> str)."""
    return json.loads(json.dumps(payload, default=str))


def _is_finished(job: ImageJob, formats: Sequence[str], request: dict[str, Any]) -> bool:
    from .outputs import is_done, load_sidecar, output_paths

    if not is_done(job.out_dir, job.stem, formats):
        return False
    try:
        sidecar = load_sidecar(output_paths(job.out_dir, job.stem, formats).sidecar)
    except (OSError, ValueError):
        return False
    if Path(str(sidecar.get("source", ""))).name != job.path.name:
        logger.info("%s: the outputs under that name belong to another image; recomputing", job.label)
        return False
    if sidecar.get("request") != request:
        logger.info("%s: done earlier with other settings; recomputing", job.label)
        return False
    return True


def _reason(exc: BaseException) -> str:
    from .images import ImageLoadError

    if isinstance(exc, ImageLoadError):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "file not found (removed during the run?)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_batch(
    segmenter: Any,
    jobs: Sequence[ImageJob],
    *,
    formats: Sequence[str],
    classes: Sequence[str] | None = None,
    filter: Any = None,
    request: dict[str, Any] | None = None,
    overwrite: bool = False,
    images_per_batch: int = 1,
    progress: bool = True,
) -> BatchReport:
    """Segment every job and write its outputs; never stop for one bad image.

    Args:
        segmenter: a :class:`~diffsegmenter.DiffSegmenter` (anything with its ``segment`` contract).
        jobs (`Sequence[ImageJob]`): from :func:`collect_jobs`.
        formats (`Sequence[str]`): output formats (see :data:`~diffsegmenter.outputs.OUTPUT_FORMATS`).
        classes (`Sequence[str]`, *optional*): class names (the vocabulary with a filter); None = the model's own.
        filter (*optional*): passed to ``segment(filter=...)``.
        request (`dict`, *optional*): JSON-able description of the settings (model, classes, config...), stored in
            each sidecar; an image done with other settings is recomputed.
        overwrite (`bool`, *optional*, defaults to False): recompute images that are already done.
        images_per_batch (`int`, *optional*, defaults to 1): images per ``segment`` call. A failing batch is retried
            image by image, so one bad image only costs itself.
        progress (`bool`, *optional*, defaults to True): show a tqdm progress bar (on a terminal).

    Returns:
        `BatchReport`.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .images import load_image
    from .outputs import write_result

    request = _normalise(request or {})
    report = BatchReport(total=len(jobs))
    folders = {job.out_dir for job in jobs}
    for folder in sorted(folders):
        if folder.is_dir() and not any(parent in folders for parent in folder.parents):  # walk each tree once
            remove_stale_temp_files(folder)
    pending: list[ImageJob] = []
    for job in jobs:
        if not overwrite and _is_finished(job, formats, request):
            report.already_done.append(job)
        else:
            pending.append(job)
    if report.already_done:
        logger.info("%d image(s) already done; pass --overwrite to recompute them", len(report.already_done))

    def skip(job: ImageJob, exc: BaseException) -> None:
        reason = _reason(exc)
        report.skipped.append((job, reason))
        logger.warning("skipping %s: %s", job.label, reason)
        logger.debug("traceback for %s", job.label, exc_info=exc)

    def segment(items: list[tuple[ImageJob, Any]]) -> list[tuple[ImageJob, Any, Any]]:
        try:
            results = segmenter.segment([img for _, img in items], classes=classes, filter=filter)
            return [(job, img, res) for (job, img), res in zip(items, results)]
        except Exception as exc:
            if len(items) == 1:
                skip(items[0][0], exc)
                return []
            logger.info("a batch of %d images failed (%s); retrying them one by one", len(items), exc)
            return [out for item in items for out in segment([item])]

    with logging_redirect_tqdm(), tqdm(total=len(pending), unit="image", disable=not progress or None) as bar:
        for chunk in _chunks(pending, max(1, int(images_per_batch))):
            loaded: list[tuple[ImageJob, Any]] = []
            for job in chunk:
                try:
                    loaded.append((job, load_image(job.path)))
                except (ValueError, OSError) as exc:  # ImageLoadError is a ValueError
                    skip(job, exc)
                    bar.update(1)
            for job, image, result in segment(loaded) if loaded else []:
                try:
                    write_result(
                        job.out_dir,
                        job.stem,
                        image,
                        result,
                        formats,
                        extra={"source": str(job.path), "request": request},
                    )
                except Exception as exc:
                    skip(job, exc)
                else:
                    found = [c for i, c in enumerate(result.classes, start=1) if (result.labels == i).any()]
                    report.segmented.append((job, found))
            bar.update(len(loaded))
    return report


def _print_problems(report: BatchReport, out: Path) -> None:
    if not report.skipped:
        return
    print(f"Skipped {len(report.skipped)} image(s) (listed in {out / SKIPPED_FILE}):", file=sys.stderr)
    for job, reason in report.skipped:
        print(f"  {job.label}: {reason}", file=sys.stderr)


def _write_skipped(report: BatchReport, out: Path) -> None:
    path = out / SKIPPED_FILE
    if report.skipped:
        _write_json_atomic(path, [{"path": job.label, "reason": reason} for job, reason in report.skipped])
    else:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def _default_model() -> str:
    import inspect

    from .segmenter import DiffSegmenter

    return str(inspect.signature(DiffSegmenter.from_pretrained).parameters["model"].default)


@contextlib.contextmanager
def _quiet_weight_loading(model: str | None) -> Iterator[None]:
    """Hide transformers' "Loading weights" bars while loading a local model (nothing to download), then restore.

    Hub models keep their bars: transformers' switch also hides huggingface_hub's download bars.
    """
    from .hub import looks_like_local_path
    from .loading import SHIPPED_MODELS

    if model is not None and model not in SHIPPED_MODELS and not looks_like_local_path(model):
        yield
        return
    try:
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - both are dependencies
        yield
        return
    bars_on, hub_bars_on = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
            if not hub_bars_on:
                hub_utils.disable_progress_bars()


def _load_segmenter(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """``DiffSegmenter.from_pretrained`` with only the flags the user set.

    Raises:
        CliError: a missing model or a bad setting (one-line message).
    """
    from .segmenter import DiffSegmenter

    model_args = () if args.model is None else (args.model,)
    try:
        with _quiet_weight_loading(args.model):
            return DiffSegmenter.from_pretrained(*model_args, **load_kwargs(args), **overrides)
    except (ValueError, OSError) as exc:  # ModelNotFoundError is a ValueError
        logger.debug("model loading failed", exc_info=exc)
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None


def _setup_filter(segmenter: Any, name: str | None, args: argparse.Namespace) -> str | None:
    if name is None or name == "none":
        return None
    if name == "diffusion":
        try:
            import diffsegmenter.filters.diffusion  # noqa: F401
        except ImportError:
            raise CliError("the diffusion filter is not available in this installation; use --filter clip") from None
        return "diffusion"
    from .filters.clip import ClipBlipFilter

    kwargs = {k: v for k, v in load_kwargs(args).items() if k in ("device", "dtype")}
    try:
        segmenter.filters["clip"] = ClipBlipFilter.from_pretrained(captioner=segmenter.captioner, **kwargs)
    except (ValueError, OSError) as exc:
        raise CliError(" ".join(str(exc).split())) from None
    return "clip"


def _check_overrides(overrides: dict[str, Any]) -> None:
    from .config import SegmenterConfig

    try:
        SegmenterConfig().replace(**overrides)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_segment(args: argparse.Namespace) -> int:
    """``diffsegmenter segment``: returns the exit status (0 all done, 1 some images skipped)."""
    formats = parse_formats(args.format)
    classes = parse_classes(args.classes)
    overrides = config_overrides(args)
    _check_overrides(overrides)
    out = _prepare_out_dir(args.out)
    try:
        jobs = collect_jobs(args.inputs, out)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    segmenter = _load_segmenter(args, overrides)
    if classes is None and not getattr(segmenter, "default_classes", None):
        raise CliError(
            "no classes: pass --classes 'cat,sofa,plant' (with --filter clip or diffusion to keep only the "
            "classes present in each image); this model declares no classes of its own"
        )
    filter_name = _setup_filter(segmenter, args.filter, args)
    request = {
        "model": str(args.model) if args.model is not None else _default_model(),
        "classes": classes if classes is not None else list(segmenter.default_classes),
        "filter": filter_name,
        "captioner": load_kwargs(args).get("captioner"),
        "config": segmenter.config.to_dict(),
    }
    report = run_batch(
        segmenter,
        jobs,
        formats=formats,
        classes=classes,
        filter=filter_name,
        request=request,
        overwrite=args.overwrite,
        images_per_batch=args.images_per_batch,
        progress=not args.quiet,
    )
    _write_skipped(report, out)
    if not args.quiet:
        print(f"{report.summary()}. Results in {out}")
    _print_problems(report, out)
    return EXIT_SKIPPED if report.skipped else EXIT_OK


@contextlib.contextmanager
def example_images() -> Iterator[list[Path]]:
    """The example images shipped with the package (``diffsegmenter/examples/*.png``), as file paths.

    Yields:
        `list[Path]`: sorted; empty when the installation has none.
    """
    from importlib import resources

    folder = resources.files("diffsegmenter").joinpath("examples")
    with resources.as_file(folder) as path:
        yield sorted(p for p in Path(path).glob("*.png") if not p.name.startswith(".")) if path.is_dir() else []


def _demo_classes(segmenter: Any) -> list[str]:
    if getattr(segmenter, "default_classes", None):
        return list(segmenter.default_classes)
    try:
        from .shapes.world import SHAPE_NAMES
    except ImportError:
        raise CliError("this model declares no classes; pass --classes 'circle,square,...'") from None
    return list(SHAPE_NAMES)


def cmd_demo(args: argparse.Namespace) -> int:
    """``diffsegmenter demo``: the shipped (or given) model on the shipped example images."""
    classes = parse_classes(args.classes)
    with example_images() as paths:
        if not paths:
            raise CliError(
                "no example images in this installation (diffsegmenter/examples/*.png); reinstall diffsegmenter "
                "from a full source checkout, or run `diffsegmenter segment` on your own images"
            )
        segmenter = _load_segmenter(args, {})
        out = _prepare_out_dir(args.out if args.out is not None else DEFAULT_DEMO_OUT)
        classes = classes or _demo_classes(segmenter)
        flt = args.filter
        if flt is None:
            from .settings import ModelSettings

            recommends = ModelSettings.coerce(getattr(segmenter, "model_settings", None)).diffusion_filter is not None
            flt = "diffusion" if recommends else "none"
        jobs = [ImageJob(path=p, out_dir=out, stem=p.stem) for p in paths]
        how = f" (classes present picked by the {flt} filter)" if flt != "none" else ""
        print(f"Segmenting {len(jobs)} example image(s) with vocabulary: {', '.join(classes)}{how}")
        report = run_batch(
            segmenter,
            jobs,
            formats=DEMO_FORMATS,
            classes=classes,
            filter=None if flt == "none" else flt,
            overwrite=True,
            progress=False,
        )
    _write_skipped(report, out)
    for job, found in report.segmented:
        print(f"  {job.path.name}: {', '.join(found) if found else 'nothing found'} -> {job.stem}.overlay.png")
    print(f"Overlays (<name>.overlay.png) and label maps (<name>.png) written to {out.resolve()}")
    _print_problems(report, out)
    return EXIT_SKIPPED if report.skipped else EXIT_OK


def _eval_main(argv: Sequence[str]) -> int:
    try:
        from .evaluation.harness import add_eval_arguments, run_eval
    except ImportError as exc:
        raise CliError(f"the evaluation harness is not available in this installation ({exc})") from None
    parser = argparse.ArgumentParser(
        prog=f"{PROG} eval", description="Evaluate the segmenter on a benchmark (resumable, shardable)."
    )
    parser.add_argument(
        "--offline", action="store_true", help="never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1)"
    )
    add_eval_arguments(parser)
    args = parser.parse_args(list(argv))
    _configure(getattr(args, "offline", False), verbose=True)
    quiet = _quiet_weight_loading(args.model) if args.model is not None else contextlib.nullcontext()
    try:
        with quiet:
            report = run_eval(args)
    except (ValueError, OSError) as exc:  # ModelNotFoundError, bad dataset root, refused resume...
        logger.debug("evaluation failed", exc_info=exc)
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None
    if isinstance(report, dict) and report.get("mIoU") is not None:
        print(f"mIoU {report['mIoU']:.2f} on {report.get('num_images', '?')} image(s)")
    print(f"Report in {Path(args.out) / 'metrics.json'}")
    return EXIT_OK


def _configure(offline: bool, verbose: bool = False) -> None:
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    if verbose:
        logging.getLogger("diffsegmenter").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffsegmenter`` console script and ``python -m diffsegmenter``.

    Args:
        argv (`Sequence[str]`, *optional*): arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        `int`: the exit status: 0 success, 1 some images skipped, 2 usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "eval":
            return _eval_main(argv[1:])
        args = build_parser().parse_args(argv)
        _configure(args.offline, verbose=args.verbose)
        if args.command == "segment":
            return cmd_segment(args)
        return cmd_demo(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
