"""The one argument parser: a registry of subcommands, and the flags and value rules they share.

Every subcommand gets the shared flags, defined once here: ``--model --device --dtype --set`` ([`add_model_arguments`])
and ``--offline -v/--verbose`` ([`add_run_arguments`]). Every flag that maps to a library setting defaults to
``None`` ("not given"), and only the flags a user set are forwarded ([`config_overrides`], [`load_kwargs`]): the
model folder's ``segmenter_config.json`` and then :class:`~diffsegmenter.config.SegmenterConfig` decide the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import COMPILE_MODES, DEFAULT_MAX_IMAGE_PIXELS, add_override_argument
from ..errors import UsageError as CliError

__all__ = [
    "COMMANDS",
    "CONFIG_FLAGS",
    "DEFAULT_FORMATS",
    "DTYPES",
    "PROG",
    "Command",
    "add_model_arguments",
    "add_run_arguments",
    "build_parser",
    "config_overrides",
    "configure",
    "given_inputs",
    "load_kwargs",
    "parse_classes",
    "parse_dtype",
    "parse_formats",
    "positive_int",
    "register_command",
]

PROG = "diffsegmenter"

DEFAULT_FORMATS: tuple[str, ...] = ("png", "overlay")
"""Formats written when ``--format`` is not given (a CLI choice: the library itself writes nothing)."""

CONFIG_FLAGS: dict[str, str] = {
    "tau": "tau",
    "seed": "seed",
    "timestep": "timestep",
    "prompt_mode": "prompt_mode",
    "template": "template",
    "batch_size": "batch_size",
    "max_pixels": "max_image_pixels",
}
"""argparse destination -> :class:`~diffsegmenter.config.SegmenterConfig` field, for ``segment``'s dedicated flags."""

DTYPES: dict[str, str] = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
"""Accepted ``--dtype`` spellings -> the torch dtype's name (both spellings, for every subcommand)."""


# ---------------------------------------------------------------------------------------------- the subcommands


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name (`str`): ``diffsegmenter <name>``.
        help (`str`): one line for ``diffsegmenter --help``.
        description (`str`): the paragraph of ``diffsegmenter <name> --help``.
        add_arguments (`Callable[[ArgumentParser], None]`): adds the subcommand's own flags (the shared ones are
            added for it).
        run (`Callable[[Namespace], int]`): runs it; returns the exit status, raises `CliError` for a usage error.
        model_help (`str`): what ``--model`` defaults to for this subcommand.
        verbose (`bool`): always log progress details (``eval``), not only with ``--verbose``.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    model_help: str
    verbose: bool = False


COMMANDS: dict[str, Command] = {}
"""The subcommands, in ``--help`` order. ``segment``, ``demo`` and ``eval`` register themselves when
:mod:`diffsegmenter.cli` is imported; a new one (a ``serve`` Gradio app, say) is a module ``cli/serve.py`` that ends
with ``register_command(Command("serve", ...))`` and is imported in ``cli/__init__.py``."""


def register_command(command: Command) -> Command:
    """Add a subcommand to [`COMMANDS`].

    Raises:
        ValueError: the name is taken.
    """
    if command.name in COMMANDS:
        raise ValueError(f"a subcommand named {command.name!r} is already registered")
    COMMANDS[command.name] = command
    return command


def build_parser() -> argparse.ArgumentParser:
    """The ``diffsegmenter`` argument parser: one sub-parser per registered [`Command`], each with the shared flags.

    Returns:
        `argparse.ArgumentParser`: every flag that maps to a library setting defaults to `None`.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free open-vocabulary semantic segmentation with a frozen diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for command in COMMANDS.values():
        child = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(child)
        add_model_arguments(child, command.model_help)
        add_run_arguments(child)
    return parser


# ---------------------------------------------------------------------------------------------- the shared flags


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels`` (``SegmenterConfig.max_image_pixels``, through :data:`CONFIG_FLAGS`), for the commands that
    read image files."""
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="refuse (skip, with the reason) images with more pixels than this; memory grows with them "
        f"(SegmenterConfig.max_image_pixels; default: {DEFAULT_MAX_IMAGE_PIXELS}, "
        f"i.e. {DEFAULT_MAX_IMAGE_PIXELS / 1e6:g} megapixels)",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_dtype(text: str) -> str:
    """argparse type: ``fp16`` / ``float16``, ``bf16`` / ``bfloat16``, ``fp32`` / ``float32`` -> the torch name."""
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"expected fp32|float32, fp16|float16 or bf16|bfloat16, got {text!r}"
        ) from None


def add_model_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """The shared ``--model --device --dtype --compile --channels-last --set`` flags (all default to None: not
    given)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="'shapes' (the shipped model), a Hugging Face Hub id, or a local folder in the diffusers layout "
        f"(default: {model_help})",
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, mps or auto (= cuda if available) (default: cpu)"
    )
    group.add_argument(
        "--dtype",
        type=parse_dtype,
        default=None,
        metavar="{fp32,fp16,bf16}",
        help="model precision; float32, float16 and bfloat16 are accepted too (default: fp32)",
    )
    group.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        default=None,
        metavar="MODE",
        help=f"torch.compile the denoiser and the VAE encoder, in a mode ({', '.join(COMPILE_MODES)}; "
        "alone: default): pays on a GPU over many images; each new image size or batch compiles once, minutes "
        "for SD1.5 (default: not compiled)",
    )
    group.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="channels-last memory for the convolutions (faster on recent GPUs; default: off)",
    )
    add_override_argument(
        group,
        "config_set",
        "set a SegmenterConfig field, repeatable, e.g. --set token_rule=last --set emphasis=1.0 "
        "(default: the model's segmenter_config.json, else the paper's)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared ``--offline`` and ``-v/--verbose`` flags."""
    parser.add_argument(
        "--offline", action="store_true", help="never contact the Hugging Face Hub (sets HF_HUB_OFFLINE=1)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (and tracebacks)")


def configure(offline: bool, verbose: bool = False) -> None:
    """Apply ``--offline`` (``HF_HUB_OFFLINE=1`` for this run; nothing is changed at import) and the log level."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    if verbose:
        logging.getLogger("diffsegmenter").setLevel(logging.INFO)


# ---------------------------------------------------------------------------------------------- values -> library


def parse_formats(text: str | None) -> list[str]:
    """``"png,overlay"`` -> ``["png", "overlay"]`` (in writing order); None -> the default formats.

    Raises:
        CliError: an unknown or empty format list, or a format whose optional dependency is not installed.
    """
    from ..io.formats import FORMATS

    if text is None:
        return list(DEFAULT_FORMATS)
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not formats:
        raise CliError(f"--format is empty; choose from {','.join(FORMATS)}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise CliError(f"unknown output format(s) {', '.join(unknown)}; choose from {','.join(FORMATS)}")
    chosen = [f for f in FORMATS if f in formats]
    for name in chosen:  # an extra that is not installed: said now, not after every image was segmented
        try:
            FORMATS[name].check_available()
        except ImportError as exc:
            raise CliError(str(exc)) from None
    return chosen


def given_inputs(texts: list[str]) -> list[str]:
    """The input paths as given, a leading ``~`` expanded (quoted, or from a shell that does not expand it, as
    ``--out``'s is).

    Raises:
        CliError: an input that names nothing (no file, folder or link, or a glob pattern that matches nothing):
            before the output folder is made (it was left behind, empty but for its lock file).
    """
    import glob

    from ..images import _GLOB_CHARS, _nothing_found_message

    inputs = [os.path.expanduser(text) for text in texts]
    for text in inputs:
        if os.path.lexists(text):
            continue
        if not _GLOB_CHARS.intersection(text) or next(glob.iglob(text, recursive=True), None) is None:
            raise CliError(_nothing_found_message(text))
    return inputs


def parse_classes(text: str | None) -> list[str] | None:
    """``"cat, sofa,potted plant"`` -> ``["cat", "sofa", "potted plant"]``; ``"@file.txt"`` reads one name per line
    (a file of one line is split at its commas, else at its tabs or semicolons: a row saved by a spreadsheet).

    The names follow the rule the API applies (:func:`~diffsegmenter.classes.check_class_names`): whitespace inside
    a name is normalised to single spaces and invisible characters dropped, duplicates are compared as
    :func:`~diffsegmenter.classes.class_key` compares them (case, Unicode form), the list cannot be empty. A file's
    byte-order mark is not part of its first name.

    Raises:
        CliError: an empty list or name, a duplicate, or an unreadable @file.
    """
    if text is None:
        return None
    from ..classes import ClassListError, check_class_names

    if text.startswith("@"):
        try:
            data = Path(text[1:]).expanduser().read_bytes()
            # a byte-order mark (Windows Notepad) is not part of the first name; UTF-16 is Notepad's "Unicode"
            utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
            raw = data.decode("utf-16" if utf16 else "utf-8-sig")
        except OSError as exc:
            raise CliError(f"cannot read the class file {text[1:]!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:  # a Latin-1 / cp1252 export (Excel)
            raise CliError(
                f"the class file {text[1:]!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
                f"{exc.start}); save it as UTF-8"
            ) from None
        # lines end at \n (and \r\n): splitlines() also cut names at form feeds, \x85 and U+2028
        names = [line for line in raw.split("\n") if line.strip() and not line.lstrip().startswith("#")]
        if len(names) == 1:  # one row: split at commas, else at tabs or semicolons (Excel's rows in some locales)
            separator = next((sep for sep in (",", "\t", ";") if sep in names[0]), None)
            names = names[0].split(separator) if separator is not None else names
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
        args (`argparse.Namespace`): parsed ``segment`` (or ``demo``) flags.

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

    Only the flags a user set appear (``device``, ``dtype``, ``compile``, ``channels_last``, ``captioner``);
    ``--captioner none`` is the same as not giving it.
    """
    kwargs: dict[str, Any] = {}
    if getattr(args, "device", None) is not None:
        kwargs["device"] = _resolve_device(args.device)
    if getattr(args, "dtype", None) is not None:
        import torch

        kwargs["dtype"] = getattr(torch, DTYPES[args.dtype])
    for flag in ("compile", "channels_last"):  # speed options of the loaded model (DiffSegmenter.optimize)
        if getattr(args, flag, None) is not None:
            kwargs[flag] = getattr(args, flag)
    captioner = getattr(args, "captioner", None)
    if captioner is not None and captioner.strip().lower() != "none":
        kwargs["captioner"] = captioner
    return kwargs
