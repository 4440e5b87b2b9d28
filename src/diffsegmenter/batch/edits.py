"""Image files -> segment a class and regenerate its region -> edited PNGs: the task of ``edit`` on folders.

Each input ``<folder>/<sub>/<name>`` gets ``<out>/<sub>/<stem>.png`` (the edit), ``<stem>.mask.png`` with
``save_mask`` (the paste-back weight, 0..255) and ``<stem>.json``, written last: the sidecar that makes the image
*done*. It records the input (``source``), the run's settings (``request``), the files (``edit``, ``mask``), and what
the edit did (``edited``: whether the target was found; ``seed`` of the kept candidate; ``candidate_scores``). Its
``files`` lists only the mask: the files a later ``segment`` of this folder leaves out of its inputs
(:func:`~diffsegmenter.io.results.earlier_outputs`), so that a folder of edits can be segmented. A rerun of the same
command skips done images; a rerun with other settings is refused before the model loads
([`check_edit_request`]), because its edits would replace these under the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.paths import ImageJob
from .runner import BatchTask, check_earlier_requests, normalise_fingerprint, same_request

__all__ = [
    "EditTask",
    "check_edit_request",
    "edit_files",
    "edit_path",
    "mask_path",
    "save_image_png",
    "write_edit",
]


def edit_path(job: ImageJob) -> Path:
    """Where a job's edited image goes: ``<out_dir>/<stem>.png``."""
    return job.out_dir / f"{job.stem}.png"


def mask_path(edit: Path) -> Path:
    """The mask written beside an edited image: ``x.png`` -> ``x.mask.png``."""
    return edit.with_name(edit.stem + ".mask.png")


def edit_files(job: ImageJob, save_mask: bool) -> list[str]:
    """The names, relative to ``job.out_dir``, of what an edit writes besides its sidecar: ``<stem>.png`` and, with
    `save_mask`, ``<stem>.mask.png``."""
    edit = edit_path(job)
    return [edit.name, *([mask_path(edit).name] if save_mask else [])]


def write_edit(edit: Path, result: Any, save_mask: bool) -> None:
    """Write an :class:`~diffsegmenter.editing.EditResult`'s image at ``edit`` and, with `save_mask`, its paste-back
    weight (0..255) at :func:`mask_path` (an image whose target was not found is written unchanged: ``edit_images``
    has warned, and the command lists them)."""
    save_image_png(edit, result.image)
    if save_mask:
        save_image_png(mask_path(edit), np.rint(result.mask * 255).astype(np.uint8))


def _sidecar(job: ImageJob) -> Path:
    return job.out_dir / f"{job.stem}.json"


def _own_sidecar(job: ImageJob) -> dict[str, Any] | None:
    """The job's earlier sidecar when it records this job's input (its name and content), else None."""
    from ..io.sidecar import load_own_sidecar

    return load_own_sidecar(_sidecar(job), job.path)


def check_edit_request(jobs: Sequence[ImageJob], request: dict[str, Any]) -> None:
    """Refuse, before any model loads, a run whose edits would replace edits made with other settings.

    A job's earlier sidecar counts when it records this job's input (by file name) and a ``request``; one that
    records another request means this run would write its edit under the same name.

    Args:
        jobs (`Sequence[ImageJob]`): the run's jobs.
        request (`dict`): JSON-able settings of this run.

    Raises:
        ValueError: naming an image, the settings that changed, and the ways out (another ``--out``, or
            ``--overwrite`` to redo them).
    """
    from ..io.sidecar import sidecar_owner

    check_earlier_requests(
        jobs,
        request,
        lambda job: sidecar_owner(_sidecar(job), job.path),
        done="edited",
        example=edit_path,
        kind="edit",
    )


def save_image_png(path: Path, array: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG through the package's one atomic writer (creating
    the folder)."""
    from PIL import Image

    from ..io.formats.label_png import save_png

    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, Image.fromarray(array))


class EditTask(BatchTask[ImageJob]):
    """Image files -> :func:`~diffsegmenter.editing.edit_images` -> edited PNGs and a sidecar per image.

    Args:
        segmenter: a [`~diffsegmenter.DiffSegmenter`]; images over its ``config.max_image_pixels`` are skipped
            before they are decoded.
        edit_kwargs (`dict`): passed to ``edit_images`` for every image: ``targets``/``prompts`` are given as
            ``target`` and ``prompt`` (one for all), and ``classes``, ``new_classes``, ``tau``, ``settings``,
            ``seed``.
        request (`dict`): JSON-able settings, stored in each sidecar; an image is done only when its sidecar holds
            the same.
        save_mask (`bool`): also write ``<stem>.mask.png``.
    """

    def __init__(self, segmenter: Any, edit_kwargs: dict[str, Any], request: dict[str, Any], save_mask: bool) -> None:
        self.segmenter = segmenter
        self.edit_kwargs = dict(edit_kwargs)
        self.request = normalise_fingerprint(request)
        self.save_mask = bool(save_mask)
        self.max_pixels = getattr(getattr(segmenter, "config", None), "max_image_pixels", None)

    def is_done(self, job: ImageJob) -> bool:
        sidecar = _own_sidecar(job)
        if not sidecar or not same_request(sidecar.get("request"), self.request):
            return False
        names = edit_files(job, self.save_mask)
        listed = [sidecar.get("edit"), sidecar.get("mask")][: len(names)]
        return listed == names and all((job.out_dir / name).is_file() for name in names)

    def finished_at(self, job: ImageJob) -> float | None:
        try:
            return _sidecar(job).stat().st_mtime  # written after the edit
        except OSError:
            return None

    def load(self, job: ImageJob) -> Any:
        from ..images import load_image

        return load_image(job.path, max_pixels=self.max_pixels)

    def segment(self, jobs: Sequence[ImageJob], inputs: Sequence[Any]) -> list[Any]:
        from ..editing import edit_images

        kwargs = dict(self.edit_kwargs)
        n = len(inputs)
        return edit_images(
            self.segmenter, list(inputs), [kwargs.pop("target")] * n, [kwargs.pop("prompt")] * n, **kwargs
        )

    def write(self, job: ImageJob, item: Any, result: Any) -> bool:
        from ..io.atomic import write_json
        from ..io.sidecar import package_version, source_identity

        files = edit_files(job, self.save_mask)
        write_edit(edit_path(job), result, self.save_mask)
        scores = result.candidate_scores
        write_json(
            _sidecar(job),
            {
                "source": str(job.path),
                **source_identity(job.path),
                "edited": bool(result.edited),
                "seed": int(result.seed),
                "candidate_scores": None if scores is None else [float(s) for s in scores],
                "edit": files[0],
                "mask": files[1] if self.save_mask else None,
                "files": files[1:],  # left out of a later segment's inputs; the edit is an image to segment
                "request": self.request,
                "diffsegmenter_version": package_version(),
            },
        )
        return bool(result.edited)
