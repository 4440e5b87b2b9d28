"""``diffsegmenter edit``: segment a class, then regenerate only its region with the same diffusion model."""

from __future__ import annotations

import argparse

from .parser import CliError, Command, config_overrides, parse_classes, register_command

__all__ = ["add_edit_arguments", "cmd_edit"]

#: ``--flag`` -> :class:`~diffsegmenter.editing.EditSettings` field; a flag the user did not set keeps the library's
#: default.
EDIT_FLAGS = ("dilate", "feather", "steps", "guidance", "strength", "resolution")


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
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the model's config seed)")
    parser.add_argument("--save-mask", action="store_true", help="also write <name>.mask.png (the paste-back weight)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_edit(args: argparse.Namespace) -> int:
    """``diffsegmenter edit``: returns 0 when every input was edited; usage errors raise `CliError` (exit 2)."""
    from ..editing import EditSettings, edit_command
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
