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

import numpy as np

if TYPE_CHECKING:
    from ..editing import EditSettings

from .parser import CliError, Command, config_overrides, parse_classes, register_command

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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclasses.dataclass
class EditReport:
    """What :func:`edit_command` did.

    Attributes:
        written (`list[Path]`): the edited images written, in input order.
        skipped (`list[tuple[Path, str]]`): inputs that could not be used (unreadable, an unsupported image type, a
            broken link...) with the reason; the others were still edited.
    """

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)


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
    progress: bool = True,
    segmenter: Any = None,
    load_segmenter: Callable[[], Any] | None = None,
) -> EditReport:
    """The ``diffsegmenter edit`` command: edit image files (or every image in folders) and write PNGs.

    One input file and an ``out`` ending in an image suffix writes that file; otherwise ``out`` is a folder that
    receives ``<stem>.png`` per input (``<stem>.mask.png`` too with ``save_mask``: the paste-back weight, 0..255).
    Images are edited one at a time so a folder's images may differ in size.

    Args:
        inputs: image files, folders or glob patterns (:func:`~diffsegmenter.images.scan_inputs`).
        out: the output file or folder.
        target, prompt, classes, tau, settings, seed: as :func:`edit_images`; ``new_class`` as its
            ``new_classes`` (one for every input).
        model: the model to load (``"shapes"``, a hub id or a folder) unless ``segmenter`` is given.
        device (`str`): where the model runs.
        save_mask (`bool`): also write the mask used.
        progress (`bool`): progress bars.
        segmenter (*optional*): an already loaded :class:`~diffsegmenter.DiffSegmenter`.
        load_segmenter (*optional*): called (after every check on the arguments and paths) to load the segmenter
            when ``segmenter`` is None; default ``DiffSegmenter.from_pretrained(model, device=device)``.

    Returns:
        :class:`EditReport`: the images written, and the inputs skipped with their reasons (an input that cannot be
        read is skipped; the others are still edited).

    Raises:
        ValueError: bad arguments, no image found, two outputs (edits or masks) on one file, an output that would
            replace an input, or an output folder that is an input's folder or a file; all before the model loads.
    """
    from ..classes import check_class_names
    from ..config import check_tau
    from ..editing import EditSettings, _check_new_classes, _check_prompt, edit_images
    from ..images import ImageLoadError, scan_inputs

    settings = settings or EditSettings()
    target = check_class_names([target])[0]
    prompt = _check_prompt(prompt, target)
    new_class = _check_new_classes(new_class, 1, settings)[0]
    if tau is not None:
        tau = check_tau(tau)
    scan = scan_inputs(list(inputs))
    paths = list(scan.images)
    if not paths:
        raise ValueError(f"no image found in {', '.join(map(str, inputs))}")
    out = Path(out)
    single_file = len(paths) == 1 and out.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    if single_file and out.suffix.lower() != ".png":
        raise ValueError(f"edited images are written as PNG: name the output {out.with_suffix('.png')}")
    dests = [out] if single_file else [out / f"{Path(p).stem}.png" for p in paths]
    _check_destinations(paths, dests, out, single_file, save_mask)
    if segmenter is None:
        if load_segmenter is None:
            from ..segmenter import DiffSegmenter

            segmenter = DiffSegmenter.from_pretrained(model, device=device)
        else:
            segmenter = load_segmenter()
    if classes is not None:
        segmenter.check_classes(list(classes))
    if new_class is not None:
        segmenter.check_classes([new_class])
    report = EditReport(skipped=[(Path(p), reason) for p, reason in scan.skipped])
    for p, d in zip(paths, dests):
        try:
            res = edit_images(
                segmenter,
                [p],
                [target],
                [prompt],
                classes=classes,
                new_classes=new_class,
                tau=tau,
                settings=settings,
                seed=seed,
                progress=progress,
            )[0]
        except ImageLoadError as exc:  # one unreadable input costs only itself
            report.skipped.append((Path(p), " ".join(str(exc).split())))
            continue
        _save_png(d, res.image)
        if save_mask:
            _save_png(_mask_path(d), np.rint(res.mask * 255).astype(np.uint8))
        if not res.edited:
            logger.warning("%s: no %r found; written unchanged", p, target)
        report.written.append(d)
    return report


def _mask_path(dest: Path) -> Path:
    return dest.with_name(dest.stem + ".mask.png")


def _check_destinations(
    paths: Sequence[Path], dests: Sequence[Path], out: Path, single_file: bool, save_mask: bool
) -> None:
    """Refuse, before the model loads, outputs that would replace an input or each other, and an output folder that
    is an input's folder (its edits would replace, or on the next run be read as, inputs) or an existing file.

    Raises:
        ValueError: naming the paths and the way out.
    """
    resolved = {Path(p).resolve(): Path(p) for p in paths}
    if not single_file:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder (or a .png name for one input)")
        folders = {r.parent for r in resolved}
        if out.resolve() in folders:
            raise ValueError(
                f"--out {str(out)!r} is the folder of the inputs; choose another output folder so the edits do not "
                "replace (or on the next run become) the input images"
            )
    seen: dict[Path, Path] = {}
    for p, d in zip(paths, dests):
        for target in (d, _mask_path(d)) if save_mask else (d,):
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


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write an image array as PNG through the package's one atomic writer (creating the folder)."""
    from PIL import Image

    from ..io.formats.label_png import save_png

    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, Image.fromarray(array))


def cmd_edit(args: argparse.Namespace) -> int:
    """``diffsegmenter edit``: returns 0 when every input was edited, 1 when some were skipped (listed on stderr);
    usage errors raise `CliError` (exit 2), before the model loads."""
    from ..editing import EditSettings
    from .model import check_overrides, load_segmenter

    overrides = config_overrides(args)
    check_overrides(overrides)
    given = {name: getattr(args, name) for name in EDIT_FLAGS if getattr(args, name) is not None}
    try:
        settings = EditSettings(**given)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        report = edit_command(
            args.inputs,
            args.out,
            target=args.target,
            prompt=args.prompt,
            classes=parse_classes(args.classes),
            new_class=args.new_class,
            tau=args.tau,
            settings=settings,
            seed=args.seed,
            save_mask=args.save_mask,
            progress=not args.quiet,
            load_segmenter=lambda: load_segmenter(args, overrides),
        )
    except ValueError as exc:
        raise CliError(" ".join(str(exc).split())) from None
    written = report.written
    if not args.quiet:
        print(
            f"Edited {len(written)} image(s): {', '.join(str(p) for p in written[:5])}{' ...' if len(written) > 5 else ''}"
        )
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if report.skipped:
        print(f"{len(report.skipped)} input(s) skipped (listed above); the others were edited", file=sys.stderr)
        return 1
    return 0


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
