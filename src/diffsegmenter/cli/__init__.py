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
- One parser, one batch runner: every subcommand shares ``--model --device --dtype --set --offline --verbose``
  (``--dtype`` takes fp16|float16, bf16|bfloat16, fp32|float32) and keeps its own default model (``segment`` and
  ``demo``: the library's; ``eval``: ``shapes`` for ``--dataset shapes``, else SD 1.5); the runs go through
  :class:`diffsegmenter.batch.BatchRunner`. ``eval`` takes no output-folder lock (its shards share one ``--out``) and
  stops at the first error (a benchmark number must not quietly leave images out).

Modules: ``parser`` (the subcommand registry, the shared flags and value rules), ``segment``, ``demo``,
``evaluate`` (one per subcommand), ``model`` (loading the segmenter and its filter). A new subcommand (a ``serve``
Gradio app) is one more module that calls :func:`~diffsegmenter.cli.parser.register_command`, imported below.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..batch import LOCK_FILE, BatchReport, output_lock, run_batch
from ..batch.runner import EXIT_USAGE
from ..io.paths import ImageJob, collect_jobs
from .parser import (
    COMMANDS,
    CONFIG_FLAGS,
    DEFAULT_FORMATS,
    PROG,
    CliError,
    Command,
    build_parser,
    config_overrides,
    configure,
    load_kwargs,
    parse_classes,
    parse_formats,
    register_command,
)

# The subcommands, in --help order; each module registers itself.
from . import segment, demo, evaluate, edit, serve  # noqa: E402, F401, I001  isort: skip
from .demo import DEFAULT_DEMO_OUT, example_images  # noqa: E402

__all__ = [
    "COMMANDS",
    "CONFIG_FLAGS",
    "DEFAULT_DEMO_OUT",
    "DEFAULT_FORMATS",
    "LOCK_FILE",
    "BatchReport",
    "CliError",
    "Command",
    "ImageJob",
    "build_parser",
    "collect_jobs",
    "config_overrides",
    "example_images",
    "load_kwargs",
    "main",
    "output_lock",
    "parse_classes",
    "parse_formats",
    "register_command",
    "run_batch",
]


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
        args = build_parser().parse_args(argv)
        command = COMMANDS[args.command]
        configure(args.offline, verbose=args.verbose or command.verbose)
        return command.run(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
