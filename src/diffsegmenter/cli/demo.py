"""``diffsegmenter demo``: the shipped (or given) model on the example images shipped with the package (offline)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .parser import CliError, Command, config_overrides, parse_classes, register_command
from .segment import add_filter_argument

__all__ = ["DEFAULT_DEMO_OUT", "DEMO_FORMATS", "add_demo_arguments", "cmd_demo", "example_images"]

DEMO_FORMATS: tuple[str, ...] = ("png", "overlay")
DEFAULT_DEMO_OUT = "diffsegmenter-demo"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """``demo``'s own flags (the shared model and run flags are added by the parser)."""
    parser.add_argument("--out", default=None, help=f"output folder (default: ./{DEFAULT_DEMO_OUT})")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names (default: the model's own classes, else the shapes-world shapes)",
    )
    add_filter_argument(
        parser,
        default="'diffusion' when the model folder recommends its settings, as the shipped shapes model does; else none",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute the images already done (a rerun otherwise keeps them, and refuses to replace results made "
        "with other settings, as segment does)",
    )


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
        from ..shapes import SHAPE_NAMES
    except ImportError:
        raise CliError("this model declares no classes; pass --classes 'circle,square,...'") from None
    return list(SHAPE_NAMES)


def _guess_note(task: Any, job: Any) -> str:
    """`` (the filter's best guess: ...)`` when the image's filter kept a class below its threshold, else ``""``."""
    from ..io.sidecar import load_sidecar

    try:
        guessed = load_sidecar(task.sidecar_path(job)).get("filter_best_guess")
    except (OSError, ValueError):
        return ""
    return " (the filter's best guess: no class reached its threshold)" if guessed is True else ""


def cmd_demo(args: argparse.Namespace) -> int:
    """``diffsegmenter demo``: the shipped (or given) model on the shipped example images.

    Resumes as ``segment`` does: a rerun keeps the images already done with the same settings, and refuses (exit 2)
    to replace results made with other settings unless ``--overwrite``."""
    from ..batch import ImageTask, finish_report, output_lock, prepare_out_dir, run_batch
    from ..io.paths import ImageJob, image_key
    from .model import check_classes, check_clip_filter_flags, check_overrides, load_segmenter, setup_filter
    from .segment import run_request

    classes = parse_classes(args.classes)
    if args.filter is not None:  # else the model's recommendation, known once it loads (setup_filter checks then)
        check_clip_filter_flags(args, args.filter)
    overrides = config_overrides(args)
    check_overrides(overrides)
    with example_images() as paths:
        if not paths:
            raise CliError(
                "no example images in this installation (diffsegmenter/examples/*.png); reinstall diffsegmenter "
                "from a full source checkout, or run `diffsegmenter segment` on your own images"
            )
        out_text = args.out if args.out is not None else DEFAULT_DEMO_OUT
        if Path(out_text).expanduser().resolve() == paths[0].parent.resolve():
            raise CliError(
                f"--out {str(out_text)!r} is the folder of the example images; choose another output folder so the "
                "label maps do not replace them (and are not read as examples by the next demo or the web app)"
            )
        out = prepare_out_dir(out_text)  # a file or an unwritable folder is refused before the model loads
        segmenter = load_segmenter(args, overrides)
        classes = classes or _demo_classes(segmenter)
        check_classes(segmenter, classes)
        flt = args.filter
        if flt is None:
            from ..settings import ModelSettings

            recommends = ModelSettings.coerce(getattr(segmenter, "model_settings", None)).diffusion_filter is not None
            flt = "diffusion" if recommends else "none"
        filter_models = check_clip_filter_flags(args, flt)
        loaded_filter = setup_filter(segmenter, flt, args)  # a CLIP filter that cannot load fails once, here
        filter_name = None if flt == "none" else flt
        request = run_request(args, segmenter, classes, filter_name, filter_models)
        jobs = [ImageJob(path=p, out_dir=out, stem=image_key(p)) for p in paths]
        how = f" (classes present picked by the {flt} filter)" if flt != "none" else ""
        print(f"Segmenting {len(jobs)} example image(s) with vocabulary: {', '.join(classes)}{how}")
        task = ImageTask(segmenter, DEMO_FORMATS, classes=classes, request=request)
        with output_lock(out):
            if not args.overwrite:  # the demo replaced whatever a folder held under its names, unasked
                try:
                    task.check_earlier(jobs)
                except ValueError as exc:
                    raise CliError(str(exc)) from None
            report = run_batch(
                segmenter,
                jobs,
                formats=DEMO_FORMATS,
                classes=classes,
                filter=loaded_filter,
                request=request,
                overwrite=args.overwrite,
                out=out,
                check_earlier=False,  # checked above
            )
            lines = [
                f"  {job.path.name}: {', '.join(found) if found else 'nothing found'}{_guess_note(task, job)} -> "
                f"{job.stem}.overlay.png"
                for job, found in report.segmented
            ]
            lines += [f"  {job.path.name}: already done -> {job.stem}.overlay.png" for job in report.already_done]
            lines.append(f"Overlays (<name>.overlay.png) and label maps (<name>.png) written to {out.resolve()}")
            return finish_report(report, out, "\n".join(lines))


register_command(
    Command(
        "demo",
        help="run the shipped model on the shipped example images (offline)",
        description="Segment the example images shipped with the package and write overlays and label maps.",
        add_arguments=add_demo_arguments,
        run=cmd_demo,
        model_help="the library's, 'shapes'",
    )
)
