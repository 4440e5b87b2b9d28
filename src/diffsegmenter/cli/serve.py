"""``diffsegmenter serve``: the web app (:mod:`diffsegmenter.app`, the ``[app]`` extra) on one shared model."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from .parser import CliError, Command, config_overrides, positive_int, register_command
from .segment import add_clip_filter_arguments

__all__ = ["add_serve_arguments", "cmd_serve"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve``'s own flags (the shared model and run flags are added by the parser)."""
    from ..app import DEFAULT_HOST, DEFAULT_PORT, TIME_LIMIT_S

    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT_S,
        help=f"seconds one request may take before it is answered with an error (default: {TIME_LIMIT_S:g})",
    )
    add_clip_filter_arguments(
        parser, "to offer the clip filter (loaded at start; without --clip or --blip it is not offered)"
    )


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {value}")
    return value


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, before the model loads (minutes for a large one): a name that does
    not resolve, an address that is not this machine's or a taken port is reported by the system's own words,
    where the web server's start names only the port.

    Raises:
        CliError: naming the address and the reason.
    """
    import socket

    error: OSError | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: the name does not resolve
        infos, error = [], exc
    for family, kind, proto, _, address in infos:  # "localhost" may be ::1 too, where IPv6 is off: one is enough
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
            return
        except OSError as exc:
            error = exc
    if error is not None:
        reason = error.strerror or str(error)
        raise CliError(
            f"cannot serve on {host}:{port}: {reason}; use --host with an address of this machine (127.0.0.1 for "
            "this machine only, 0.0.0.0 for every interface) and a free --port"
        ) from None


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (``kill``, ``docker stop``, systemd) into the Ctrl+C the server stops cleanly on, so the request
    folders are removed; the previous handler comes back on exit. Outside the main thread, nothing is changed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    """``diffsegmenter serve``: load the model once, then serve the app until interrupted."""
    from .._optional import require
    from ..app import SegmentService, launch_app
    from .model import check_overrides, default_model, load_segmenter, setup_filter

    try:
        require("gradio", extra="app", feature="diffsegmenter serve")
    except ImportError as exc:
        raise CliError(str(exc)) from None
    from ..app import MAX_TIME_LIMIT_S

    if not 0 < args.time_limit <= MAX_TIME_LIMIT_S:  # also refuses inf and nan
        raise CliError(f"--time-limit must be a number of seconds in (0, {MAX_TIME_LIMIT_S:g}], got {args.time_limit}")
    overrides = config_overrides(args)
    check_overrides(overrides)
    check_address(args.host, args.port)
    segmenter = load_segmenter(args, overrides)
    # the clip filter loads now, where a missing model is the operator's error, not each visitor's
    offer_clip = args.clip is not None or args.blip is not None
    clip_filter = setup_filter(segmenter, "clip", args) if offer_clip else None
    service = SegmentService(segmenter, time_limit=args.time_limit, clip_filter=clip_filter)
    model_name = args.model if args.model is not None else default_model()
    with stop_on_sigterm():
        try:
            try:
                blocks = launch_app(
                    service, host=args.host, port=args.port, model_name=model_name, block=False, quiet=True
                )
            except OSError as exc:  # the port was taken since the check, ...
                raise CliError(f"cannot serve on {args.host}:{args.port}: {' '.join(str(exc).split())}") from None
            # Said only once the server is up, so that a taken port never prints "Serving" before its error.
            print(f"Serving {model_name} on http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
            blocks.block_thread()
        finally:
            service.close()
    return 0


register_command(
    Command(
        "serve",
        help="serve a web app (Gradio; pip install 'diffsegmenter[app]') to segment uploaded images",
        description="Load the model once and serve a web page and two API endpoints for gradio_client: 'segment' "
        "(an uploaded image into the classes typed in) and 'edit' (replace one class by what a prompt says). "
        "Offline: no analytics, no share link.",
        add_arguments=add_serve_arguments,
        run=cmd_serve,
        model_help="the library's, 'shapes'",
    )
)
