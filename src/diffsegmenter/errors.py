"""Errors shared by the front ends (the command line, the batch runner, the result paths)."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with what was asked (a flag, an input, the output folder): on the command line it is printed as one
    line, without a traceback, and the exit status is 2 (``diffsegmenter.cli.CliError`` is this class)."""
