"""Loading what a command runs: the segmenter (with only the flags the user set), its filter, and up-front checks of
the settings and class names (each a one-line usage error)."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from .parser import CliError, load_kwargs

__all__ = [
    "check_classes",
    "check_overrides",
    "default_model",
    "load_segmenter",
    "quiet_weight_loading",
    "setup_filter",
]

logger = logging.getLogger(__name__)


def default_model() -> str:
    """The model ``DiffSegmenter.from_pretrained`` loads when given none (recorded in ``segment``'s sidecars)."""
    import inspect

    from ..segmenter import DiffSegmenter

    return str(inspect.signature(DiffSegmenter.from_pretrained).parameters["model"].default)


@contextlib.contextmanager
def quiet_weight_loading(model: str | None) -> Iterator[None]:
    """Hide transformers' "Loading weights" bars while loading a local model (nothing to download), then restore.

    Hub models keep their bars: transformers' switch also hides huggingface_hub's download bars.
    """
    from ..hub import looks_like_local_path
    from ..loading import SHIPPED_MODELS

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


def load_segmenter(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """``DiffSegmenter.from_pretrained`` with only the flags the user set.

    Raises:
        CliError: a missing model or a bad setting (one-line message).
    """
    from ..segmenter import DiffSegmenter

    model_args = () if args.model is None else (args.model,)
    try:
        with quiet_weight_loading(args.model):
            return DiffSegmenter.from_pretrained(*model_args, **load_kwargs(args), **overrides)
    except (ValueError, OSError) as exc:  # ModelNotFoundError is a ValueError
        logger.debug("model loading failed", exc_info=exc)
        raise CliError(" ".join(str(exc).split()) or type(exc).__name__) from None


def setup_filter(segmenter: Any, name: str | None, args: argparse.Namespace) -> Any:
    """What ``segment(filter=...)`` gets for ``--filter``: None, the name ``"diffusion"`` (the segmenter builds it from
    its own model), or the loaded CLIP filter (built by :func:`~diffsegmenter.filters.build_filter` on the
    ``--device`` / ``--dtype`` given)."""
    models = check_clip_filter_flags(args, name)
    if name is None or name == "none":
        return None
    if name == "diffusion":
        try:
            import diffsegmenter.filters.diffusion  # noqa: F401
        except ImportError:
            raise CliError("the diffusion filter is not available in this installation; use --filter clip") from None
        return "diffusion"
    from ..filters.base import build_filter

    kwargs = {k: v for k, v in load_kwargs(args).items() if k in ("device", "dtype")}
    try:
        return build_filter("clip", segmenter, **kwargs, **models)
    except (ValueError, OSError) as exc:  # the message names the model, not the flag that gives it
        raise CliError(
            f"--filter clip: {' '.join(str(exc).split())} (its models: --clip MODEL and --blip MODEL, or --blip none "
            "for image similarity only)"
        ) from None


def clip_filter_models(args: argparse.Namespace) -> dict[str, Any]:
    """``--clip`` / ``--blip`` as :meth:`~diffsegmenter.filters.clip.ClipBlipFilter.from_pretrained` takes them: only
    the flags given (``--blip none`` = None: no captioner)."""
    models: dict[str, Any] = {}
    if getattr(args, "clip", None) is not None:
        models["clip"] = args.clip
    blip = getattr(args, "blip", None)
    if blip is not None:
        models["blip"] = None if blip.strip().lower() == "none" else blip
    return models


def check_clip_filter_flags(args: argparse.Namespace, filter_name: str | None) -> dict[str, Any]:
    """``--clip`` / ``--blip`` as given (:func:`clip_filter_models`), refused unless the filter is ``clip``: checked
    before the model loads.

    Raises:
        CliError: the flags are given with another filter (or none).
    """
    models = clip_filter_models(args)
    if models and filter_name != "clip":
        flags = " and ".join(f"--{k}" for k in models)
        raise CliError(f"{flags} set(s) the models of --filter clip; add --filter clip, or leave {flags} out")
    return models


def check_overrides(overrides: dict[str, Any]) -> None:
    """The ``--set`` / dedicated-flag settings, checked before the model is loaded."""
    from ..config import SegmenterConfig

    try:
        SegmenterConfig().replace(**overrides)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def check_classes(segmenter: Any, classes: Sequence[str]) -> None:
    """The class names against the loaded model, once, before any image (names the tokenizer cannot place...)."""
    try:
        segmenter.check_classes(classes)
    except ValueError as exc:
        raise CliError(f"--classes: {' '.join(str(exc).split())}") from None
