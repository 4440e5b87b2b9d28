"""The ``diffsegmenter serve`` web app (Gradio, the ``[app]`` extra): drop in an image, name classes, see the masks.

One model is loaded once and shared by every visitor under a queue: Gradio runs one ``segment`` request at a time
(concurrency 1) and a lock guards the model as well, so no two requests ever run on it together. Each request is
bounded: uploads above [`MAX_UPLOAD`], images above [`MAX_IMAGE_PIXELS`] and more than [`MAX_CLASSES`] classes are
refused with a message, and a request that runs longer than ``time_limit`` seconds is answered with an error (the
model finishes that image in the background before the next request starts on it).

Offline by design: Gradio's analytics are switched off, no share link is made, and the theme uses the system's fonts,
so the page loads nothing from outside the server.

Two tabs, each an API endpoint (``gradio_client``): ``segment``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    annotated, areas, label_png = client.predict(
        image=handle_file("scene.png"), classes="circle, square", filter="none", tau=None, api_name="/segment"
    )

``classes`` is comma-separated (empty: the filter picks from the model's own classes), ``filter`` is ``"none"``,
``"diffusion"`` or ``"clip"``, ``tau`` the background score (None: the model's). It returns the annotated image
(a file), ``{class: share of the image's pixels}`` for the classes segmented, and the palette label PNG (a file;
pixel value i = the i-th class of ``areas``, 0 = background); and ``edit`` (segment, then edit; the tab, its
request checks and outputs are :mod:`diffsegmenter.app.edit`)::

    edited_png, mask_png = client.predict(
        image=handle_file("scene.png"), target="circle", prompt="a square", dilate=None, steps=None,
        guidance=None, seed=None, classes="triangle", api_name="/edit"
    )

(``classes``, optional: the other classes in the picture, which the target competes with for pixels.)

Gradio is imported only when the app is built: ``import diffsegmenter`` never needs it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import html
import logging
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FILTERS",
    "MAX_CLASSES",
    "MAX_IMAGE_PIXELS",
    "MAX_UPLOAD",
    "TIME_LIMIT_S",
    "AppError",
    "SegmentService",
    "build_app",
    "launch_app",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
FILTERS: tuple[str, ...] = ("none", "diffusion", "clip")
MAX_UPLOAD = "10mb"
"""Largest accepted upload (Gradio's ``max_file_size``)."""
MAX_IMAGE_PIXELS = 16_000_000
"""Largest accepted image, in pixels (checked before decoding)."""
MAX_CLASSES = 50
"""Most class names one request may give."""
TIME_LIMIT_S = 120.0
"""Default per-request time limit, seconds (``serve --time-limit``)."""
MAX_TIME_LIMIT_S = 86_400.0
"""Longest per-request time limit, seconds (a day; ``inf`` made every request fail with a time-stamp error)."""
CACHE_LIFETIME_S = 3_600
"""Gradio's copies of uploads and outputs older than this are deleted (checked as often)."""
QUEUE_SIZE = 16
"""Requests that may wait in the queue; more are turned away until it shortens."""
KEEP_REQUESTS = 32
"""Output folders of the latest requests kept on disk (older ones are deleted)."""


class AppError(ValueError):
    """A request the app refuses, with a message for the person who sent it (shown as a Gradio error)."""


@dataclasses.dataclass
class Outcome:
    """What one request produced."""

    annotated: Path
    areas: dict[str, float]
    label_png: Path
    rle_json: Path | None
    score_maps: list[tuple[Path, str]]
    legend_html: str
    # shown as a warning: a filter's best guess (no class reached its threshold), and why the whole image is
    # background when tau is the reason
    note: str | None = None


def parse_class_text(text: str | None) -> list[str] | None:
    """``"cat, sofa"`` -> ``["cat", "sofa"]``; empty -> None (the filter's / the model's choice)."""
    from ..classes import check_class_names

    stripped = (text or "").strip()
    if stripped and stripped[0] in "[(" and stripped[-1] in "])":
        # what a client's Python list becomes in a Gradio Textbox: "['circle', 'square']"
        raise AppError(f"give the classes as one comma-separated text, e.g. 'circle, square', not {stripped!r}")
    names = [part for part in stripped.split(",") if part.strip()]
    if not names:
        return None
    if len(names) > MAX_CLASSES:
        raise AppError(f"{len(names)} classes given; at most {MAX_CLASSES} per request")
    try:
        return check_class_names(names, example="classes 'circle, square'")
    except (TypeError, ValueError) as exc:
        raise AppError(str(exc)) from None


def legend_html(classes: Sequence[str], colors: np.ndarray, areas: dict[str, float]) -> str:
    """The legend as HTML: one swatch, name and area share per class found (``id="legend"``)."""
    from ..io.palette import hex_color

    rows = [
        f'<li data-class="{html.escape(name)}"><span style="display:inline-block;width:1em;height:1em;'
        f'background:{hex_color(colors[i])};border:1px solid #000;vertical-align:middle;margin-right:.4em"></span>'
        f"{html.escape(name)} ({100 * areas[name]:.1f} %)</li>"
        for i, name in enumerate(classes, start=1)
        if areas.get(name, 0.0) > 0
    ]
    body = "".join(rows) or "<li>no class found</li>"
    return f'<ul id="legend-list" style="list-style:none;padding:0;margin:0">{body}</ul>'


class SegmentService:
    """One segmenter behind a lock and a one-worker thread, with the request checks and output writing.

    Args:
        segmenter: a loaded `DiffSegmenter` (shared by every request).
        time_limit (`float`): seconds a request may take (waiting for the model included).
        work_dir (`str | Path`, *optional*): where outputs are written (one sub-folder per request); a temporary
            folder by default.
        clip_filter (*optional*): the loaded CLIP filter (``build_filter("clip", ...)``, ``serve --clip``); without
            it the app offers no ``"clip"`` filter (loading CLIP and BLIP inside a request, or failing there with
            advice only the operator can follow, is not a visitor's business).
    """

    def __init__(
        self,
        segmenter: Any,
        time_limit: float = TIME_LIMIT_S,
        work_dir: str | os.PathLike | None = None,
        clip_filter: Any = None,
    ):
        if not time_limit or not 0 < time_limit <= MAX_TIME_LIMIT_S:
            raise ValueError(f"time_limit must be a number of seconds in (0, {MAX_TIME_LIMIT_S:g}], got {time_limit}")
        self.segmenter = segmenter
        self.clip_filter = clip_filter
        self.time_limit = float(time_limit)
        self.lock = threading.Lock()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffsegmenter-model")
        self._pending = 0  # jobs submitted to the model thread and not finished (queued or running)
        self._pending_lock = threading.Lock()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="diffsegmenter-serve-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._recent: deque[Path] = deque()
        self._count = 0

    @property
    def default_tau(self) -> float:
        """The model's background score (``SegmenterConfig.tau``): the app's starting value."""
        return float(self.segmenter.config.tau)

    @property
    def default_refine(self) -> bool:
        """Whether the model refines its maps with PAMR (``SegmenterConfig.refine == "pamr"``): the app's starting
        value of its refine switch (off unless ``serve --set refine=pamr``)."""
        return self.segmenter.config.refine == "pamr"

    @property
    def filters(self) -> tuple[str, ...]:
        """The filters this server offers: ``none``, ``diffusion``, and ``clip`` when it was given a CLIP filter."""
        return FILTERS if self.clip_filter is not None else tuple(f for f in FILTERS if f != "clip")

    @property
    def default_filter(self) -> str:
        """``"diffusion"`` when the model recommends its diffusion filter (the shipped shapes model does), else none."""
        from ..settings import ModelSettings

        settings = ModelSettings.coerce(getattr(self.segmenter, "model_settings", None))
        return "diffusion" if settings.diffusion_filter is not None else "none"

    def request_dir(self) -> Path:
        """A new folder for one request's outputs (only the latest ``KEEP_REQUESTS`` are kept)."""
        self._count += 1
        folder = Path(tempfile.mkdtemp(prefix=f"r{self._count:06d}-", dir=self.work_dir))
        self._recent.append(folder)
        while len(self._recent) > KEEP_REQUESTS:
            shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        return folder

    def check_request(self, image: Any, classes: str | None, filter: str | None, tau: Any, refine: Any = None):
        """The request's values, checked: ``(path, class list or None, filter name or None, tau or None, refine or
        None)``; ``refine`` comes as a bool (the switch) or ``"none"``/``"pamr"``, None = the model's."""
        from ..config import check_refine, check_tau

        path = image_path(image)
        flt = (filter or "none").strip().lower()
        if flt == "clip" and flt not in self.filters:
            raise AppError(
                "the clip filter is not available on this server (its operator starts it with serve --clip); choose "
                f"one of {', '.join(self.filters)}"
            )
        if flt not in self.filters:
            raise AppError(f"unknown filter {filter!r}: choose one of {', '.join(self.filters)}")
        names = parse_class_text(classes)
        if names is None and not getattr(self.segmenter, "default_classes", None):
            raise AppError("this model has no classes of its own: type class names, e.g. 'cat, sofa'")
        if tau is not None and tau != "":
            try:
                tau = check_tau(float(tau))
            except (TypeError, ValueError) as exc:
                raise AppError(f"tau: {exc}") from None
        else:
            tau = None
        if isinstance(refine, bool):
            refine = "pamr" if refine else "none"
        elif refine is not None and refine != "":
            try:
                refine = check_refine(str(refine).strip().lower())
            except ValueError as exc:
                raise AppError(str(exc)) from None
        else:
            refine = None
        chosen = {"none": None, "clip": self.clip_filter}.get(flt, flt)
        return path, names, chosen, tau, refine

    def load(self, path: Path) -> np.ndarray:
        """The uploaded image as (H, W, 3) uint8 RGB; an AppError when it cannot be used."""
        from PIL import Image as PILImage

        from ..images import ImageTooLargeError, load_image

        try:
            return load_image(path, max_pixels=MAX_IMAGE_PIXELS)
        except ImageTooLargeError as exc:  # the library's advice (--max-pixels, raise the limit) is the server's
            raise AppError(
                f"this image is {exc.width} x {exc.height} = {exc.width * exc.height / 1e6:.1f} MP; this server takes "
                f"at most {MAX_IMAGE_PIXELS / 1e6:g} MP: downscale it"
            ) from None
        except Exception as exc:  # any unreadable upload is the visitor's problem, told in one line
            if isinstance(exc.__cause__, PILImage.DecompressionBombError):  # far over this server's own limit
                raise AppError(
                    f"this image is over Pillow's limit of {PILImage.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP; this server "
                    f"takes at most {MAX_IMAGE_PIXELS / 1e6:g} MP: downscale it"
                ) from None
            message = " ".join(str(exc).split()) or type(exc).__name__
            message = message.replace(str(path), path.name)  # the server's folders are not the visitor's business
            raise AppError(f"cannot use this image: {message}") from None

    def _segment(
        self, array: np.ndarray, names: list[str] | None, flt: str | None, tau: float | None, refine: str | None
    ):
        with self.lock:
            if names is not None:
                self.segmenter.check_classes(names)
            return self.segmenter.segment(array, classes=names, filter=flt, tau=tau, refine=refine)

    def run(
        self,
        image: Any,
        classes: str | None = None,
        filter: str | None = "none",
        tau: Any = None,
        refine: Any = None,
    ) -> Outcome:
        """Check one request, segment it on the shared model (within the time limit) and write its outputs."""
        path, names, flt, tau, refine = self.check_request(image, classes, filter, tau, refine)
        array = self.load(path)
        result = self.call(
            self._segment, array, names, flt, tau, refine, hint="try fewer classes, a smaller image or no filter"
        )
        return self.write_outputs(array, result)

    def call(self, work, *args, hint: str) -> Any:
        """``work(*args)`` on the model's worker thread within the time limit (``work`` takes :attr:`lock` itself);
        its ValueError, TypeError, OSError and ImportError become AppErrors, a time-out one that ends with ``hint``
        (what to ask for instead). A request that runs out of time is taken off the model thread's queue if it has
        not started, so the model never works on an answer nobody waits for (one that has started runs to its end:
        a model pass cannot be interrupted)."""
        with self._pending_lock:
            waited = self._pending > 0  # the model still has an earlier request (one that ran past the limit)
            self._pending += 1

        def job():
            try:
                return work(*args)
            finally:
                self._finished()  # before the caller wakes: a result seen means the count is down

        future = self.executor.submit(job)
        try:
            return future.result(timeout=self.time_limit)
        except concurrent.futures.TimeoutError:
            if future.cancel():  # not started yet: it never will
                self._finished()
            if waited:
                raise AppError(
                    f"the server was still busy with an earlier request for the whole limit of {self.time_limit:g} s;"
                    " try again in a moment"
                ) from None
            raise AppError(
                f"this request took longer than the server's limit of {self.time_limit:g} s; {hint}"
            ) from None
        except (ValueError, TypeError, OSError, ImportError) as exc:
            raise AppError(" ".join(str(exc).split()) or type(exc).__name__) from None

    def _finished(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def write_outputs(self, image_rgb: np.ndarray, result: Any) -> Outcome:
        """The annotated image, label PNG, COCO RLE JSON and score-map pictures of one result, in a new folder."""
        from PIL import Image

        from ..io.formats.label_png import save_label_png
        from ..io.formats.overlay import render_overlay, upscale_factor
        from ..io.palette import colorize_scores, name_colors

        folder = self.request_dir()
        classes = list(result.classes)
        labels = np.asarray(result.labels)
        total = max(1, labels.size)
        areas = {name: round(float(np.count_nonzero(labels == i)) / total, 6) for i, name in enumerate(classes, 1)}
        annotated = folder / "annotated.png"
        render_overlay(image_rgb, labels, classes).save(annotated)
        label_png = save_label_png(folder / "labels.png", labels)
        rle_json = None
        try:
            from ..io.formats.rle import encode_rle_records, save_rle_json

            rle_json = save_rle_json(
                folder / "labels.rle.json", encode_rle_records(labels, result.scores, classes), labels.shape
            )
        except ImportError:
            logger.info("pycocotools is not installed: no COCO RLE download (pip install 'diffsegmenter[rle]')")
        scale = upscale_factor(*labels.shape)
        maps = []
        for index, name in enumerate(classes):
            picture = colorize_scores(result.scores[index])
            if scale > 1:
                picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
            target = folder / f"score_{index + 1:02d}.png"
            Image.fromarray(picture, mode="RGB").save(target)
            maps.append((target, name))
        legend = legend_html(classes, name_colors(classes), areas)
        guess = (
            f"No class reached the filter's threshold: {', '.join(classes)} is only its best guess, and may be absent."
            if getattr(result, "filter_best_guess", False)
            else None
        )
        note = " ".join(n for n in (guess, result.background_note()) if n) or None
        return Outcome(annotated, areas, label_png, rle_json, maps, legend, note)

    def close(self) -> None:
        """Stop the worker thread and delete the outputs."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def as_text(message: str) -> str:
    """A message for a Gradio toast, which renders HTML: a class name is the visitor's text, so a ``<`` in it must
    not open a tag (an ``<img src=...>`` made the page fetch it). Only ``<`` is escaped, so API clients, which get
    the same text, read everything else as written."""
    return message.replace("<", "&lt;")


def image_path(image: Any) -> Path:
    """The uploaded image's file (Gradio gives a path, or a dict with one); an AppError when there is none."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise AppError("no image: upload an image (PNG, JPEG, ...) or pick an example")
    path = Path(image["path"] if isinstance(image, dict) else image)
    if not path.is_file():
        raise AppError("the uploaded image could not be found on the server; upload it again")
    return path


def upload_image(gr: Any, **kwargs: Any) -> Any:
    """A ``gr.Image`` input that hands the handler the uploaded file as it is (its path).

    With its default ``image_mode="RGB"``, ``gr.Image(type="filepath")`` converts every upload of another mode to
    RGB and saves it again: 16-bit and float images became white, CMYK and grey JPEGs were re-compressed (so the Edit
    tab's unchanged pixels were not the user's), and a huge image was decoded before the app's size check.
    ``image_mode=None`` passes the file on; :meth:`SegmentService.load` (the library's ``load_image``) reads it, as
    ``segment`` would. The instance's ``preprocess`` also skips Gradio's ``PIL.Image.open`` of the file, which
    refused a file that is not an image with a message naming the server's temp folder (a subclass would do the
    same, but Gradio writes a ``.pyi`` stub beside the module of every component class).
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        # Gradio's preprocess opens the file with Pillow even for a file path; a file that is not an image (or is
        # over Pillow's bomb limit) failed there with Gradio's message, which names the server's temp path.
        # Uploaded files pass on as they are (load() reads them); a base64 data URL still goes through Gradio.
        if payload is None or getattr(payload, "path", None) is None or str(payload.url or "").startswith("data:"):
            return original(payload)
        return str(payload.path)

    component.preprocess = preprocess  # this instance only: a subclass would make Gradio write a .pyi stub
    return component


def example_paths() -> list[str]:
    """The example scenes shipped with the package, as file paths (empty when the installation has none)."""
    from importlib import resources

    folder = resources.files("diffsegmenter").joinpath("examples")
    if not isinstance(folder, Path) and not hasattr(folder, "glob"):
        return []
    try:
        return sorted(str(p) for p in Path(str(folder)).glob("*.png") if not p.name.startswith("."))
    except OSError:
        return []


def _theme(gr: Any) -> Any:
    # System fonts only: Gradio's default fonts are local files, but a theme with a GoogleFont would call Google.
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def build_app(service: SegmentService, model_name: str = "the model") -> Any:
    """The Gradio Blocks of the app around a [`SegmentService`] (not launched; see [`launch_app`]).

    Returns:
        `gradio.Blocks`: a Segment and an Edit tab, with the ``segment`` and ``edit`` API endpoints (one model queue,
        ``concurrency_id="model"``, for both).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .._optional import require

    gr = require("gradio", extra="app", feature="diffsegmenter serve")

    def segment(
        image: str, classes: str = "", filter: str = "none", tau: float | None = None, refine: bool | None = None
    ):
        """Segment an image into the named classes.

        Args:
            image: the image file.
            classes: comma-separated class names; empty = the filter's choice among the model's own classes.
            filter: "none" (keep every class given), "diffusion" or "clip" (keep the classes found present).
            tau: background score in [0, 1]; empty = the model's.
            refine: refine the score maps with the image's colours (PAMR; not in the paper); empty = the model's.
        """
        try:
            outcome = service.run(image, classes, filter, tau, refine)
        except AppError as exc:
            raise gr.Error(as_text(str(exc)), print_exception=False) from None
        if outcome.note:
            gr.Warning(as_text(outcome.note))
        return str(outcome.annotated), outcome.areas, str(outcome.label_png), outcome

    def details(outcome: Outcome | None):
        if outcome is None:
            return "", [], None
        rle = str(outcome.rle_json) if outcome.rle_json else None
        return outcome.legend_html, [(str(p), name) for p, name in outcome.score_maps], rle

    from .edit import build_edit_tab

    vocabulary = ", ".join(getattr(service.segmenter, "default_classes", None) or [])
    shipped = example_paths()
    with gr.Blocks(
        title="diffsegmenter", analytics_enabled=False, delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S)
    ) as blocks:
        gr.Markdown(
            f"## diffsegmenter: training-free open-vocabulary segmentation\n"
            f"Model: `{model_name}`" + (f" (its classes: {vocabulary})" if vocabulary else "") + ". **Segment**: "
            "upload an image or pick an example, name the classes (comma-separated), or leave them empty and let a "
            "filter pick among the model's classes. **Edit**: name one class and say what should replace it; only "
            "its mask is regenerated, every other pixel comes back exactly."
        )
        with gr.Tabs():
            with gr.Tab("Segment", id="segment-tab"), gr.Row():
                with gr.Column():
                    image = upload_image(gr, label="Image", sources=["upload", "clipboard"], elem_id="image")
                    classes = gr.Textbox(
                        label="Classes (comma-separated)",
                        placeholder=f"e.g. {vocabulary}" if vocabulary else "e.g. cat, sofa, plant",
                        elem_id="classes",
                    )
                    with gr.Row():
                        flt = gr.Radio(
                            list(service.filters),
                            value=service.default_filter,
                            label="Filter: keep the classes found present (the likeliest one always stays)",
                            elem_id="filter",
                        )
                        tau = gr.Number(
                            value=service.default_tau,
                            label=f"tau: background score (the model's: {service.default_tau:g})",
                            minimum=0.0,
                            maximum=1.0,
                            step=0.05,
                            elem_id="tau",
                        )
                    refine = gr.Checkbox(
                        value=service.default_refine,
                        label="Refine edges with the image's colours (PAMR; not in the paper, a little slower)",
                        elem_id="refine",
                    )
                    button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                    if shipped:
                        gr.Examples(examples=[[p] for p in shipped], inputs=[image], label="Shipped example scenes")
                with gr.Column():
                    annotated = gr.Image(type="filepath", label="Annotated image", format="png", elem_id="annotated")
                    legend = gr.HTML(label="Legend", elem_id="legend")
                    areas = gr.JSON(label="Area share per class", elem_id="areas")
                    with gr.Row():
                        label_file = gr.File(
                            label="Label PNG (pixel i = class i, 0 = background)", elem_id="label-png"
                        )
                        rle_file = gr.File(label="COCO RLE JSON", elem_id="rle-json")
                    maps = gr.Gallery(label="Score map per class (dark = 0, yellow = 1)", columns=4, elem_id="maps")
            with gr.Tab("Edit", id="edit-tab"):
                build_edit_tab(gr, service, shipped, vocabulary)
        state = gr.State(None)
        button.click(
            segment,
            inputs=[image, classes, flt, tau, refine],
            outputs=[annotated, areas, label_file, state],
            api_name="segment",
            concurrency_limit=1,
            concurrency_id="model",
        ).then(  # not queued: a full queue must not cost a finished request its legend, maps and RLE file
            details, inputs=[state], outputs=[legend, maps, rle_file], api_visibility="private", queue=False
        )
    return blocks


def launch_app(
    service: SegmentService,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    model_name: str = "the model",
    block: bool = True,
    quiet: bool = False,
) -> Any:
    """Build and start the app on ``http://host:port`` (never a share link); returns the running Blocks.

    Args:
        block (`bool`, defaults to True): serve until interrupted; False returns at once (tests), then call
            ``.close()`` on the result.
    """
    blocks = build_app(service, model_name=model_name)
    blocks.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    shipped = example_paths()
    blocks.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(Path(shipped[0]).parent)] if shipped else None,
        footer_links=[],
        quiet=quiet,
        show_error=True,
        ssr_mode=False,
        theme=_theme(require_gradio()),
    )
    return blocks


def require_gradio() -> Any:
    """The gradio module, or an ImportError naming the ``[app]`` extra."""
    from .._optional import require

    return require("gradio", extra="app", feature="diffsegmenter serve")
