"""The one batch runner behind ``segment``, ``demo``, ``eval`` and ``edit``: jobs in, results written, a report out.

A run is a list of jobs and a [`BatchTask`] that says how to handle one: whether it is already done (resume), how to
load its input, how to segment a batch of inputs and how to write a result. [`BatchRunner`] does the rest the same
way for every command:

- resume: a job whose results are complete (and made with the same settings: the *fingerprint*, stored per image in
  its sidecar by ``segment``, or once per output folder in ``run_config.json`` by ``eval``,
  [`check_run_fingerprint`]) is counted as already done;
- failure policy: ``on_error="skip"`` (``segment``, ``demo``) lists a job that cannot be loaded, segmented or
  written with its reason and goes on (a failing batch is retried image by image, so one bad image only costs
  itself), while a write error that concerns the output folder (a full disk...) stops the run cleanly;
  ``on_error="raise"`` (``eval``: a benchmark number must not quietly leave images out) stops at the first error;
- a progress bar, and a [`BatchReport`] that the command turns into ``<out>/skipped.json``, a console list and the
  exit status (0 all done, 1 some skipped, 3 stopped on a write error; 2 is a usage error) with [`finish_report`].

One run at a time per output folder: [`output_lock`] (``segment``, ``demo``; ``eval`` takes none, because its shards
share one ``--out``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from ..io.paths import SKIPPED_FILE
from .prefetch import prefetch

__all__ = [
    "EXIT_OK",
    "EXIT_SKIPPED",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "RUN_CONFIG",
    "BatchReport",
    "BatchRunner",
    "BatchTask",
    "RESULT_NEUTRAL",
    "changed_settings",
    "check_earlier_requests",
    "check_run_fingerprint",
    "read_run_record",
    "finish_report",
    "normalise_fingerprint",
    "print_problems",
    "result_settings",
    "same_request",
    "segmenter_session",
    "write_skipped",
]

logger = logging.getLogger(__name__)

PROG = "diffsegmenter"
EXIT_OK = 0
EXIT_SKIPPED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3

RUN_CONFIG = "run_config.json"
"""The fingerprint of a run whose results carry none of their own (``eval``'s prediction PNGs)."""

JobT = TypeVar("JobT")

# Write errors that concern one image's file names, not the output folder: they skip that image only.
_PER_IMAGE_WRITE_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EFBIG})


# ---------------------------------------------------------------------------------------------------- the report


@dataclasses.dataclass
class BatchReport:
    """What a batch did.

    Attributes:
        total (`int`): jobs in the batch.
        segmented (`list[tuple[job, Any]]`): jobs processed in this run, with what the task's ``write`` returned
            (the classes found, for images; None for an image a Ray actor finished after the run stopped, known
            from its files).
        already_done (`list[job]`): jobs skipped because their results were complete.
        skipped (`list[tuple[job, str]]`): jobs that could not be processed, with the reason.
        stopped (`str`, *optional*): why the run stopped early (a write error such as a full disk); None when it
            went through every job.
        not_started (`int`): jobs left untouched because the run stopped.
    """

    total: int = 0
    segmented: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)
    already_done: list[Any] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Any, str]] = dataclasses.field(default_factory=list)
    stopped: str | None = None
    not_started: int = 0

    def summary(self) -> str:
        """One line: counts of segmented, already done, skipped (and, after a stop, not started) images."""
        text = (
            f"{self.total} image(s): {len(self.segmented)} segmented, {len(self.already_done)} already done, "
            f"{len(self.skipped)} skipped"
        )
        return text + (f", {self.not_started} not started (the run stopped)" if self.stopped else "")

    def exit_status(self) -> int:
        """3 when the run stopped, 1 when some job was skipped, else 0."""
        if self.stopped is not None:
            return EXIT_STOPPED
        return EXIT_SKIPPED if self.skipped else EXIT_OK


def _os_error_text(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}: {exc.filename}" if exc.filename else text


def write_skipped(report: BatchReport, out: Path) -> str | None:
    """Write (or, with nothing skipped, remove) ``<out>/skipped.json``: ``[{"path": ..., "reason": ...}, ...]``.

    Returns:
        `str | None`: why the list could not be written (a full disk...), else None. A list left by an earlier run is
        removed then, so that it cannot mislead.
    """
    from ..io.atomic import write_json

    path = out / SKIPPED_FILE
    try:
        if report.skipped:
            write_json(path, [{"path": job.label, "reason": reason} for job, reason in report.skipped])
        else:
            path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return _os_error_text(exc)
    return None


def print_problems(report: BatchReport, out: Path, report_error: str | None = None) -> None:
    """The skipped jobs with their reasons, and why the run stopped, on stderr."""
    if report.skipped:
        where = f"listed in {out / SKIPPED_FILE}" if report_error is None else "the list could not be saved"
        print(f"Skipped {len(report.skipped)} image(s) ({where}):", file=sys.stderr)
        for job, reason in report.skipped:
            print(f"  {job.label}: {reason}", file=sys.stderr)
    if report_error is not None:
        print(f"{PROG}: could not write {out / SKIPPED_FILE} ({report_error})", file=sys.stderr)
    if report.stopped is not None:
        print(f"{PROG}: the run stopped: {report.stopped}", file=sys.stderr)


def finish_report(report: BatchReport, out: Path, summary: str | None = None) -> int:
    """Write ``skipped.json``, print `summary` (if any) on stdout and the problems on stderr; the exit status."""
    report_error = write_skipped(report, out)
    if summary is not None:
        print(summary)
    print_problems(report, out, report_error)
    return report.exit_status()


# ----------------------------------------------------------------------------------------------- fingerprints


def normalise_fingerprint(payload: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, int dict keys -> str), so that it compares equal."""
    return json.loads(json.dumps(payload, default=str))


def read_run_record(path: Path, results: str = "predictions") -> dict[str, Any]:
    """A run's JSON record (``run_config.json``, ``run_info.json``) as a dict.

    Args:
        path (`Path`): the record.
        results (`str`, defaults to ``"predictions"``): the results' folder beside it, named in the message of a
            damaged ``run_config.json`` (without it, the results' settings are unknown).

    Raises:
        ValueError: the file cannot be read, is not JSON, or holds no JSON object (naming the file and the way out).
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or " ".join(str(exc).split())
    else:
        if isinstance(value, dict):
            return value
        problem = f"it holds a JSON {type(value).__name__}, not an object"
    if path.name == RUN_CONFIG:  # it records the results' settings: without it they are unknown
        way_out = (
            f"delete it together with {path.parent / results} (and scores/, if there) to start over, or use another "
            "output folder"
        )
    else:
        way_out = "delete it (the next run writes it again), or use another output folder"
    raise ValueError(
        f"{path} is not a readable run record ({problem}): it was damaged or written by something else; {way_out}"
    )


def check_run_fingerprint(
    out_dir: Path,
    fingerprint: dict[str, Any],
    *,
    file: str = RUN_CONFIG,
    results: str = "predictions",
    may_replace: bool = True,
    unrecorded_if_none: Sequence[str] = (),
) -> None:
    """Refuse to mix results made with different settings in one output folder; record the settings on first use.

    A setting one side does not record (an older version did not record it, or a newer one dropped it) is not
    compared (:func:`changed_settings`). A fingerprint left by a run that wrote no result (it failed before its first
    image: a wrong flag, a model that would not load) is replaced, so that the corrected command is not refused;
    unless `may_replace` is False: another run that uses the folder now may not have written its first result yet.

    Args:
        out_dir (`Path`): the output folder.
        fingerprint (`dict`): JSON-able settings that decide the results.
        file (`str`, defaults to ``"run_config.json"``): where the fingerprint is kept in `out_dir`.
        results (`str`, defaults to ``"predictions"``): the results' folder in `out_dir`, named in the message.
        may_replace (`bool`, defaults to `True`): no other run uses the folder (the caller holds it exclusively).
        unrecorded_if_none (`Sequence[str]`, *optional*): settings an older version recorded as None when it could
            not tell them (the eval's ``model`` on SD3, FLUX and PixArt): None there is not compared.

    Raises:
        ValueError: the folder holds a different fingerprint (the message lists each changed setting), or its record
            cannot be read.
    """
    from ..io.atomic import write_json

    fingerprint = normalise_fingerprint(fingerprint)
    path = out_dir / file
    if not path.is_file():
        if not may_replace:
            raise ValueError(
                f"another run is using {out_dir} and has not recorded its settings ({path}); wait for it to finish, "
                "or use another output folder"
            )
        write_json(path, fingerprint, ensure_ascii=True, sort_keys=True)
        return
    earlier = read_run_record(path, results)
    earlier = {k: v for k, v in earlier.items() if not (v is None and k in unrecorded_if_none)}
    changed = changed_settings(earlier, fingerprint)
    if not changed:
        return
    details = "; ".join(changed)
    folder = out_dir / results
    if not may_replace:
        raise ValueError(
            f"another run with other settings ({details}) is writing to {out_dir}; runs that share a folder (shards "
            "of one evaluation) must use the same settings: wait for it to finish, or use another output folder"
        )
    if folder.is_dir() and any(folder.iterdir()):
        raise ValueError(
            f"{out_dir} holds {results} made with other settings ({details}). Resuming would mix them: use "
            f"another output folder, or delete {out_dir / results} and {path} to start over."
        )
    logger.info("%s: no %s were made with the settings it records; recording this run's", path, results)
    write_json(path, fingerprint, ensure_ascii=True, sort_keys=True)


#: Settings recorded with results that do not change them: a resume may change these (a smaller batch after running
#: out of memory, a higher pixel limit to let one large image through).
RESULT_NEUTRAL: tuple[str, ...] = ("batch_size", "max_image_pixels")


def result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a ``SegmenterConfig.to_dict()`` or the overrides given) without the :data:`RESULT_NEUTRAL`
    settings: what a results fingerprint records."""
    return {k: v for k, v in config.items() if k not in RESULT_NEUTRAL}


def changed_settings(earlier: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``["key: old -> new", ...]`` for every setting that differs, one level into dict-valued settings
    (``"config.tau: 0.58 -> 0.3"``). A setting one side does not record is not compared (an older version did not
    record it, or a newer one dropped it), as in :func:`check_run_fingerprint`; so two requests match when the list
    is empty."""
    parts = []
    for key in sorted(set(earlier) & set(now)):
        old, new = earlier[key], now[key]
        if old == new or (key == "model" and _same_model(old, new)):
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{key}.{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
        else:
            parts.append(f"{key}: {old!r} -> {new!r}")
    return parts


def _same_model(old: Any, new: Any) -> bool:
    """Two recorded models that name one folder: an older version recorded the text given (``./tiny``), read from
    the folder the run is made in now, against this version's absolute path."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    if old.count("/") == 1 and not old.startswith((".", "/", "~")):  # "org/name" was a hub id, or it was meant as one
        return False
    from ..loading import model_key

    return model_key(old) == model_key(new)


def check_earlier_requests(
    jobs: Sequence[Any],
    request: dict[str, Any],
    owner: Callable[[Any], tuple[dict[str, Any] | None, str | None]],
    *,
    done: str,
    example: Callable[[Any], Path],
    kind: str | None = None,
) -> None:
    """Refuse a run that would replace results made with other settings, or results of another input file written
    under the same name (per-image sidecars record each image's ``source`` and ``request``); called before any image
    is processed, unless the run overwrites on purpose.

    Args:
        jobs (`Sequence`): the run's jobs (those with a ``problem`` are not looked at).
        request (`dict`): JSON-able settings of this run.
        owner (`Callable`): a job's earlier sidecar and whose it is (:func:`~diffsegmenter.io.sidecar.sidecar_owner`):
            ``(sidecar, None)`` when it records this job's input, ``(None, other_source)`` when another's.
        done (`str`): what the earlier run did, for the message (``"segmented"``, ``"edited"``).
        example (`Callable`): a job's main output file, named in the message.
        kind (`str`, *optional*): the command whose results this run writes (``"segment"``, ``"edit"``); an earlier
            sidecar of the other command (:func:`~diffsegmenter.io.sidecar.sidecar_kind`) under the same name is
            refused: their results share names (``x.png``: a label map, an edited image) and compare no setting.

    Raises:
        ValueError: naming how many images, one of them, each setting that changed (or the other input), and the
            ways out (another ``--out``, or ``--overwrite`` to redo them).
    """
    from ..io.sidecar import sidecar_kind

    request = normalise_fingerprint(request)
    clashes: list[tuple[Any, list[str]]] = []
    foreign: list[tuple[Any, str]] = []
    other_kind: list[tuple[Any, str]] = []
    for job in jobs:
        if getattr(job, "problem", None) is not None:
            continue
        sidecar, other = owner(job)
        if other is not None:
            foreign.append((job, other))
            continue
        written_by = sidecar_kind(sidecar) if sidecar else None
        if kind is not None and written_by not in (None, kind):
            other_kind.append((job, written_by))
            continue
        earlier = sidecar.get("request") if sidecar else None
        changed = changed_settings(earlier, request) if isinstance(earlier, dict) else []
        if changed:
            clashes.append((job, changed))
    if foreign:
        job, other = foreign[0]
        raise ValueError(
            f"{len(foreign)} image(s) would replace results {done} earlier from another file under the same name, "
            f"e.g. {example(job)} holds {other!r}'s, not {str(job.path)!r}'s: choose another --out, or pass "
            "--overwrite to replace them"
        )
    if other_kind:
        job, written_by = other_kind[0]
        raise ValueError(
            f"{len(other_kind)} image(s) would replace the results of an earlier `{written_by}` run under the same "
            f"name, e.g. {example(job)}; `{kind}` and `{written_by}` results cannot share a folder: choose another "
            "--out, or pass --overwrite to replace them"
        )
    if not clashes:
        return
    job, changed = clashes[0]
    raise ValueError(
        f"{len(clashes)} image(s) were {done} earlier with other settings ({'; '.join(changed)}), e.g. "
        f"{example(job)}; this run would replace them: choose another --out, or pass --overwrite to redo them with "
        "these settings"
    )


def same_request(earlier: Any, request: dict[str, Any]) -> bool:
    """Whether an image's recorded ``request`` is this run's, by :func:`changed_settings`'s rule (settings one side
    does not record are not compared); ``request`` as :func:`normalise_fingerprint` gives it. An image that recorded
    no setting at all (``{}``, as ``demo`` wrote before it resumed) is not this run's when this run records some."""
    if earlier == {} and request:
        return False
    return isinstance(earlier, dict) and not changed_settings(earlier, request)


# ---------------------------------------------------------------------------------------------------- the runner


class BatchTask(Generic[JobT]):
    """How to handle one kind of job; [`BatchRunner`] calls these. Subclasses implement ``load``, ``segment`` and
    ``write``; the others have defaults.

    ``load_errors`` are the exceptions of ``load`` that skip a job (anything else is a bug and propagates).
    """

    load_errors: tuple[type[BaseException], ...] = (ValueError, OSError)

    def problem(self, job: JobT) -> str | None:
        """Why the job cannot be used, known before any work (it is skipped with this reason), or None."""
        return getattr(job, "problem", None)

    def is_done(self, job: JobT) -> bool:
        """Whether the job's results are complete (and made with this run's settings)."""
        return False

    def finished_at(self, job: JobT) -> float | None:
        """When the job's results were last written (seconds since the epoch), or None when unknown; lets an
        interrupted ``overwrite`` run resume (:attr:`BatchRunner.overwrite_record`)."""
        return None

    def load(self, job: JobT) -> Any:
        """The job's input (an image...)."""
        raise NotImplementedError

    def segment(self, jobs: Sequence[JobT], inputs: Sequence[Any]) -> list[Any]:
        """One result per input, in order."""
        raise NotImplementedError

    def write(self, job: JobT, item: Any, result: Any) -> Any:
        """Write the job's results; the return value is kept in ``BatchReport.segmented``."""
        raise NotImplementedError

    def finish(self, jobs: Sequence[JobT], report: BatchReport) -> None:
        """After the per-job loop (also after a stop): write what gathers every finished job (a run-level file).

        An `OSError` here stops the run like a write error (``report.stopped``); the default does nothing.
        """

    def session(self) -> contextlib.AbstractContextManager:
        """A context around the whole loop (e.g. the segmenter's capture session, :func:`segmenter_session`); the
        default does nothing."""
        return contextlib.nullcontext()


def segmenter_session(segmenter: Any) -> contextlib.AbstractContextManager:
    """``segmenter.session()`` (capturing processors installed once for the run) when it has one, else a context
    that does nothing."""
    session = getattr(segmenter, "session", None)
    return session() if callable(session) else contextlib.nullcontext()


def _reason(exc: BaseException) -> str:
    from ..images import ImageLoadError

    if isinstance(exc, ImageLoadError):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "file not found (removed during the run?)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclasses.dataclass
class BatchRunner:
    """Runs jobs through a [`BatchTask`] with resume, a failure policy, batching and a progress bar.

    Attributes:
        on_error (`"skip"` or `"raise"`, defaults to `"skip"`): skip-and-report a job that fails (and stop cleanly
            on a write error that concerns the output folder), or let the first error propagate.
        overwrite (`bool`, defaults to False): recompute jobs that are already done.
        batch_size (`int`, defaults to 1): inputs per ``task.segment`` call.
        prefetch (`int`, defaults to 1): batches loaded ahead on a background thread while the current one is
            segmented and written (:func:`~diffsegmenter.batch.prefetch.prefetch`); 0 = load each batch when its turn
            comes.
        progress (`bool | None`, defaults to None): show a tqdm bar; None = only on a terminal.
        desc (`str`, *optional*): the bar's label.
        unit (`str`, defaults to ``"image"``): the bar's unit.
        done_note (`str`, *optional*): logged (with the count) when some jobs are already done.
        overwrite_record (`Path`, *optional*): with ``overwrite``, a file recording the pass (its request and start
            time) until it completes: a rerun of the same request after a stop or an interrupt keeps the jobs this
            pass already redid (``task.finished_at`` since the start) instead of starting over; None = every job is
            redone.
    """

    on_error: Literal["skip", "raise"] = "skip"
    overwrite: bool = False
    batch_size: int = 1
    prefetch: int = 1
    progress: bool | None = None
    desc: str | None = None
    unit: str = "image"
    done_note: str | None = "%d image(s) already done; pass --overwrite to recompute them"
    overwrite_record: Path | None = None

    def run(self, jobs: Sequence[Any], task: BatchTask) -> BatchReport:
        """Process every job; returns what was done, already done, skipped and (after a stop) not started."""
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        report = BatchReport(total=len(jobs))
        since = self._overwrite_pass(task)
        pending = self._pending(jobs, task, report, since)
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        disable = None if self.progress is None else not self.progress
        chunks = list(_chunks(pending, max(1, int(self.batch_size))))
        loads = prefetch(chunks, lambda chunk: self._load(chunk, task), depth=max(0, int(self.prefetch)))
        try:
            with (
                logging_redirect_tqdm(),
                tqdm(total=len(pending), desc=self.desc, unit=self.unit, disable=disable) as bar,
                task.session(),
                contextlib.closing(loads),  # stops the loading thread when the run stops early
            ):
                for loaded in loads:
                    self._run_chunk(loaded, task, report, bar)
                    if report.stopped is not None:
                        done_here = {id(job) for job, _ in report.segmented} | {id(job) for job, _ in report.skipped}
                        report.not_started = sum(1 for job in pending if id(job) not in done_here)
                        break
        except KeyboardInterrupt:
            # the run files gather what finished before the interrupt goes on (they were missing until a rerun)
            with contextlib.suppress(Exception):
                self.finish(jobs, task, report)
            raise
        self.finish(jobs, task, report)
        self._end_overwrite_pass(since, report)
        return report

    def _overwrite_pass(self, task: BatchTask) -> float | None:
        """The start of this overwrite pass: the recorded one when :attr:`overwrite_record` holds the same request
        (a rerun after a stop), else now (recorded). None without ``overwrite`` or a record file."""
        if not self.overwrite or self.overwrite_record is None:
            return None
        import time

        from ..io.atomic import write_json
        from ..io.sidecar import package_version

        # the same request of the same version: a package upgrade between the stop and the rerun redoes everything
        pass_of = {"request": normalise_fingerprint(getattr(task, "request", None)), "version": package_version()}
        try:
            record = json.loads(self.overwrite_record.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            record = None
        same = isinstance(record, dict) and {k: record.get(k) for k in pass_of} == pass_of
        if same and isinstance(record.get("since"), float):
            return record["since"]
        since = time.time()
        write_json(self.overwrite_record, {**pass_of, "since": since})
        return since

    def _end_overwrite_pass(self, since: float | None, report: BatchReport) -> None:
        """Forget the overwrite pass that started at ``since`` when the run completed it (a later overwrite redoes
        all); a stopped run keeps its record for the rerun."""
        if since is not None and report.stopped is None and self.overwrite_record is not None:
            self.overwrite_record.unlink(missing_ok=True)

    def finish(self, jobs: Sequence[Any], task: BatchTask, report: BatchReport) -> None:
        """``task.finish`` (the run-level files); a write error there stops the run (skip policy) or raises."""
        try:
            task.finish(jobs, report)
        except (OSError, ValueError, KeyError) as exc:  # a full disk; a per-image part damaged since it was checked
            if self.on_error == "raise":
                raise
            if report.stopped is None:
                text = _os_error_text(exc) if isinstance(exc, OSError) else _reason(exc)
                report.stopped = (
                    f"could not write the run's files ({text}); fix that and rerun the same command: finished images "
                    "are kept"
                )

    def _skip(self, report: BatchReport, job: Any, exc: BaseException | str) -> None:
        """Record a job that cannot be processed (``on_error="raise"``: raise the error instead)."""
        if isinstance(exc, BaseException) and self.on_error == "raise":
            raise exc
        reason = exc if isinstance(exc, str) else _reason(exc)
        report.skipped.append((job, reason))
        label = getattr(job, "label", job)
        logger.warning("skipping %s: %s", label, reason)
        if not isinstance(exc, str):
            logger.debug("traceback for %s", label, exc_info=exc)

    def _pending(
        self, jobs: Sequence[Any], task: BatchTask, report: BatchReport, since: float | None = None
    ) -> list[Any]:
        pending: list[Any] = []
        for job in jobs:
            problem = task.problem(job)
            if problem is not None:
                self._skip(report, job, problem)
            elif not self.overwrite and task.is_done(job):
                report.already_done.append(job)
            elif since is not None and (task.finished_at(job) or 0.0) >= since and task.is_done(job):
                report.already_done.append(job)  # redone by this overwrite pass before it stopped
            else:
                pending.append(job)
        if since is not None and report.already_done:
            logger.info(
                "%d image(s) already redone by this --overwrite run before it stopped", len(report.already_done)
            )
        elif report.already_done and self.done_note:
            logger.info(self.done_note, len(report.already_done))
        return pending

    def _segment(self, task: BatchTask, report: BatchReport, loaded: list[tuple[Any, Any]]) -> list[tuple]:
        """``task.segment`` on a batch; a failing batch is retried job by job (skip policy)."""
        try:
            results = task.segment([job for job, _ in loaded], [item for _, item in loaded])
            return [(job, item, result) for (job, item), result in zip(loaded, results)]
        except Exception as exc:
            if self.on_error == "raise":
                raise
            if len(loaded) == 1:
                self._skip(report, loaded[0][0], exc)
                return []
            logger.info("a batch of %d images failed (%s); retrying them one by one", len(loaded), exc)
            return [out for pair in loaded for out in self._segment(task, report, [pair])]

    @staticmethod
    def _load(chunk: Sequence[Any], task: BatchTask) -> list[tuple[Any, Any, BaseException | None]]:
        """(job, input, None) or (job, None, the load error) per job; runs on the prefetch thread."""
        out: list[tuple[Any, Any, BaseException | None]] = []
        for job in chunk:
            try:
                out.append((job, task.load(job), None))
            except task.load_errors as exc:
                out.append((job, None, exc))
        return out

    def _run_chunk(
        self, chunk: list[tuple[Any, Any, BaseException | None]], task: BatchTask, report: BatchReport, bar: Any
    ) -> None:
        loaded: list[tuple[Any, Any]] = []
        for job, item, error in chunk:
            if error is not None:
                self._skip(report, job, error)
                bar.update(1)
            else:
                loaded.append((job, item))
        for job, item, result in self._segment(task, report, loaded) if loaded else []:
            try:
                found = task.write(job, item, result)
            except OSError as exc:
                if self.on_error == "raise":
                    raise
                if exc.errno in _PER_IMAGE_WRITE_ERRORS:
                    self._skip(report, job, exc)
                    continue
                self._skip(report, job, f"could not write its outputs: {_os_error_text(exc)}")
                report.stopped = (
                    f"could not write the outputs of {job.label} ({_os_error_text(exc)}); fix that (free some "
                    "space, or choose another --out) and rerun the same command: finished images are kept"
                )
                break
            except Exception as exc:
                self._skip(report, job, exc)
            else:
                report.segmented.append((job, found))
        bar.update(len(loaded))
