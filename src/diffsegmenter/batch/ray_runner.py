"""``segment --ray``: the same job as [`BatchRunner`] + [`ImageTask`], on Ray Data (the ``[ray]`` extra).

The driver lists the jobs and applies the same resume rule (``ImageTask.is_done``: an image whose outputs exist and
were made with these settings is not recomputed) and the same up-front problems; only the pending images go to Ray:

1. ``ray.data.from_items`` of the pending jobs (path, output folder, stem);
2. ``map``: read each image (Ray tasks; a file that cannot be read becomes a row with its reason);
3. ``map_batches`` on an actor pool of ``workers`` actors, one model each (built once per actor by
   `task_factory`, with a GPU per actor where the cluster has GPUs, else ``cpus_per_worker`` CPUs): segment, then
   write the outputs with the same writers (``ImageTask.write`` -> ``write_result``) straight from the actor: the
   output folder must be on a file system every node sees (NFS, a mounted bucket);
4. the driver streams the per-image status rows (progress bar), builds the same [`BatchReport`] (skipped images
   with their reasons; a write error that concerns the output folder stops the run), then writes the run-level
   files (``ImageTask.finish``); the command writes ``skipped.json`` and the exit status as a local run does.

Nothing here imports Ray at module level.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .runner import _PER_IMAGE_WRITE_ERRORS, BatchReport, BatchRunner, _os_error_text, _reason

__all__ = ["run_on_ray", "start_ray"]

logger = logging.getLogger(__name__)


#: Seconds :func:`start_ray` waits for a cluster address to accept a TCP connection.
RAY_PROBE_TIMEOUT = 5.0


def _probe_ray_address(address: str) -> None:
    """Refuse, within :data:`RAY_PROBE_TIMEOUT` seconds, a ``[ray://]host:port`` address nothing listens at (``auto``
    and other forms are left to Ray)."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"no Ray cluster answers at {address!r} ({exc}); start it (`ray start --head`), check --ray-address, or "
            "leave it out to start a local Ray"
        ) from None


def start_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the cluster at `address`, or start a local Ray (all this machine's CPUs, a small object store).

    Returns:
        the ``ray`` module.

    Raises:
        ConnectionError: nothing answers at a ``host:port`` / ``ray://host:port`` address (a TCP probe of
            :data:`RAY_PROBE_TIMEOUT` seconds, instead of Ray's minutes of retries), or Ray refuses to connect (e.g.
            ``ray://`` without the ``ray[client]`` package); the message names the address and the way out.
    """
    from .._optional import require

    ray = require("ray", extra="ray", feature="segment --ray")
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        _probe_ray_address(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ConnectionError(
                f"could not connect to the Ray cluster at {address!r}: {' '.join(str(exc).split())}; check "
                "--ray-address (ray://<head>:10001 for Ray Client, <head>:6379 from a cluster node, or auto), or leave "
                "it out to start a local Ray"
            ) from None
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=256 << 20,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    return ray


def _read(row: dict[str, Any], max_pixels: int | None) -> dict[str, Any]:
    from ..images import load_image

    try:
        row["image"] = load_image(row["path"], max_pixels=max_pixels)
        row["error"] = ""
    except (ValueError, OSError) as exc:
        import numpy as np

        row["image"] = np.zeros((1, 1, 3), dtype=np.uint8)  # a placeholder: columns keep one type
        row["error"] = _reason(exc)
    return row


class _SegmentActor:
    """One model per actor: segment a batch of read images and write their outputs; returns one status row each."""

    def __init__(self, task_factory: Callable[[bool], Any]) -> None:
        import ray

        self.task = task_factory(bool(ray.get_gpu_ids()))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from ..io.paths import ImageJob

        n = len(batch["index"])
        status, reason, found = ["skipped"] * n, [""] * n, [[] for _ in range(n)]
        jobs = [ImageJob(Path(batch["path"][i]), Path(batch["out_dir"][i]), str(batch["stem"][i])) for i in range(n)]
        ready = []
        for i in range(n):
            if batch["error"][i]:
                reason[i] = str(batch["error"][i])
            else:
                ready.append(i)
        results: dict[int, Any] = {}
        if ready:
            try:
                out = self.task.segment([jobs[i] for i in ready], [batch["image"][i] for i in ready])
                results = dict(zip(ready, out))
            except Exception:  # retry one by one, so one bad image only costs itself
                for i in ready:
                    try:
                        results[i] = self.task.segment([jobs[i]], [batch["image"][i]])[0]
                    except Exception as exc:
                        reason[i] = _reason(exc)
        for i, result in results.items():
            try:
                found[i] = list(self.task.write(jobs[i], batch["image"][i], result))
                status[i] = "ok"
            except OSError as exc:
                per_image = exc.errno in _PER_IMAGE_WRITE_ERRORS
                status[i] = "skipped" if per_image else "stop"
                reason[i] = _reason(exc) if per_image else _os_error_text(exc)
            except Exception as exc:
                reason[i] = _reason(exc)
        return {"index": list(batch["index"]), "status": status, "reason": reason, "found": found}


def _written_since(job: Any, formats: Sequence[str], started: float) -> bool:
    """Whether the job's sidecar (written last, after its outputs) was written at or after ``started``."""
    from ..io.results import output_paths

    try:
        sidecar = output_paths(job.out_dir, job.stem, formats).sidecar
        return sidecar.stat().st_mtime >= started - 1.0  # coarse file clocks
    except OSError:
        return False


def _root_cause(exc: BaseException) -> str:
    """The innermost error message of a Ray failure, as one line. Ray wraps an actor's exception in its own (an
    ``ActorDiedError`` whose text ends with the remote traceback's last line) and chains empty ones below it, so the
    last line of the deepest non-empty message is taken."""
    found, seen = "", set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = [line.strip() for line in str(current).splitlines() if line.strip()]
        found = lines[-1] if lines else found
        inner = getattr(current, "cause", None) or current.__cause__
        current = inner if isinstance(inner, BaseException) else None
    return found or type(exc).__name__


def run_on_ray(
    jobs: Sequence[Any],
    task: Any,
    task_factory: Callable[[bool], Any],
    *,
    workers: int = 2,
    cpus_per_worker: float | None = None,
    address: str | None = None,
    overwrite: bool = False,
    images_per_batch: int = 1,
    progress: bool = True,
    gpus: bool = True,
    overwrite_record: Path | None = None,
) -> BatchReport:
    """Run an image batch on Ray Data; same files, same resume rule and same report as [`BatchRunner`].

    Args:
        jobs (`Sequence[ImageJob]`): from ``collect_jobs``.
        task (`ImageTask`): the driver's task (no model needed): ``is_done``, ``problem``, ``finish`` and the
            reading limit (``max_pixels``).
        task_factory (`Callable[[bool], ImageTask]`): builds an actor's task with its model; called once per actor
            with whether the actor holds a GPU. Must pickle (a module-level function or a ``functools.partial``).
        workers (`int`, defaults to 2): actors, i.e. model copies.
        cpus_per_worker (`float`, *optional*): CPUs each CPU actor reserves; default ``(cluster CPUs - 1) /
            workers`` capped to [0.25, 1], leaving a CPU for the read tasks (0.5 for 2 workers on 2 cores).
        address (`str`, *optional*): a Ray cluster's address (``ray://head:10001`` or ``auto``); None = a local Ray.
        overwrite, images_per_batch, progress: as for ``run_batch``.
        gpus (`bool`, defaults to True): give each actor a GPU where the cluster has them (False for a run the
            user put on the CPU, so that it reserves none).
        overwrite_record (`Path`, *optional*): as [`BatchRunner.overwrite_record`]: with ``overwrite``, a rerun of
            an interrupted pass keeps the images it already redid.

    Returns:
        [`BatchReport`]; ``segmented`` in input order. When the actors fail as a whole (a model that cannot load on
        a worker: no CUDA there, a missing folder), the report says so in ``stopped``, with the cause, and keeps
        what finished.
    """
    report = BatchReport(total=len(jobs))
    runner = BatchRunner(overwrite=overwrite, overwrite_record=overwrite_record)
    since = runner._overwrite_pass(task)
    pending = runner._pending(jobs, task, report, since)
    if pending:
        start_ray(address)
        import ray
        import ray.data
        from ray.data.exceptions import SystemException
        from tqdm.auto import tqdm

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one bar, ours
        context.print_on_execution_start = False
        resources = ray.cluster_resources()
        if gpus and resources.get("GPU", 0) >= 1:
            actor_resources = {"num_gpus": 1, "num_cpus": 1}
        else:
            if cpus_per_worker is None:
                cpus_per_worker = min(1.0, max(0.25, (resources.get("CPU", 1) - 1) / max(1, workers)))
            actor_resources = {"num_cpus": cpus_per_worker}
        batch_size = max(1, int(images_per_batch))
        items = [
            {"index": i, "path": str(job.path), "out_dir": str(job.out_dir), "stem": job.stem}
            for i, job in enumerate(pending)
        ]
        dataset = (
            ray.data.from_items(items, override_num_blocks=min(len(items), 4 * workers))
            .map(_read, fn_kwargs={"max_pixels": task.max_pixels}, num_cpus=0.25)
            .map_batches(
                _SegmentActor,
                fn_constructor_kwargs={"task_factory": task_factory},
                batch_size=batch_size,
                batch_format="numpy",
                # no more model copies than batches to give them (a resumed run may have one image left)
                compute=ray.data.ActorPoolStrategy(size=max(1, min(int(workers), -(-len(items) // batch_size)))),
                **actor_resources,
            )
        )
        done: dict[int, tuple[str, str, list[str] | None]] = {}
        started = time.time()  # outputs older than this are an earlier run's (kept with --overwrite until redone)
        disable = None if progress else True
        with tqdm(total=len(pending), desc="ray", unit="image", disable=disable) as bar:
            try:
                for row in dataset.iter_rows():
                    index = int(row["index"])
                    done[index] = (str(row["status"]), str(row["reason"]), [str(c) for c in row["found"]])
                    bar.update(1)
                    if row["status"] == "stop":
                        report.stopped = (
                            f"could not write the outputs of {pending[index].label} ({row['reason']}); fix that "
                            "(free some space, or choose another --out) and rerun the same command: finished images "
                            "are kept"
                        )
                        break
            except (ray.exceptions.RayError, SystemException) as exc:  # the actors failed as a whole, e.g. the
                # model would not load
                report.stopped = (
                    f"the Ray workers failed: {_root_cause(exc)}; fix that and rerun the same command: finished "
                    "images are kept"
                )
        if report.stopped is not None:  # images that actors finished after the stop (or before a failure) count
            for index, job in enumerate(pending):
                if index not in done and _written_since(job, task.formats, started) and task.is_done(job):
                    done[index] = ("ok", "", None)  # known from its files: what its write returned is not
        for index, job in enumerate(pending):
            if index not in done:
                continue
            status, reason, found = done[index]
            if status == "ok":
                report.segmented.append((job, found))
            else:
                runner._skip(report, job, reason)
        if report.stopped is not None:
            report.not_started = len(pending) - len(done)
    runner.finish(jobs, task, report)
    runner._end_overwrite_pass(since, report)
    return report
