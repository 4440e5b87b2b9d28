"""``diffsegmenter edit``: segment a class, then regenerate only its region with the same diffusion model."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..editing import EditSettings

from ..classes import class_key
from .parser import (
    CliError,
    Command,
    add_max_pixels_argument,
    config_overrides,
    given_inputs,
    parse_classes,
    register_command,
)

__all__ = ["EditReport", "add_edit_arguments", "cmd_edit", "edit_command"]

logger = logging.getLogger(__name__)

#: ``--flag`` -> :class:`~diffsegmenter.editing.EditSettings` field; a flag the user did not set keeps the library's
#: default.
EDIT_FLAGS = ("dilate", "feather", "steps", "guidance", "strength", "resolution", "candidates")


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """``edit``'s own flags (the shared model and run flags are added by the parser)."""
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--target", required=True, help="the class to replace, e.g. cat")
    parser.add_argument("--prompt", required=True, help="what to put in its place, e.g. 'a tiger'")
    parser.add_argument(
        "--out", required=True, help="output PNG (one input) or folder (<name>.png per input; created if needed)"
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated classes the target is segmented against (default: the model's own classes when they "
        "include the target, else the target alone)",
    )
    parser.add_argument("--tau", type=float, default=None, help="background score of the target's mask")
    parser.add_argument("--dilate", type=int, default=None, help="pixels the mask grows by (default: the library's)")
    parser.add_argument("--feather", type=int, default=None, help="pixels of the soft edge inside the mask")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of the full schedule")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (1 = none)")
    parser.add_argument("--strength", type=float, default=None, help="in (0, 1]: 1 regenerates the region from noise")
    parser.add_argument("--resolution", type=int, default=None, help="side length the edit runs at")
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="edits tried per image (seeds seed, seed+1, ...); each is segmented again and the one most labelled "
        "--new-class is kept (default: 1)",
    )
    parser.add_argument(
        "--new-class", default=None, help="the class the prompt makes, e.g. tiger (needed with --candidates > 1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the model's config seed)")
    parser.add_argument("--save-mask", action="store_true", help="also write <name>.mask.png (the paste-back weight)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="into a folder: redo images already edited (a rerun otherwise keeps them, and refuses to replace edits "
        "made with other settings)",
    )
    add_max_pixels_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclasses.dataclass
class EditReport:
    """What :func:`edit_command` did.

    Attributes:
        written (`list[Path]`): the edited images written by this run, in input order.
        unchanged (`list[Path]`): those of ``written`` where no pixel was labelled the target, written as the input
            was (a lower ``tau`` or a better target name may find it).
        already_done (`list[Path]`): edits an earlier run of the same settings finished (kept, not redone).
        skipped (`list[tuple[Path, str]]`): inputs that could not be used (unreadable, an unsupported image type, a
            broken link...) with the reason; the others were still edited.
        stopped (`str`, *optional*): why the run stopped early (a write error such as a full disk; rerun to resume);
            None when it went through every input.
        exit_status (`int`): 0 all edited, 1 some skipped, 3 stopped (the command's exit status).
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    unchanged: list[Path] = dataclasses.field(default_factory=list)
    already_done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    stopped: str | None = None
    exit_status: int = 0


def edit_command(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    target: str,
    prompt: str,
    model: str | os.PathLike = "shapes",
    classes: Sequence[str] | None = None,
    new_class: str | None = None,
    tau: float | None = None,
    settings: EditSettings | None = None,
    seed: int | None = None,
    device: str = "cpu",
    save_mask: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    segmenter: Any = None,
    load_segmenter: Callable[[], Any] | None = None,
    request: dict[str, Any] | None = None,
) -> EditReport:
    """The ``diffsegmenter edit`` command: edit image files (or every image in folders) and write PNGs.

    One input file and an ``out`` ending in an image suffix writes that file (replacing it if it exists: the user
    named it). Otherwise ``out`` is a folder, locked for the run, laid out as ``segment``'s
    (:func:`~diffsegmenter.io.paths.collect_jobs`: a folder input's sub-folders are kept, names stay unique and
    stable), that receives per input ``<stem>.png``, ``<stem>.mask.png`` with ``save_mask`` (the paste-back weight,
    0..255) and ``<stem>.json`` (the sidecar: source, settings, whether the target was found, the kept seed). The
    folder run resumes: images whose sidecar records these settings are kept; edits made with other settings are
    never replaced unless ``overwrite``; inputs that cannot be used are listed in ``<out>/skipped.json``. Images are
    edited one at a time so a folder's images may differ in size.

    Args:
        inputs: image files, folders or glob patterns (:func:`~diffsegmenter.images.scan_inputs`).
        out: the output file or folder.
        target, prompt, classes, tau, settings, seed: as :func:`edit_images`; ``new_class`` as its
            ``new_classes`` (one for every input).
        model: the model to load (``"shapes"``, a hub id or a folder) unless ``segmenter`` is given; recorded in the
            sidecars (null with ``segmenter``).
        device (`str`): where the model runs.
        save_mask (`bool`): also write the mask used.
        overwrite (`bool`): redo images already edited (with these or other settings).
        progress (`bool`): progress bars.
        segmenter (*optional*): an already loaded :class:`~diffsegmenter.DiffSegmenter`.
        load_segmenter (*optional*): called (after every check on the arguments and paths) to load the segmenter
            when ``segmenter`` is None; default ``DiffSegmenter.from_pretrained(model, device=device)``.
        request (`dict`, *optional*): more JSON-able settings that decide the edits (the command line passes the
            model's config overrides), recorded in each sidecar with the arguments above.

    Returns:
        :class:`EditReport`: the images written, already done and skipped (with their reasons), and why the run
        stopped if it did.

    Raises:
        ValueError: bad arguments, no image found, two outputs (edits or masks) on one file, an output that would
            replace an input, an output folder that is an input's folder or a file, or edits made with other
            settings in the output folder (without ``overwrite``); all before the model loads.
        UsageError: another run holds the output folder; the output file's folder cannot be created or written.
    """
    from ..classes import check_class_names
    from ..config import check_tau
    from ..editing import EditSettings, _check_new_classes, _check_prompt
    from ..images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, scan_inputs
    from ..loading import model_key

    settings = settings or EditSettings()
    target = check_class_names([target])[0]
    prompt = _check_prompt(prompt, target)
    new_class = _check_new_classes(new_class, 1, settings, [target])[0]
    if tau is not None:
        tau = check_tau(tau)
    if classes is not None:
        classes = check_class_names(list(classes))
    scan = scan_inputs(list(inputs))
    paths = list(scan.images)
    if not paths:
        raise ValueError(f"no image found in {', '.join(map(str, inputs))}")
    out = Path(out)
    named_like_image = out.suffix.lower() in IMAGE_EXTENSIONS | UNSUPPORTED_IMAGE_EXTENSIONS
    single_file = len(paths) == 1 and named_like_image
    if len(paths) > 1 and named_like_image and not out.exists():  # else a folder named two.png held the edits
        raise ValueError(
            f"--out {str(out)!r} names one image file, but {len(paths)} images were given; give a folder name "
            "without an image suffix (or one input image)"
        )
    if single_file and out.suffix.lower() != ".png":
        raise ValueError(f"edited images are written as PNG: name the output {out.with_suffix('.png')}")
    edit_kwargs = {
        "target": target,
        "prompt": prompt,
        "classes": classes,
        "new_classes": new_class,
        "tau": tau,
        "settings": settings,
        "seed": seed,
        "progress": progress,
    }

    def load() -> Any:
        loaded = segmenter
        if loaded is None:
            if load_segmenter is None:
                from ..segmenter import DiffSegmenter

                loaded = DiffSegmenter.from_pretrained(model, device=device)
            else:
                loaded = load_segmenter()
        if classes is not None:
            loaded.check_classes(list(classes))
        if new_class is not None:
            loaded.check_classes([new_class])
        return loaded

    if single_file:
        return _edit_one_file(paths[0], out, scan.skipped, edit_kwargs, save_mask, load)
    # a given segmenter's source is not known here; a folder is recorded by its absolute path (./x and x are one)
    model_name = None if segmenter is not None else model_key(model)
    return _edit_folder(inputs, out, edit_kwargs, save_mask, overwrite, progress, load, model_name, request)


def _edit_one_file(path, dest: Path, skipped, edit_kwargs, save_mask: bool, load) -> EditReport:
    """One named input into the named output PNG (no sidecar, no resume); ``dest``'s folder is created and checked
    before the model loads, and a write error stops the run (exit status 3) instead of raising."""
    from ..batch import prepare_out_dir
    from ..batch.edits import write_edit
    from ..editing import edit_images
    from ..images import ImageLoadError

    _check_destinations([path], [dest], save_mask)
    if dest.is_dir():
        raise ValueError(
            f"--out {str(dest)!r} is a folder: name the edited PNG inside it (e.g. {dest / Path(path).stem}.png), "
            "or give a folder name without an image suffix"
        )
    prepare_out_dir(dest.parent)  # UsageError: a parent is a file, or the folder cannot be written
    report = EditReport(skipped=[(Path(p), reason) for p, reason in skipped])
    segmenter = load()
    kwargs = dict(edit_kwargs)
    try:
        res = edit_images(segmenter, [path], [kwargs.pop("target")], [kwargs.pop("prompt")], **kwargs)[0]
    except ImageLoadError as exc:
        report.skipped.append((Path(path), " ".join(str(exc).split())))
        report.exit_status = 1
        return report
    try:
        write_edit(dest, res, save_mask)
    except OSError as exc:
        report.stopped = f"cannot write {dest} ({exc.strerror or exc})"
        report.exit_status = 3
        return report
    report.written.append(dest)
    if not res.edited:
        report.unchanged.append(dest)
    report.exit_status = 1 if report.skipped else 0
    return report


def _edit_folder(inputs, out: Path, edit_kwargs, save_mask, overwrite, progress, load, model, request) -> EditReport:
    """Every input into the output folder, on the batch runner (resume, skip list, lock, clean stop).

    :func:`~diffsegmenter.io.paths.collect_jobs` refuses an output folder that is an input's folder and an output
    on an input; :func:`_check_destinations` adds the masks.
    """
    from ..batch import BatchRunner, output_lock, prepare_out_dir, write_skipped
    from ..batch.edits import EditTask, check_edit_request, edit_files, edit_path
    from ..batch.images import ImageTask
    from ..editing import check_generation
    from ..io.paths import OVERWRITE_RECORD, check_earlier_owners, collect_jobs

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder (or a .png name for one input)")
    jobs = collect_jobs([str(p) for p in inputs], out, ["png"], extra=lambda job: edit_files(job, save_mask))
    usable = [job for job in jobs if job.problem is None]
    _check_destinations([job.path for job in usable], [edit_path(job) for job in usable], save_mask)
    # the mask, x.mask.png, may be the label map an earlier segment run wrote for an input x.mask.png
    check_earlier_owners(usable, ["png"], extra=lambda job: edit_files(job, save_mask))
    fingerprint = {
        "command": "edit",
        "model": model,
        **{k: v for k, v in edit_kwargs.items() if k not in ("settings", "progress")},
        # names compared as the class lists compare them: 'Bird' is 'bird'
        "target": class_key(edit_kwargs["target"]),
        "new_classes": None if edit_kwargs["new_classes"] is None else class_key(edit_kwargs["new_classes"]),
        "settings": dataclasses.asdict(edit_kwargs["settings"]),
        "save_mask": bool(save_mask),
        **(request or {}),
    }
    if not overwrite:
        check_edit_request(usable, fingerprint)
    out = prepare_out_dir(out)
    with output_lock(out):
        segmenter = load()
        # a prompt or steps this model cannot take: one usage error, not one skipped image per input
        check_generation(segmenter.backbone, [edit_kwargs["prompt"]], edit_kwargs["settings"])
        task = EditTask(segmenter, {**edit_kwargs, "progress": False}, fingerprint, save_mask)
        ImageTask.remove_stale_temp_files(jobs)
        runner = BatchRunner(
            overwrite=overwrite,
            progress=None if progress else False,
            desc="edit",
            done_note="%d image(s) already edited with these settings; pass --overwrite to redo them",
            overwrite_record=out / OVERWRITE_RECORD,
        )
        result = runner.run(jobs, task)
        report = EditReport(
            written=[edit_path(job) for job, _ in result.segmented],
            unchanged=[edit_path(job) for job, edited in result.segmented if not edited],
            already_done=[edit_path(job) for job in result.already_done],
            skipped=[(job.path, reason) for job, reason in result.skipped],
            stopped=result.stopped,
            exit_status=result.exit_status(),
        )
        report_error = write_skipped(result, out)
        if report_error is not None:
            logger.warning("could not write %s (%s)", out / "skipped.json", report_error)
    return report


def _check_destinations(paths: Sequence[Path], dests: Sequence[Path], save_mask: bool) -> None:
    """Refuse, before the model loads, an edit or mask that would replace an input or another output.

    Raises:
        ValueError: naming the paths and the way out.
    """
    from ..batch.edits import mask_path

    resolved = {Path(p).resolve(): Path(p) for p in paths}
    seen: dict[Path, Path] = {}
    for p, d in zip(paths, dests):
        for target in (d, mask_path(d)) if save_mask else (d,):
            key = target.resolve()
            if key in resolved:
                raise ValueError(
                    f"{target} would replace the input {resolved[key]}: choose another --out so inputs are never "
                    "overwritten"
                )
            if key in seen:
                raise ValueError(
                    f"{seen[key]} and {p} would both be written to {target}: edit them into separate folders"
                )
            seen[key] = Path(p)


def cmd_edit(args: argparse.Namespace) -> int:
    """``diffsegmenter edit``: returns 0 when every input was edited (or already was), 1 when some were skipped
    (listed on stderr and, into a folder, in ``skipped.json``), 3 when the run stopped on a write error (rerun to
    resume); usage errors raise `CliError` (exit 2), before the model loads."""
    from ..batch.runner import result_settings
    from ..editing import EditSettings
    from ..transfer import DEFAULT_DTYPE, check_dtype
    from .model import check_overrides, default_model, load_segmenter

    overrides = config_overrides(args)
    check_overrides(overrides)
    given = {name: getattr(args, name) for name in EDIT_FLAGS if getattr(args, name) is not None}
    try:
        settings = EditSettings(**given)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        report = edit_command(
            given_inputs(args.inputs),
            args.out,
            target=args.target,
            prompt=args.prompt,
            classes=parse_classes(args.classes),
            new_class=args.new_class,
            tau=args.tau,
            settings=settings,
            seed=args.seed,
            save_mask=args.save_mask,
            overwrite=args.overwrite,
            progress=not args.quiet,
            load_segmenter=lambda: load_segmenter(args, overrides),
            model=str(args.model) if args.model is not None else default_model(),
            request={  # not what leaves the edits as they are
                "config_overrides": result_settings(overrides),
                "dtype": str(check_dtype(DEFAULT_DTYPE if args.dtype is None else args.dtype)),
            },
        )
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(" ".join(str(exc).split())) from None
    written = report.written
    if not args.quiet or report.stopped is not None:
        done = f", {len(report.already_done)} already done" if report.already_done else ""
        print(
            f"Edited {len(written)} image(s){done}: {', '.join(str(p) for p in written[:5])}"
            f"{' ...' if len(written) > 5 else ''}"
        )
    if report.unchanged:
        print(
            f"{len(report.unchanged)} of them unchanged: no pixel was labelled {args.target!r} (try a lower --tau "
            f"or another name): {', '.join(str(p) for p in report.unchanged[:5])}"
            f"{' ...' if len(report.unchanged) > 5 else ''}",
            file=sys.stderr,
        )
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if report.skipped:
        others = "the others were edited" if written or report.already_done else "nothing was edited"
        print(f"{len(report.skipped)} input(s) skipped (listed above); {others}", file=sys.stderr)
    if report.stopped is not None:
        print(f"diffsegmenter: the run stopped: {report.stopped}", file=sys.stderr)
    return report.exit_status


register_command(
    Command(
        "edit",
        help="replace a named class in images by what a prompt describes (segment, then regenerate its region)",
        description="Segment --target in each image, grow and feather its mask, and regenerate only that region "
        "with the same diffusion model (blended latent diffusion); everything outside the dilated mask is returned "
        "exactly as it was.",
        add_arguments=add_edit_arguments,
        run=cmd_edit,
        model_help="the library's, 'shapes'",
    )
)
