"""``diffsegmenter edit``: segment a class, then regenerate only its region with the same diffusion model."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..editing import EditSettings

from .parser import CliError, Command, config_overrides, parse_classes, register_command

__all__ = ["add_edit_arguments", "cmd_edit", "edit_command"]

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
) -> list[Path]:
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

    Returns:
        `list[Path]`: the edited images written.

    Raises:
        ValueError: bad arguments (before the model loads), no image found, or two inputs that would write one file.
    """
    from ..classes import check_class_names
    from ..config import check_tau
    from ..editing import EditSettings, _check_new_classes, _check_prompt, edit_images
    from ..images import scan_inputs

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
    seen: dict[Path, Any] = {}
    for p, d in zip(paths, dests):
        if d in seen:
            raise ValueError(f"{seen[d]} and {p} would both be written to {d}: edit them into separate folders")
        seen[d] = p
    if segmenter is None:
        from ..segmenter import DiffSegmenter

        segmenter = DiffSegmenter.from_pretrained(model, device=device)
    if classes is not None:
        segmenter.check_classes(list(classes))
    if new_class is not None:
        segmenter.check_classes([new_class])
    written = []
    for p, d in zip(paths, dests):
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
        _save_png(d, res.image)
        if save_mask:
            _save_png(d.with_name(d.stem + ".mask.png"), np.rint(res.mask * 255).astype(np.uint8))
        if not res.edited:
            logger.warning("%s: no %r found; written unchanged", p, target)
        written.append(d)
    return written


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write an image array as PNG through the package's one atomic writer (creating the folder)."""
    from PIL import Image

    from ..io.formats.label_png import save_png

    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, Image.fromarray(array))


def cmd_edit(args: argparse.Namespace) -> int:
    """``diffsegmenter edit``: returns 0 when every input was edited; usage errors raise `CliError` (exit 2)."""
    from ..editing import EditSettings
    from .model import check_overrides, load_segmenter

    overrides = config_overrides(args)
    check_overrides(overrides)
    given = {name: getattr(args, name) for name in EDIT_FLAGS if getattr(args, name) is not None}
    try:
        settings = EditSettings(**given)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    segmenter = load_segmenter(args, overrides)
    try:
        written = edit_command(
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
            segmenter=segmenter,
        )
    except ValueError as exc:
        raise CliError(" ".join(str(exc).split())) from None
    if not args.quiet:
        print(
            f"Edited {len(written)} image(s): {', '.join(str(p) for p in written[:5])}{' ...' if len(written) > 5 else ''}"
        )
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
