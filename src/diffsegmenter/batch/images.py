"""Image files -> a segmenter -> result files: the task of ``segment`` and ``demo``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..classes import check_class_names
from ..io.paths import OVERWRITE_RECORD, ImageJob
from .runner import (
    BatchReport,
    BatchRunner,
    BatchTask,
    check_earlier_requests,
    normalise_fingerprint,
    same_request,
    segmenter_session,
)

__all__ = ["ImageTask", "run_batch"]

logger = logging.getLogger(__name__)


class ImageTask(BatchTask[ImageJob]):
    """Image files -> ``segmenter.segment`` -> [`~diffsegmenter.io.results.write_result`] (``segment``, ``demo``).

    Args:
        segmenter: a [`~diffsegmenter.DiffSegmenter`] (anything with its ``segment`` contract); images over its
            ``config.max_image_pixels`` are skipped before they are decoded.
        formats (`Sequence[str]`): output formats (see [`~diffsegmenter.io.formats.FORMATS`]).
        classes (`Sequence[str]`, *optional*): class names (the vocabulary with a filter); None = the model's own.
        filter (*optional*): passed to ``segment(filter=...)``.
        request (`dict`, *optional*): JSON-able description of the settings (model, classes, config...), stored in
            each sidecar: the per-image fingerprint. An image done with other settings is not done; a run that would
            replace such images is refused up front unless it overwrites ([`check_earlier`]).
        out (`Path`, *optional*): the run's output folder, where run-level files go (``coco_instances.json``...);
            None = no run-level files.
        vocabulary (`Sequence[str]`, *optional*): the run's class list (categories and YOLO ids, in this order);
            None = ``classes``, else ``request["classes"]``.
    """

    def __init__(
        self,
        segmenter: Any,
        formats: Sequence[str],
        classes: Sequence[str] | None = None,
        filter: Any = None,
        request: dict[str, Any] | None = None,
        out: Path | None = None,
        vocabulary: Sequence[str] | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.formats = list(formats)
        self.classes = classes
        self.filter = filter
        self.request = normalise_fingerprint(request or {})
        from ..io.formats import FORMATS

        for name in self.formats:  # an extra that is not installed: said now, not after each image is segmented
            if name in FORMATS:
                FORMATS[name].check_available()
        self.max_pixels = getattr(getattr(segmenter, "config", None), "max_image_pixels", None)
        self.out = None if out is None else Path(out)
        if vocabulary is None:
            vocabulary = classes if classes is not None else (request or {}).get("classes")
        # cleaned as the segmenter cleans a result's classes, so that a raw "Circle " numbers as its "Circle"
        self.vocabulary = None if vocabulary is None else check_class_names(list(vocabulary))

    def sidecar_path(self, job: ImageJob) -> Path:
        """Where the job's sidecar is (written last of its outputs)."""
        from ..io.results import output_paths

        return output_paths(job.out_dir, job.stem, self.formats).sidecar

    def earlier_sidecar(self, job: ImageJob) -> dict[str, Any] | None:
        """The job's earlier sidecar when it records this job's input (its name and content), else None."""
        from ..io.sidecar import load_own_sidecar

        return load_own_sidecar(self.sidecar_path(job), job.path)

    def check_earlier(self, jobs: Sequence[ImageJob]) -> None:
        """Refuse a run that would replace images segmented with other settings (ValueError naming them, each
        changed setting and the ways out); a run that overwrites on purpose skips this."""
        from ..io.sidecar import sidecar_owner

        check_earlier_requests(
            jobs,
            self.request,
            lambda job: sidecar_owner(self.sidecar_path(job), job.path),
            done="segmented",
            example=self.sidecar_path,
            kind="segment",
        )

    def is_done(self, job: ImageJob) -> bool:
        from ..io.results import is_done

        if not is_done(job.out_dir, job.stem, self.formats):
            return False
        sidecar = self.earlier_sidecar(job)
        if sidecar is None:
            logger.info(
                "%s: the outputs under that name are of another image or of this one before it changed; recomputing",
                job.label,
            )
            return False
        if not same_request(sidecar.get("request"), self.request):
            return False
        if "png" in self.formats and self.vocabulary is not None:
            from ..io.formats import run_class_list

            wanted = run_class_list(sidecar.get("classes") or [], self.vocabulary)
            if sidecar.get("png_classes") != wanted:  # an older version numbered each PNG's kept classes only
                logger.info("%s: its label PNG numbers its classes otherwise than this run; recomputing", job.label)
                return False
        return True

    def finished_at(self, job: ImageJob) -> float | None:
        try:
            return self.sidecar_path(job).stat().st_mtime  # the sidecar is written last
        except OSError:
            return None

    def load(self, job: ImageJob) -> Any:
        from ..images import load_image

        return load_image(job.path, max_pixels=self.max_pixels)

    def segment(self, jobs: Sequence[ImageJob], inputs: Sequence[Any]) -> list[Any]:
        return self.segmenter.segment(list(inputs), classes=self.classes, filter=self.filter)

    def session(self):
        return segmenter_session(self.segmenter)

    def write(self, job: ImageJob, item: Any, result: Any) -> list[str]:
        from ..io import results
        from ..io.sidecar import source_identity

        extra = {"source": str(job.path), **source_identity(job.path), "request": self.request}
        results.write_result(
            job.out_dir, job.stem, item, result, self.formats, extra=extra, vocabulary=self.vocabulary
        )
        return [c for i, c in enumerate(result.classes, start=1) if (result.labels == i).any()]

    def run_images(self, jobs: Sequence[ImageJob]) -> list[Any]:
        """The finished images among `jobs` (by [`is_done`]'s rule), in input order, as run-level writers get them."""
        from ..io.formats import RunImage

        images = []
        for job in jobs:
            if job.problem is not None or not self.is_done(job):
                continue
            rel = Path()
            if self.out is not None:
                try:
                    rel = job.out_dir.relative_to(self.out)
                except ValueError:
                    rel = Path()
            file_name = job.name if job.name is not None else (rel / job.path.name).as_posix()
            images.append(RunImage(out_dir=job.out_dir, stem=job.stem, file_name=file_name, source=job.path))
        return images

    def finish(self, jobs: Sequence[ImageJob], report: BatchReport) -> None:
        """Write the run-level files (``coco_instances.json``, ``dataset.yaml``, ``labelstudio_tasks.json``)."""
        from ..io.formats import FORMATS
        from ..io.results import write_run_outputs

        if self.out is None or not any(FORMATS[name].finish is not None for name in self.formats):
            return
        classes = self.vocabulary or []
        images = self.run_images(jobs)
        written = write_run_outputs(self.out, images, self.formats, classes)
        others = _results_of_other_runs(jobs)
        if others:  # the run files list this run's images only: said, as the folder holds more
            logger.warning(
                "%s list(s) the %d finished image(s) of this run; %d other result(s) in the same folder(s) (earlier "
                "runs' inputs, e.g. %s) are not in it: give every input to one run to list them together",
                ", ".join(sorted({p.name for p in written})) or "the run files",
                len(images),
                len(others),
                others[0],
            )

    @staticmethod
    def remove_stale_temp_files(jobs: Sequence[ImageJob]) -> None:
        """Remove what an interrupted run left in the jobs' output folders (each folder tree walked once)."""
        from ..io.atomic import remove_stale_temp_files

        folders = {job.out_dir for job in jobs if job.problem is None}
        for folder in sorted(folders):
            if folder.is_dir() and not any(parent in folders for parent in folder.parents):
                remove_stale_temp_files(folder)


def _results_of_other_runs(jobs: Sequence[ImageJob]) -> list[Path]:
    """Sidecars in the jobs' output folders that record an input of none of the jobs (an earlier run's results)."""
    from ..io.results import sidecars_in

    mine = {(job.out_dir, f"{job.stem}.json") for job in jobs}
    return [
        folder / name
        for folder in sorted({job.out_dir for job in jobs if job.problem is None})
        for name, sidecar in sidecars_in(folder).items()
        if (folder, name) not in mine and "source" in sidecar
    ]


def run_batch(
    segmenter: Any,
    jobs: Sequence[ImageJob],
    *,
    formats: Sequence[str],
    classes: Sequence[str] | None = None,
    filter: Any = None,
    request: dict[str, Any] | None = None,
    overwrite: bool = False,
    images_per_batch: int = 1,
    progress: bool = True,
    out: Path | None = None,
    check_earlier: bool = True,
) -> BatchReport:
    """Segment every image job and write its outputs; never stop for one bad image (an [`ImageTask`] run).

    Jobs with a ``problem`` are reported as skipped with it. A write error (an `OSError` while writing an image's
    outputs: a full disk, a read-only or vanished folder...) stops the run: that image is reported as skipped, the
    rest as not started, and ``report.stopped`` says why; nothing is left half-written, because every file is written
    atomically and the sidecar last. Only a name too long for the file system (or a file too large for it) costs
    just its image.

    Args:
        segmenter, formats, classes, filter, request: see [`ImageTask`].
        jobs (`Sequence[ImageJob]`): from [`~diffsegmenter.io.paths.collect_jobs`].
        overwrite (`bool`, *optional*, defaults to False): recompute images that are already done, and replace those
            done with other settings (else refused, before any image: [`ImageTask.check_earlier`]).
        images_per_batch (`int`, *optional*, defaults to 1): images per ``segment`` call.
        progress (`bool`, *optional*, defaults to True): show a tqdm progress bar (on a terminal).
        out (`Path`, *optional*): the run's output folder, for run-level files (``coco``, ``yolo``, ``labelstudio``).
        check_earlier (`bool`, *optional*, defaults to True): refuse, unless ``overwrite``, to replace images done
            with other settings; False when the caller has checked (the command line, before choosing local or Ray).

    Returns:
        [`BatchReport`].

    Raises:
        ValueError: without ``overwrite``, some images were segmented into their outputs with other settings.
    """
    task = ImageTask(segmenter, formats, classes=classes, filter=filter, request=request, out=out)
    if check_earlier and not overwrite:
        task.check_earlier(jobs)
    task.remove_stale_temp_files(jobs)
    runner = BatchRunner(
        overwrite=overwrite,
        batch_size=images_per_batch,
        progress=None if progress else False,
        overwrite_record=None if out is None else Path(out) / OVERWRITE_RECORD,
    )
    return runner.run(jobs, task)
