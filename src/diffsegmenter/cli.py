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
- Output names cannot collide: inputs that would share an output file are detected before any work and refused
  with a message naming both; inputs that are a previous run's outputs (listed by its sidecars) are left out, with a
  note.
- Every file is written atomically and each image's ``<stem>.json`` sidecar is written last, so an interrupted run
  resumes where it stopped: images whose outputs are complete (and were made with the same settings) are skipped.
- One bad input never stops the batch: every skipped input (unreadable, unsupported type, a folder named like an
  image, a symbolic link loop, too large for ``--max-pixels``...) is listed with its reason on the console and in
  ``<out>/skipped.json``, and the exit status is 1. A write error (a full disk...) stops the run cleanly instead:
  nothing is half-written, the summary and the list are still printed, the exit status is 3, and rerunning the same
  command resumes.
- One run at a time per output folder: an OS lock on ``<out>/.diffsegmenter.lock`` (released by the system when
  the process ends, even if killed) makes a second run stop with a message.
- Usage errors (bad flags or values, missing model, bad classes, unwritable or busy output folder) exit with status
  2 and a one-line message.
- ``--offline`` sets ``HF_HUB_OFFLINE=1`` for the run; nothing is changed at import.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_MAX_IMAGE_PIXELS, add_override_argument

__all__ = [
    "CONFIG_FLAGS",
    "LOCK_FILE",
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
    "output_lock",
    "parse_classes",
    "parse_formats",
    "run_batch",
]

logger = logging.getLogger(__name__)

PROG = "diffsegmenter"

EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3

DEFAULT_FORMATS: tuple[str, ...] = ("png", "overlay")
"""Formats written when ``--format`` is not given (a CLI choice: the library itself writes nothing)."""

DEMO_FORMATS: tuple[str, ...] = ("png", "overlay")
DEFAULT_DEMO_OUT = "diffsegmenter-demo"
SKIPPED_FILE = "skipped.json"
LOCK_FILE = ".diffsegmenter.lock"
"""Lock file in the output folder; held (``fcntl.flock``) for the whole run."""

CONFIG_FLAGS: dict[str, str] = {
    "tau": "tau",
    "seed": "seed",
    "timestep": "timestep",
    "prompt_mode": "prompt_mode",
    "template": "template",
    "batch_size": "batch_size",
    "max_pixels": "max_image_pixels",
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
    seg.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="refuse (skip, with the reason) images with more pixels than this; memory grows with them "
        f"(SegmenterConfig.max_image_pixels; default: {DEFAULT_MAX_IMAGE_PIXELS}, "
        f"i.e. {DEFAULT_MAX_IMAGE_PIXELS / 1e6:g} megapixels)",
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

    The names follow the rule the API applies (:func:`~diffsegmenter.classes.check_class_names`): whitespace inside
    a name is normalised to single spaces, duplicates are compared case-insensitively, the list cannot be empty.

    Raises:
        CliError: an empty list or name, a duplicate, or an unreadable @file.
    """
    if text is None:
        return None
    from .classes import ClassListError, check_class_names

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
    try:
        return check_class_names(names, example="--classes 'cat,sofa,plant'")
    except ClassListError as exc:
        raise CliError(f"--classes: {exc}") from None


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
        problem (`str`, *optional*): why this input cannot be used, found while listing the inputs (an unsupported
            type, a symbolic link loop...); such a job is reported as skipped without being read.
    """

    path: Path
    out_dir: Path
    stem: str
    problem: str | None = None

    @property
    def label(self) -> str:
        """Short name for reports: the path as given."""
        return str(self.path)


def _resolve(path: Path) -> Path:
    """``path.resolve()`` that survives symbolic link loops (Python < 3.13 raises RuntimeError for them)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _input_root(text: str) -> Path | None:
    """The folder that a folder or glob input's matches are made relative to (None for a file)."""
    path = Path(text)
    if path.is_file() or path.is_symlink() and not path.is_dir():
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


def _kinds(paths: Sequence[Path]) -> str:
    counts: dict[str, int] = {}
    for path in paths:
        kind = "links to folders" if path.is_symlink() else (path.suffix.lower() or "no suffix")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in sorted(counts.items()))


class _EarlierOutputs:
    """Recognises files that an earlier run wrote (listed by its sidecars), folder by folder, reading each once."""

    def __init__(self) -> None:
        self._cache: dict[Path, set[str]] = {}

    def _names(self, folder: Path) -> set[str]:
        from .outputs import earlier_outputs

        if folder not in self._cache:
            names = earlier_outputs(folder)
            if names:
                names.add(SKIPPED_FILE)  # that run's report
            self._cache[folder] = names
        return self._cache[folder]

    def __contains__(self, path: Path) -> bool:
        if path.name in self._names(path.parent):
            return True
        return f"{path.parent.name}/{path.name}" in self._names(path.parent.parent)  # <stem>.heatmaps/<class>.png


def collect_jobs(
    inputs: Sequence[str], out: str | os.PathLike, formats: Sequence[str] | None = None
) -> list[ImageJob]:
    """Expand the inputs into image jobs with output names that cannot collide.

    A folder (or glob) input keeps each image's sub-folder under ``out``, so ``a/x.png`` and ``b/x.png`` inside
    the folder go to ``out/a/x.*`` and ``out/b/x.*``. Images that would still share an output name (``x.png`` and
    ``x.jpg``, or two files given explicitly) get the full file name (``x.jpg.png``...) or a ``-2`` suffix, in
    input order; each sidecar records its source. Any other clash between two inputs' outputs (``x.png``'s overlay
    ``x.overlay.png`` is also the label map of an input ``x.overlay.png``) is refused before any work, naming both.

    Inside a folder or glob input, files inside ``out`` are never taken as inputs, files that an earlier run wrote
    (listed by its ``<stem>.json`` sidecars) are left out with a note, and files that are not images are noted.
    What looks like an input but cannot be used (an unsupported image type, a folder named like an image, a
    symbolic link loop or broken link) becomes a job with a ``problem``, reported as skipped.

    Args:
        inputs (`Sequence[str]`): files, folders and glob patterns.
        out (`str` or `os.PathLike`): the output folder.
        formats (`Sequence[str]`, *optional*): the output formats whose names must not collide; None = all of them.

    Returns:
        `list[ImageJob]`: in input order, each image once.

    Raises:
        FileNotFoundError: an input names nothing (the message names it).
        CliError: the output folder is one of the input folders or holds an input file, or two inputs' outputs
            would collide.
    """
    from .images import _nothing_found_message, scan_inputs
    from .outputs import OUTPUT_FORMATS

    out_root = Path(out)
    out_resolved = _resolve(out_root)
    jobs: list[ImageJob] = []
    seen: set[Path] = set()
    taken: set[tuple[str, str]] = {(".", Path(SKIPPED_FILE).stem)}  # <out>/skipped.json is the run's report
    earlier = _EarlierOutputs()
    for text in inputs:
        root = _input_root(text)
        exclude_out = False
        if root is not None:
            root_resolved = _resolve(root)
            if root_resolved == out_resolved:
                raise CliError(
                    f"--out {str(out)!r} is the input folder {text!r}; choose another output folder so results are "
                    "not mixed with (and later read as) inputs"
                )
            exclude_out = _is_within(out_resolved, root_resolved)
        scan = scan_inputs([text])
        if not scan.images and not scan.skipped:
            raise FileNotFoundError(_nothing_found_message(text))
        left_out: list[Path] = []
        for path in scan.images:
            resolved = _resolve(path)
            if resolved in seen or (exclude_out and _is_within(resolved, out_resolved)):
                continue
            if root is not None and path in earlier:
                left_out.append(path)
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
            if _resolve(job.out_dir) == resolved.parent:
                raise CliError(
                    f"--out {str(out)!r} is the folder of the input {str(path)!r}; choose another output folder "
                    f"(the label map {stem}.png could replace an input image)"
                )
            jobs.append(job)
        for path, reason in scan.skipped:
            resolved = _resolve(path)
            if resolved in seen or (exclude_out and _is_within(resolved, out_resolved)):
                continue
            seen.add(resolved)
            jobs.append(ImageJob(path=path, out_dir=out_root, stem=path.name, problem=reason))
        ignored = [p for p in scan.ignored if not (exclude_out and _is_within(_resolve(p), out_resolved))]
        left_out += [p for p in ignored if p in earlier]
        ignored = [p for p in ignored if p not in earlier]
        if left_out:
            folders = sorted(
                {str(p.parent.parent if p.parent.name.endswith(".heatmaps") else p.parent) for p in left_out}
            )
            logger.warning(
                "left out %d file(s) in %s that an earlier diffsegmenter run wrote (listed in its <name>.json "
                "sidecars); name a file explicitly to segment it anyway",
                len(left_out),
                ", ".join(repr(f) for f in folders[:3])
                + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else ""),
            )
        if ignored:
            logger.warning("ignored %d file(s) under %r that are not images (%s)", len(ignored), text, _kinds(ignored))
    _check_output_names(jobs, list(OUTPUT_FORMATS) if formats is None else formats, out_root)
    return jobs


def _path_key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path)).lower()  # case-insensitive file systems (macOS, Windows)


def _check_output_names(jobs: Sequence[ImageJob], formats: Sequence[str], out: Path) -> None:
    """Refuse, before any work, two inputs whose outputs would land on the same path.

    Each job claims its output files, its heat-map folder (which it prunes, so no one else may write there) and the
    folders its outputs go in (shared).

    Raises:
        CliError: naming both inputs, the path and what each would write there.
    """
    from .outputs import output_paths

    claims: dict[str, tuple[str, ImageJob, str]] = {}

    def claim(path: Path, kind: str, job: ImageJob, what: str) -> None:
        key = _path_key(path)
        previous = claims.setdefault(key, (kind, job, what))
        if previous[1] is job or (kind == "folder" and previous[0] == "folder"):
            return
        raise CliError(
            f"the inputs {previous[1].label!r} and {job.label!r} would both write {str(path)!r} (the "
            f"{previous[2]} of the first, the {what} of the second); rename one of them, or segment them into "
            "separate --out folders"
        )

    for job in jobs:
        if job.problem is not None:
            continue
        with contextlib.suppress(ValueError):
            rel = job.out_dir.relative_to(out)
            for depth in range(1, len(rel.parts) + 1):
                claim(out.joinpath(*rel.parts[:depth]), "folder", job, "output sub-folder")
        paths = output_paths(job.out_dir, job.stem, formats)
        for path, what in (
            (paths.png, "label map"),
            (paths.overlay, "overlay"),
            (paths.rle, "RLE file"),
            (paths.npz, "npz file"),
            (paths.sidecar, "sidecar"),
        ):
            if path is not None:
                claim(path, "file", job, what)
        if paths.heatmaps is not None:
            claim(paths.heatmaps, "heat-map folder", job, "heat-map folder")


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


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``<out>/.diffsegmenter.lock`` for the duration of a run.

    ``fcntl.flock`` is released by the system when the process ends, however it ends (a run killed with ``-9``
    leaves no stale lock, and its rerun resumes). The lock file itself stays (removing it could let two runs lock
    two different files); it records the holder's process id for the message. Where ``fcntl`` does not exist
    (Windows) or the file system does not support locks, the run goes on unlocked, with a note in the log.

    Raises:
        CliError: another run holds the lock (the message names its process id and the way out).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        logger.info("no file locking on this system: do not run two diffsegmenter commands on one --out")
        yield
        return
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CliError(f"cannot create the lock file {str(path)!r} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.pread(fd, 32, 0).decode().split()[0])})"
            raise CliError(
                f"another diffsegmenter run{holder} is writing to --out {str(out)!r}; wait for it to finish or "
                "choose another output folder (the lock is released as soon as that run ends, even if it is killed)"
            ) from None
        except OSError as exc:  # e.g. a network file system without locks
            logger.warning("cannot lock %s (%s); make sure no other run writes there", path, exc.strerror or exc)
        else:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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
        stopped (`str`, *optional*): why the run stopped early (a write error such as a full disk); None when it
            went through every image.
        not_started (`int`): images left untouched because the run stopped.
    """

    total: int = 0
    segmented: list[tuple[ImageJob, list[str]]] = dataclasses.field(default_factory=list)
    already_done: list[ImageJob] = dataclasses.field(default_factory=list)
    skipped: list[tuple[ImageJob, str]] = dataclasses.field(default_factory=list)
    stopped: str | None = None
    not_started: int = 0

    def summary(self) -> str:
        """One line: counts of segmented, already done, skipped (and, after a stop, not started) images."""
        text = (
            f"{self.total} image(s): {len(self.segmented)} segmented, {len(self.already_done)} already done, "
            f"{len(self.skipped)} skipped"
        )
        return text + (f", {self.not_started} not started (the run stopped)" if self.stopped else "")


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


# Write errors that concern one image's file names, not the output folder: they skip that image only.
_PER_IMAGE_WRITE_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EFBIG})


def _os_error_text(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}: {exc.filename}" if exc.filename else text


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

    Jobs with a ``problem`` are reported as skipped with it; images over the segmenter's
    ``config.max_image_pixels`` are skipped before they are decoded. A write error (an `OSError` while writing an
    image's outputs: a full disk, a read-only or vanished folder...) stops the run: that image is reported as
    skipped, the rest as not started, and ``report.stopped`` says why; nothing is left half-written, because every
    file is written atomically and the sidecar last. Only a name too long for the file system (or a file too large
    for it) costs just its image.

    Returns:
        `BatchReport`.
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .images import load_image
    from .outputs import write_result

    request = _normalise(request or {})
    report = BatchReport(total=len(jobs))
    max_pixels = getattr(getattr(segmenter, "config", None), "max_image_pixels", None)
    folders = {job.out_dir for job in jobs if job.problem is None}
    for folder in sorted(folders):
        if folder.is_dir() and not any(parent in folders for parent in folder.parents):  # walk each tree once
            remove_stale_temp_files(folder)

    def skip(job: ImageJob, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else _reason(exc)
        report.skipped.append((job, reason))
        logger.warning("skipping %s: %s", job.label, reason)
        if not isinstance(exc, str):
            logger.debug("traceback for %s", job.label, exc_info=exc)

    pending: list[ImageJob] = []
    for job in jobs:
        if job.problem is not None:
            skip(job, job.problem)
        elif not overwrite and _is_finished(job, formats, request):
            report.already_done.append(job)
        else:
            pending.append(job)
    if report.already_done:
        logger.info("%d image(s) already done; pass --overwrite to recompute them", len(report.already_done))

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

    attempted = 0
    with logging_redirect_tqdm(), tqdm(total=len(pending), unit="image", disable=not progress or None) as bar:
        for chunk in _chunks(pending, max(1, int(images_per_batch))):
            loaded: list[tuple[ImageJob, Any]] = []
            for job in chunk:
                attempted += 1
                try:
                    loaded.append((job, load_image(job.path, max_pixels=max_pixels)))
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
                except OSError as exc:
                    if exc.errno in _PER_IMAGE_WRITE_ERRORS:
                        skip(job, exc)
                        continue
                    skip(job, f"could not write its outputs: {_os_error_text(exc)}")
                    report.stopped = (
                        f"could not write the outputs of {job.label} ({_os_error_text(exc)}); fix that (free some "
                        "space, or choose another --out) and rerun the same command: finished images are kept"
                    )
                    break
                except Exception as exc:
                    skip(job, exc)
                else:
                    found = [c for i, c in enumerate(result.classes, start=1) if (result.labels == i).any()]
                    report.segmented.append((job, found))
            bar.update(len(loaded))
            if report.stopped is not None:
                done_here = {id(job) for job, _ in report.segmented} | {id(job) for job, _ in report.skipped}
                report.not_started = sum(1 for job in pending if id(job) not in done_here)
                break
    return report


def _print_problems(report: BatchReport, out: Path, report_error: str | None = None) -> None:
    if report.skipped:
        where = f"listed in {out / SKIPPED_FILE}" if report_error is None else "the list could not be saved"
        print(f"Skipped {len(report.skipped)} image(s) ({where}):", file=sys.stderr)
        for job, reason in report.skipped:
            print(f"  {job.label}: {reason}", file=sys.stderr)
    if report_error is not None:
        print(f"{PROG}: could not write {out / SKIPPED_FILE} ({report_error})", file=sys.stderr)
    if report.stopped is not None:
        print(f"{PROG}: the run stopped: {report.stopped}", file=sys.stderr)


def _write_skipped(report: BatchReport, out: Path) -> str | None:
    """Write (or, with nothing skipped, remove) ``<out>/skipped.json``.

    Returns:
        `str | None`: why the list could not be written (a full disk...), else None. A list left by an earlier run is
        removed then, so that it cannot mislead.
    """
    path = out / SKIPPED_FILE
    try:
        if report.skipped:
            _write_json_atomic(path, [{"path": job.label, "reason": reason} for job, reason in report.skipped])
        else:
            path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return _os_error_text(exc)
    return None


def _exit_status(report: BatchReport) -> int:
    if report.stopped is not None:
        return EXIT_STOPPED
    return EXIT_SKIPPED if report.skipped else EXIT_OK


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


def _check_classes(segmenter: Any, classes: Sequence[str]) -> None:
    """The class names against the loaded model, once, before any image (names the tokenizer cannot place...)."""
    try:
        segmenter.check_classes(classes)
    except ValueError as exc:
        raise CliError(f"--classes: {' '.join(str(exc).split())}") from None


def cmd_segment(args: argparse.Namespace) -> int:
    """``diffsegmenter segment``: returns the exit status (0 all done, 1 some images skipped, 3 stopped early)."""
    formats = parse_formats(args.format)
    classes = parse_classes(args.classes)
    overrides = config_overrides(args)
    _check_overrides(overrides)
    out = _prepare_out_dir(args.out)
    with output_lock(out):
        try:
            jobs = collect_jobs(args.inputs, out, formats)
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
        segmenter = _load_segmenter(args, overrides)
        if classes is None and not getattr(segmenter, "default_classes", None):
            raise CliError(
                "no classes: pass --classes 'cat,sofa,plant' (with --filter clip or diffusion to keep only the "
                "classes present in each image); this model declares no classes of its own"
            )
        _check_classes(segmenter, classes if classes is not None else segmenter.default_classes)
        filter_name = _setup_filter(segmenter, args.filter, args)
        config = segmenter.config.to_dict()
        config.pop("max_image_pixels", None)  # a limit on the inputs, not a setting of the results
        request = {
            "model": str(args.model) if args.model is not None else _default_model(),
            "classes": classes if classes is not None else list(segmenter.default_classes),
            "filter": filter_name,
            "captioner": load_kwargs(args).get("captioner"),
            "config": config,
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
        report_error = _write_skipped(report, out)
    if not args.quiet or report.stopped is not None:
        print(f"{report.summary()}. Results in {out}")
    _print_problems(report, out, report_error)
    return _exit_status(report)


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
        from .shapes import SHAPE_NAMES
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
        _check_classes(segmenter, classes)
        flt = args.filter
        if flt is None:
            from .settings import ModelSettings

            recommends = ModelSettings.coerce(getattr(segmenter, "model_settings", None)).diffusion_filter is not None
            flt = "diffusion" if recommends else "none"
        jobs = [ImageJob(path=p, out_dir=out, stem=p.stem) for p in paths]
        how = f" (classes present picked by the {flt} filter)" if flt != "none" else ""
        print(f"Segmenting {len(jobs)} example image(s) with vocabulary: {', '.join(classes)}{how}")
        with output_lock(out):
            report = run_batch(
                segmenter,
                jobs,
                formats=DEMO_FORMATS,
                classes=classes,
                filter=None if flt == "none" else flt,
                overwrite=True,
                progress=False,
            )
            report_error = _write_skipped(report, out)
    for job, found in report.segmented:
        print(f"  {job.path.name}: {', '.join(found) if found else 'nothing found'} -> {job.stem}.overlay.png")
    print(f"Overlays (<name>.overlay.png) and label maps (<name>.png) written to {out.resolve()}")
    _print_problems(report, out, report_error)
    return _exit_status(report)


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
        `int`: the exit status: 0 success, 1 some images skipped, 2 usage error (or the output folder is in use),
        3 the run stopped on a write error (rerun to resume), 130 interrupted.
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
