"""The web app's Edit tab (``diffsegmenter serve``): segment a class, then regenerate only its mask from a prompt.

The tab calls :meth:`DiffSegmenter.edit <diffsegmenter.DiffSegmenter.edit>` on the app's one shared model, through
the same :class:`~diffsegmenter.app.SegmentService` as the Segment tab (its lock, worker thread, time limit and
output folders), so the two tabs never run on the model together. Its API endpoint is ``edit`` (see
:mod:`diffsegmenter.app`). The page's number fields start at the library's
:class:`~diffsegmenter.editing.EditSettings` defaults and the model's seed; through the API a None (or empty) field is
not passed on, so those defaults hold. Each request is bounded (:data:`MAX_EDIT_STEPS`, :data:`MAX_EDIT_DILATE`) and a
bad value is refused with a message saying what to type instead.

Gradio is imported only by :func:`build_edit_tab`'s caller (``app.build_app``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import find_class
from ..config import MAX_SEED as CONFIG_MAX_SEED
from . import AppError, SegmentService, as_text, image_path, parse_class_text, upload_image

__all__ = [
    "MAX_EDIT_DILATE",
    "MAX_EDIT_STEPS",
    "MAX_SEED",
    "EditOutcome",
    "build_edit_tab",
    "check_edit_request",
    "competing_classes",
    "run_edit",
]

MAX_EDIT_STEPS = 100
"""Most denoising steps one edit request may ask for."""
MAX_EDIT_DILATE = 64
"""Largest mask dilation, in pixels, one edit request may ask for."""
MAX_SEED = CONFIG_MAX_SEED
"""Largest seed an edit request may give: the library's (:data:`diffsegmenter.config.MAX_SEED`)."""


@dataclasses.dataclass
class EditOutcome:
    """What one edit request produced.

    Attributes:
        image (`Path`): the edited image, an RGB PNG at the input's size.
        mask (`Path`): the paste-back weight as a grey PNG (0 = the input's pixel, exactly; 255 = regenerated).
        changed (`bool`): False when no pixel was labelled the target (the image came back unchanged).
        note (`str`, *optional*): when unchanged, why (shown to the visitor as a warning).
    """

    image: Path
    mask: Path
    changed: bool
    note: str | None = None


def _whole_number(name: str, value: Any) -> int | None:
    """A form's whole-number field: None when left empty; an AppError naming the field when not a whole number."""
    if value is None or value == "":
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # exactly as given: through float, 2**53 + 1 became 2**53
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer():
        raise AppError(f"{name} must be a whole number, got {value!r}")
    if abs(number) > 2**53:  # a float this large no longer holds every whole number
        raise AppError(f"{name} {value!r} is too large to be read exactly; give it as a whole number (digits only)")
    return int(number)


def check_edit_request(
    image: Any, target: str | None, prompt: str | None, dilate: Any, steps: Any, guidance: Any, seed: Any
) -> tuple[Path, str, str, dict[str, Any], int | None]:
    """An edit request's values, checked before the model runs.

    Returns:
        `tuple`: ``(image path, target class, prompt, the EditSettings fields given, seed or None)``.

    Raises:
        AppError: no image, no or several targets, a bad class name, no prompt, a setting out of range; the message
            says what to type instead.
    """
    from ..classes import check_class_names
    from ..editing import EditSettings

    path = image_path(image)
    names = [part for part in (target or "").split(",") if part.strip()]
    if not names:
        raise AppError("no target: type the class to replace, e.g. 'circle'")
    if len(names) > 1:
        raise AppError(
            f"one target class per edit, got {len(names)} ({target!r}): keep one, e.g. {names[0].strip()!r}"
        )
    try:
        target = check_class_names(names, example="target 'circle'")[0]
    except (TypeError, ValueError) as exc:
        raise AppError(str(exc)) from None
    if not isinstance(prompt, str) or not prompt.strip():
        raise AppError(f"no prompt: say what to put where {target!r} is, e.g. 'a square'")
    fields: dict[str, Any] = {}
    for name, value, high in (("dilate", dilate, MAX_EDIT_DILATE), ("steps", steps, MAX_EDIT_STEPS)):
        number = _whole_number(name, value)
        if number is not None and number > high:
            raise AppError(f"{name} is {number}; at most {high} per request")
        if number is not None:
            fields[name] = number
    if guidance is not None and guidance != "":
        try:
            fields["guidance"] = float(guidance)
        except (TypeError, ValueError):
            raise AppError(f"guidance must be a number >= 0 (1 = no guidance), got {guidance!r}") from None
    try:
        EditSettings(**fields)  # the library's own range checks and messages
    except (TypeError, ValueError) as exc:
        raise AppError(str(exc)) from None
    seed = _whole_number("seed", seed)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise AppError(f"seed must be a whole number from 0 to {MAX_SEED} (2**63 - 2), got {seed}")
    return path, target, " ".join(prompt.split()), fields, seed


def competing_classes(target: str, others: str | None) -> list[str] | None:
    """The classes the target is segmented against: the target and the ``others`` typed (comma-separated), or None
    (the library's choice: the model's own classes when they hold the target, else the target alone)."""
    names = parse_class_text(others)
    if names is None:
        return None
    return [target, *(n for n in names if find_class(n, [target]) is None)]


def run_edit(
    service: SegmentService,
    image: Any,
    target: str | None,
    prompt: str | None,
    dilate: Any = None,
    steps: Any = None,
    guidance: Any = None,
    seed: Any = None,
    classes: str | None = None,
) -> EditOutcome:
    """Check one edit request, run :meth:`DiffSegmenter.edit <diffsegmenter.DiffSegmenter.edit>` on the service's
    shared model (within its time limit) and write the edited image and its mask in a new request folder.

    ``classes``: the other classes in the picture (comma-separated), which the target competes with for pixels; a
    target that is not in the picture then loses them instead of taking some (see :func:`competing_classes`).
    """
    path, target, prompt, fields, seed = check_edit_request(image, target, prompt, dilate, steps, guidance, seed)
    names = competing_classes(target, classes)
    array = service.load(path)

    def work():
        with service.lock:
            service.segmenter.check_classes(names or [target])
            return service.segmenter.edit(array, target, prompt, classes=names, seed=seed, progress=False, **fields)

    result = service.call(work, hint="try fewer steps or a smaller image")
    return write_edit_outputs(service.request_dir(), result)


def write_edit_outputs(folder: Path, result: Any) -> EditOutcome:
    """``edited.png`` and ``mask.png`` (the paste-back weight x 255, rounded) of one
    :class:`~diffsegmenter.editing.EditResult` in ``folder``."""
    from PIL import Image

    image, mask = Path(folder) / "edited.png", Path(folder) / "mask.png"
    Image.fromarray(np.asarray(result.image, dtype=np.uint8), mode="RGB").save(image)
    weight = np.clip(np.rint(np.asarray(result.mask, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(weight, mode="L").save(mask)
    note = None
    if not result.edited:
        seg = result.segmentation
        peak = float(np.max(seg.scores)) if np.size(seg.scores) else 0.0
        note = f"no pixel was labelled {result.target!r}, so the image is unchanged: " + (
            f"every class's score is at most this model's tau={seg.tau:g} (the highest is {peak:.3g}); the server's "
            "settings need a lower tau"
            if seg.background_note()
            else "check the class name"
        )
    return EditOutcome(image, mask, bool(result.edited), note)


def build_edit_tab(gr: Any, service: SegmentService, examples: list[str], vocabulary: str) -> None:
    """The Edit tab's components and its ``edit`` event, built inside the caller's ``gr.Tab`` context.

    Args:
        gr: the gradio module.
        service (`SegmentService`): the app's model service.
        examples (`list[str]`): image paths offered as examples.
        vocabulary (`str`): the model's own classes, comma-separated ("" when it has none), for the placeholder.
    """
    from ..editing import EditSettings

    defaults = EditSettings()
    model_seed = int(service.segmenter.config.seed)

    def edit(
        image: str,
        target: str = "",
        prompt: str = "",
        dilate: float | None = None,
        steps: float | None = None,
        guidance: float | None = None,
        seed: float | None = None,
        classes: str | None = None,
    ):
        """Replace a class by what a prompt says: segment it, then regenerate only its (dilated) mask.

        Args:
            image: the image file.
            target: the class to replace, e.g. "circle".
            prompt: what to put there, e.g. "a square".
            dilate: pixels the mask grows by; None = the library's default.
            steps: denoising steps; None = the library's default.
            guidance: classifier-free guidance scale (1 = none); None = the library's default.
            seed: noise seed; None = the model's.
            classes: the other classes in the picture, comma-separated, that the target competes with for pixels;
                empty = the model's own classes (or the target alone).
        """
        try:
            outcome = run_edit(service, image, target, prompt, dilate, steps, guidance, seed, classes)
        except AppError as exc:
            raise gr.Error(as_text(str(exc)), print_exception=False) from None
        if outcome.note:
            gr.Warning(as_text(outcome.note))
        return str(outcome.image), str(outcome.mask)

    # the numbers start at the library's defaults (EditSettings, the model's seed; a Gradio Number cannot be left
    # empty in the page, though the API takes None); no minimum / maximum / precision: Gradio would clamp, round or
    # refuse with its own words, the checks above refuse with ours (what is allowed and what to type)
    with gr.Row():
        with gr.Column():
            image = upload_image(gr, label="Image", sources=["upload", "clipboard"], elem_id="edit-image")
            with gr.Row():
                target = gr.Textbox(
                    label="Target: the class to replace",
                    placeholder=f"e.g. {vocabulary.split(', ')[0]}" if vocabulary else "e.g. cat",
                    elem_id="edit-target",
                )
                prompt = gr.Textbox(
                    label="Prompt: what to put there", placeholder="e.g. a square", elem_id="edit-prompt"
                )
            others = gr.Textbox(
                label="Other classes in the picture (comma-separated; empty = the model's own)",
                info="the target competes with them for pixels, so a target that is not there takes none of theirs",
                placeholder=f"e.g. {vocabulary}" if vocabulary else "e.g. sofa, plant",
                elem_id="edit-classes",
            )
            with gr.Row():
                dilate = gr.Number(value=defaults.dilate, label="Dilation, px", elem_id="edit-dilate")
                steps = gr.Number(value=defaults.steps, label="Steps", elem_id="edit-steps")
                guidance = gr.Number(value=defaults.guidance, label="Guidance (1 = none)", elem_id="edit-guidance")
                seed = gr.Number(value=model_seed, label="Seed", elem_id="edit-seed")
            button = gr.Button("Edit", variant="primary", elem_id="edit-button")
            if examples:
                gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Shipped example scenes")
        with gr.Column():
            edited = gr.Image(type="filepath", label="Edited image", format="png", elem_id="edited")
            mask = gr.Image(
                type="filepath",
                label="Mask (white = regenerated; black = the input's pixels, exactly)",
                format="png",
                elem_id="edit-mask",
            )
    button.click(
        edit,
        inputs=[image, target, prompt, dilate, steps, guidance, seed, others],
        outputs=[edited, mask],
        api_name="edit",
        concurrency_limit=1,
        concurrency_id="model",
    )
