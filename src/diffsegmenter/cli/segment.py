"""``diffsegmenter segment``: image files, folders or globs -> one result per image under ``--out``."""

from __future__ import annotations

import argparse
from typing import Any

from .parser import (
    DEFAULT_FORMATS,
    CliError,
    Command,
    add_max_pixels_argument,
    config_overrides,
    given_inputs,
    load_kwargs,
    parse_classes,
    parse_formats,
    positive_int,
    register_command,
)

__all__ = ["add_clip_filter_arguments", "add_filter_argument", "add_segment_arguments", "cmd_segment", "run_request"]


def add_filter_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--filter none|clip|diffusion`` (``segment`` and ``demo``), with the clip filter's ``--clip`` / ``--blip``."""
    parser.add_argument(
        "--filter",
        choices=("none", "clip", "diffusion"),
        default=None,
        help="category filter keeping only the classes present in each image: clip (the paper's BLIP+CLIP), "
        "diffusion (diffusion model only); both keep at least the best-scoring class, so an image is taken to show "
        f"one of the classes given (default: {default})",
    )
    add_clip_filter_arguments(parser)


def add_clip_filter_arguments(parser: argparse.ArgumentParser, use: str = "for --filter clip") -> None:
    """``--clip`` and ``--blip``: the models of the clip filter (Hub ids or local folders); ``use`` says what they
    are for in the help."""
    parser.add_argument(
        "--clip",
        default=None,
        metavar="MODEL",
        help=f"CLIP Hub id or local folder {use} (default: openai/clip-vit-large-patch14)",
    )
    parser.add_argument(
        "--blip",
        default=None,
        metavar="MODEL",
        help="BLIP Hub id or local folder whose caption the clip filter reads, or 'none' for image similarity only "
        "(default: the segmenter's BLIP captioner if it has one, else Salesforce/blip-image-captioning-large)",
    )


def _format_help() -> str:
    from ..io.formats import FORMATS

    names = ", ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
    return (
        f"comma-separated output formats: {names} (default: {','.join(DEFAULT_FORMATS)}); a <name>.json sidecar is "
        "always written"
    )


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """``segment``'s own flags (the shared model and run flags are added by the parser)."""
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs"
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names, e.g. 'cat,sofa,plant', or @FILE with one name per line (UTF-8, or UTF-16 with a byte-order mark; lines "
        "starting with # are comments; a file of one line is split at commas, else at tabs or semicolons, so a "
        "name holding one needs two or more lines) (default: the model's own classes, if it declares any). With --filter, the vocabulary "
        "to choose from",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--format", default=None, help=_format_help())
    add_filter_argument(parser, default="none")
    parser.add_argument(
        "--captioner",
        default=None,
        help="BLIP Hub id or folder continuing each prompt with a caption, e.g. "
        "Salesforce/blip-image-captioning-large, or 'none' (default: none)",
    )
    parser.add_argument(
        "--images-per-batch",
        type=positive_int,
        default=1,
        help="images segmented per model call; raise it on a GPU (default: 1, right for CPU)",
    )
    add_max_pixels_argument(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute images already done (a rerun otherwise keeps them, and refuses to replace results made "
        "with other settings)",
    )
    ray = parser.add_argument_group("Ray (pip install 'diffsegmenter[ray]')")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: a pool of model actors (GPU actors where the cluster has GPUs), same outputs, same "
        "resume rule; a local Ray is started unless --ray-address is given",
    )
    ray.add_argument("--ray-address", default=None, help="a running Ray cluster, e.g. auto or ray://head:10001")
    ray.add_argument("--workers", type=positive_int, default=None, help="model actors with --ray (default: 2)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar and no summary; problems are still shown"
    )
    method = parser.add_argument_group(
        "method settings (default: the model's segmenter_config.json, else the paper's)"
    )
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
        type=positive_int,
        default=None,
        help="UNet samples per forward pass (SegmenterConfig.batch_size; default: as many as fit in memory)",
    )


def _ray_task(
    args: argparse.Namespace,
    overrides: dict,
    formats: list[str],
    classes: list[str] | None,
    request: dict,
    out: str,
    gpu: bool,
):
    """An actor's ImageTask with its own model (``segment --ray``); on a GPU actor the model goes to ``cuda``."""
    from ..batch import ImageTask
    from .model import load_segmenter, setup_filter

    if gpu and args.device is None:
        args = argparse.Namespace(**{**vars(args), "device": "cuda"})
    segmenter = load_segmenter(args, overrides)
    filter_name = setup_filter(segmenter, args.filter, args)
    return ImageTask(segmenter, formats, classes=classes, filter=filter_name, request=request, out=out)


def run_request(
    args: argparse.Namespace,
    segmenter: Any,
    classes: list[str] | None,
    filter_name: str | None,
    filter_models: dict[str, Any] | None,
) -> dict[str, Any]:
    """What decides a run's results, as each sidecar records it (``request``): a rerun with another request is
    refused, or redone with ``--overwrite``; with the same, finished images are kept.

    Args:
        args: the parsed command line (``--model``, ``--captioner``).
        segmenter: the loaded segmenter (its settings and dtype).
        classes (`list[str]`, *optional*): the classes given; None = the model's own.
        filter_name (`str`, *optional*): ``"clip"``, ``"diffusion"`` or None (none).
        filter_models (`dict`, *optional*): ``--clip`` / ``--blip`` as given.
    """
    from ..batch.runner import result_settings
    from ..loading import model_key
    from .model import default_model

    return {
        "model": model_key(args.model) if args.model is not None else default_model(),  # ./x and x are one
        "classes": list(classes) if classes is not None else list(segmenter.default_classes),
        "filter": filter_name,
        "filter_models": filter_models or None,  # --clip / --blip
        "captioner": load_kwargs(args).get("captioner"),
        "config": result_settings(segmenter.config.to_dict()),  # without what does not change the results
        "dtype": str(segmenter.dtype),  # a rerun in another precision gives other labels: not "already done"
    }


def cmd_segment(args: argparse.Namespace) -> int:
    """``diffsegmenter segment``: returns the exit status (0 all done, 1 some images skipped, 3 stopped early)."""
    from ..batch import ImageTask, finish_report, output_lock, prepare_out_dir, run_batch
    from ..io.formats.label_png import check_png_class_count
    from ..io.paths import collect_jobs
    from .model import (
        check_classes,
        check_clip_filter_flags,
        check_overrides,
        load_segmenter,
        setup_filter,
    )

    formats = parse_formats(args.format)
    filter_models = check_clip_filter_flags(args, args.filter)
    use_ray = bool(getattr(args, "ray", False))
    ray_flags = (("--ray-address", getattr(args, "ray_address", None)), ("--workers", getattr(args, "workers", None)))
    ray_only = [flag for flag, value in ray_flags if value]
    if ray_only and not use_ray:  # else the job ran in this process while the user thought a cluster had it
        raise CliError(f"{' and '.join(ray_only)} set(s) how a --ray run goes; add --ray, or leave them out")
    if use_ray:  # before the model loads, as parse_formats does for the formats' extras
        from .._optional import require

        try:
            require("ray.data", extra="ray", feature="segment --ray")
        except ImportError as exc:
            raise CliError(str(exc)) from None
    classes = parse_classes(args.classes)
    if classes is not None and "png" in formats:
        try:
            check_png_class_count(len(classes))  # known now: not after every image has been segmented
        except ValueError as exc:
            raise CliError(f"--classes: {exc} (--format)") from None
    overrides = config_overrides(args)
    check_overrides(overrides)
    inputs = given_inputs(args.inputs)
    out = prepare_out_dir(args.out)
    with output_lock(out):
        try:
            jobs = collect_jobs(inputs, out, formats)
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
        # with --ray the driver's model only checks the classes and fingerprints the settings: on the CPU, where
        # a head node without a GPU can hold it (the actors put theirs on --device)
        driver = {"device": "cpu", "compile": None, "channels_last": None}  # it runs no forward pass
        segmenter = load_segmenter(argparse.Namespace(**{**vars(args), **driver}) if use_ray else args, overrides)
        if classes is None and not getattr(segmenter, "default_classes", None):
            raise CliError(
                "no classes: pass --classes 'cat,sofa,plant' (with --filter clip or diffusion to keep only the "
                "classes present in each image); this model declares no classes of its own"
            )
        check_classes(segmenter, classes if classes is not None else segmenter.default_classes)
        flt = None if use_ray else setup_filter(segmenter, args.filter, args)  # with --ray, each actor builds its own
        filter_name = None if args.filter in (None, "none") else args.filter
        request = run_request(args, segmenter, classes, filter_name, filter_models)
        if not args.overwrite:  # before any image: results made with other settings are never replaced unasked
            try:
                ImageTask(segmenter, formats, classes=classes, request=request).check_earlier(jobs)
            except ValueError as exc:
                raise CliError(str(exc)) from None
        if use_ray:
            return _finish_ray(args, overrides, segmenter, jobs, formats, classes, filter_name, request, out)
        report = run_batch(
            segmenter,
            jobs,
            formats=formats,
            classes=classes,
            filter=flt,
            request=request,
            overwrite=args.overwrite,
            images_per_batch=args.images_per_batch,
            progress=not args.quiet,
            out=out,
            check_earlier=False,  # checked above
        )
        show = not args.quiet or report.stopped is not None
        return finish_report(report, out, f"{report.summary()}. Results in {out}" if show else None)


def _finish_ray(args, overrides, segmenter, jobs, formats, classes, filter_name, request, out) -> int:
    import functools
    import gc

    from ..batch import ImageTask, finish_report
    from ..batch.ray_runner import run_on_ray
    from ..io.paths import OVERWRITE_RECORD

    task = ImageTask(segmenter, formats, classes=classes, filter=filter_name, request=request, out=out)
    task.segmenter = None  # the driver only lists, resumes and gathers; the actors hold the models
    del segmenter
    gc.collect()
    task.remove_stale_temp_files(jobs)
    factory = functools.partial(_ray_task, args, overrides, formats, classes, request, str(out))
    try:
        report = run_on_ray(
            jobs,
            task,
            factory,
            workers=args.workers or 2,
            address=args.ray_address,
            overwrite=args.overwrite,
            images_per_batch=args.images_per_batch,
            progress=not args.quiet,
            gpus=not str(args.device or "").startswith("cpu"),  # --device cpu reserves no GPU (auto and cuda do)
            overwrite_record=out / OVERWRITE_RECORD,
        )
    except (ImportError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    show = not args.quiet or report.stopped is not None
    return finish_report(report, out, f"{report.summary()}. Results in {out}" if show else None)


register_command(
    Command(
        "segment",
        help="segment image files, folders or glob patterns",
        description="Segment images into the given classes and write one result per image under --out. "
        "Rerunning the same command skips the images already done.",
        add_arguments=add_segment_arguments,
        run=cmd_segment,
        model_help="the library's, 'shapes'",
    )
)
