"""Result paths per input: an image's key, the jobs of a ``segment`` run and the rules that keep output names apart.

- [`image_key`]: the one rule that names an image (its base name without extension): the output stem of
  ``segment``, the key of a candidate-class JSON, an eval image id.
- [`collect_jobs`]: files, folders and globs -> [`ImageJob`]s, keeping sub-folders under the output folder.
- Output names cannot collide: inputs that would share an output file are detected before any work and refused
  with a message naming both ([`check_output_names`]); inputs that are a previous run's outputs (listed by its
  sidecars) are left out, with a note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from ..errors import UsageError

__all__ = [
    "OVERWRITE_RECORD",
    "SKIPPED_FILE",
    "ImageJob",
    "base_name",
    "check_output_names",
    "check_earlier_owners",
    "collect_jobs",
    "image_key",
    "mark_long_names",
    "path_key",
]

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"
"""The run's list of skipped inputs, ``<out>/skipped.json`` (so no input may write a sidecar named so)."""

OVERWRITE_RECORD = ".diffsegmenter-overwrite.json"
"""In an output folder while an ``--overwrite`` run is unfinished: its request and start time, so that rerunning it
keeps what it already redid (:attr:`~diffsegmenter.batch.BatchRunner.overwrite_record`)."""

_GLOB_CHARS = frozenset("*?[")
_COCO2014_PREFIX = re.compile(r"^COCO_(?:val|train)2014_")


def base_name(text: str) -> str:
    """The file name at the end of a path written on any system: a path with a backslash is a Windows one
    (``C:\\data\\x.jpg`` -> ``x.jpg``), any other a POSIX one."""
    return PureWindowsPath(text).name if "\\" in text else PurePosixPath(text).name


def image_key(
    path_or_name: str | os.PathLike[str], *, strip_coco2014: bool = False, strip_extension: bool = True
) -> str:
    """The one name of an image: its base name without its (last) extension.

    A string may be a POSIX or a Windows path whatever the current OS (``C:\\data\\x.jpg`` -> ``x``); a path
    object is taken as the OS parsed it. Surrounding whitespace of a string is ignored.

    Args:
        path_or_name (`str` or `os.PathLike`): e.g. ``"/data/VOC2012/JPEGImages/2007_000033.jpg"``,
            ``"2007_000033.jpg"`` or ``"2007_000033"``.
        strip_coco2014 (`bool`, defaults to False): also drop a COCO-2014 file-name prefix
            (``COCO_val2014_000000182611`` -> ``000000182611``, the COCO-2017 id), to match candidate files written
            for COCO 2014 with datasets named the 2017 way.
        strip_extension (`bool`, defaults to True): drop the last extension; False for a name that is already an
            image id, in which a dot is part of the name (``scene.v1``).

    Returns:
        `str`: e.g. ``"2007_000033"``.
    """
    if isinstance(path_or_name, PurePath):
        name = path_or_name.name
    else:
        text = os.fspath(path_or_name).strip()
        name = base_name(text)
        if not name:
            return text
    key = PurePosixPath(name).stem if name and strip_extension else name
    return _COCO2014_PREFIX.sub("", key) if strip_coco2014 else key


def path_key(path: Path) -> str:
    """A path as compared for collisions: absolute, and case-insensitive (macOS and Windows file systems)."""
    return os.path.normcase(os.path.abspath(path)).lower()


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One input image and where its outputs go.

    Attributes:
        path (`Path`): the image file.
        out_dir (`Path`): the folder its outputs go to (``--out`` plus the image's sub-folder inside a folder input).
        stem (`str`): the outputs' file name stem (the image's name without suffix, made unique).
        problem (`str`, *optional*): why this input cannot be used, found while listing the inputs (an unsupported
            type, a symbolic link loop...); such a job is reported as skipped without being read.
        name (`str`, *optional*): the image's path relative to the folder that holds every input of the run (the
            input folder when there is one), POSIX: how run-level exports name it (COCO ``file_name``), unique
            within the run. None = its output sub-folder and file name.
    """

    path: Path
    out_dir: Path
    stem: str
    problem: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """Short name for reports: the path as given (bytes that are not UTF-8 shown as ``\\xe9`` escapes)."""
        return printable_path(self.path)


def printable_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that any UTF-8 output takes: a name in another encoding (Latin-1 ``caf\\xe9.png``), which
    Python holds with lone surrogates that UTF-8 writers refuse, gets its odd bytes as backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_name(path: Path) -> bool:
    """Whether a file name is valid UTF-8 (its outputs' names and sidecars can be written and read back)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _resolve(path: Path) -> Path:
    """``path.resolve()`` that survives symbolic link loops (Python < 3.13 raises RuntimeError for them)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _input_root(text: str) -> Path | None:
    """The folder that a folder or glob input's matches are made relative to (None for a file)."""
    path = Path(text)
    if path.is_file() or path.is_symlink() and not path.is_dir():
        return None
    if path.is_dir():
        return path
    prefix: list[str] = []
    for part in path.parts:
        if _GLOB_CHARS.intersection(part):
            break
        prefix.append(part)
    return Path(*prefix) if prefix else Path()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _kinds(paths: Sequence[Path]) -> str:
    counts: dict[str, int] = {}
    for path in paths:
        kind = "links to folders" if path.is_symlink() else (path.suffix.lower() or "no suffix")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in sorted(counts.items()))


def _in_folder_output(path: Path) -> bool:
    """Whether `path` lies in a folder output such as ``<stem>.heatmaps/``."""
    from .formats import FORMATS

    return any(path.parent.name.endswith(fmt.suffix) for fmt in FORMATS.values() if fmt.is_folder)


class _EarlierOutputs:
    """Recognises files that an earlier run wrote (listed by its sidecars), folder by folder, reading each once."""

    def __init__(self) -> None:
        self._cache: dict[Path, set[str]] = {}

    def _names(self, folder: Path) -> set[str]:
        from .results import earlier_outputs

        if folder not in self._cache:
            names = earlier_outputs(folder)
            if names:
                names.add(SKIPPED_FILE)  # that run's report
            self._cache[folder] = names
        return self._cache[folder]

    def __contains__(self, path: Path) -> bool:
        if path.name in self._names(path.parent):
            return True
        return f"{path.parent.name}/{path.name}" in self._names(path.parent.parent)  # <stem>.heatmaps/<class>.png


def collect_jobs(
    inputs: Sequence[str],
    out: str | os.PathLike,
    formats: Sequence[str] | None = None,
    extra: Callable[[ImageJob], Sequence[str]] | None = None,
) -> list[ImageJob]:
    """Expand the inputs into image jobs with output names that cannot collide.

    A folder (or glob) input keeps each image's sub-folder under ``out``, so ``a/x.png`` and ``b/x.png`` inside
    the folder go to ``out/a/x.*`` and ``out/b/x.*``. Images that would still share an output name (``x.png`` and
    ``x.jpg``, or two files given explicitly) get the full file name (``x.jpg.png``...) or a ``-2`` suffix, in
    input order; each sidecar records its source. Any other clash between two inputs' outputs (``x.png``'s overlay
    ``x.overlay.png`` is also the label map of an input ``x.overlay.png``) is refused before any work, naming both.
    Names stay stable across runs: a name whose sidecar records another input of the same folder (``x.png`` done
    earlier as ``x``, then ``x.jpg`` added, which sorts first) stays that input's.

    Inside a folder or glob input, files inside ``out`` are never taken as inputs, files that an earlier run wrote
    (listed by its ``<stem>.json`` sidecars) are left out with a note, and files that are not images are noted.
    What looks like an input but cannot be used (an unsupported image type, a folder named like an image, a
    symbolic link loop or broken link) becomes a job with a ``problem``, reported as skipped.

    Args:
        inputs (`Sequence[str]`): files, folders and glob patterns.
        out (`str` or `os.PathLike`): the output folder.
        formats (`Sequence[str]`, *optional*): the output formats whose names must not collide; None = all of them.
        extra (*optional*): a job's further file names, relative to its output folder, that the command writes
            (``edit --save-mask``'s ``x.mask.png``): checked for length with the formats' (:func:`mark_long_names`).

    Returns:
        `list[ImageJob]`: in input order, each image once; an image whose output names would be too long for the
        file system has a ``problem``.

    Raises:
        FileNotFoundError: an input names nothing (the message names it).
        UsageError: the output folder is one of the input folders or holds an input file, two inputs' outputs
            would collide, (with ``yolo`` among `formats`) two inputs of one folder share a stem, or (with ``yolo``
            or ``labelstudio`` among `formats`) a full path that its run file records (the output folder's, each
            image's) is not valid UTF-8.
    """
    from ..images import _nothing_found_message, scan_inputs
    from .formats import FORMATS, RUN_FILES

    out_root = Path(out)
    out_resolved = _resolve(out_root)
    jobs: list[ImageJob] = []
    seen: set[Path] = set()
    # the run's own JSON files in <out> (its report, the COCO and Label Studio exports) would overwrite a sidecar
    run_files = (SKIPPED_FILE, *(name for name in RUN_FILES if name.endswith(".json")))
    run_file_of = {Path(name).stem.lower(): name for name in run_files}  # a reserved stem -> its run file
    reserved: set[tuple[str, str]] = {(".", stem) for stem in run_file_of}
    taken = set(reserved)
    earlier = _EarlierOutputs()
    bases: list[str] = []  # the folder each input is named from: a folder or glob's root, a file's folder
    for text in inputs:
        root = _input_root(text)
        bases.append(os.path.abspath(root if root is not None else Path(text).parent))
        exclude_out = False
        if root is not None:
            root_resolved = _resolve(root)
            if root_resolved == out_resolved:
                raise UsageError(
                    f"--out {str(out)!r} is the input folder {text!r}; choose another output folder so results are "
                    "not mixed with (and later read as) inputs"
                )
            exclude_out = _is_within(out_resolved, root_resolved)
        scan = scan_inputs([text])
        if not scan.images and not scan.skipped:
            raise FileNotFoundError(_nothing_found_message(text))
        left_out: list[Path] = []
        # stems shared inside one folder: only their names can have been claimed by a sibling in an earlier run
        shared = Counter((p.parent, image_key(p)) for p in scan.images)
        for path in scan.images:
            resolved = _resolve(path)
            if resolved in seen or (exclude_out and _is_within(resolved, out_resolved)):
                continue
            if (problem := _name_problem(path)) is not None:
                seen.add(resolved)
                jobs.append(ImageJob(path=path, out_dir=out_root, stem=printable_path(path.name), problem=problem))
                continue
            if root is not None and path in earlier:
                left_out.append(path)
                continue
            seen.add(resolved)
            rel = Path()
            if root is not None:
                with contextlib.suppress(ValueError):
                    rel = path.parent.relative_to(root)
            key_dir = rel.as_posix().lower()
            stem = key = image_key(path)
            claimed = shared[(path.parent, key)] > 1 and _claimed_by_sibling(out_root / rel, key, path)
            if (
                not claimed
                and (key_dir, path.name.lower()) not in taken
                and _kept_full_name(out_root / rel, key, path)
            ):
                stem = path.name  # named x.png.* beside x.jpg earlier; x.jpg has left the folder since
            elif (key_dir, stem.lower()) in taken or claimed:
                stem = path.name
                counter = 1
                while (key_dir, stem.lower()) in taken:
                    counter += 1
                    stem = f"{key}-{counter}"
                if (key_dir, key.lower()) in reserved:
                    logger.warning(
                        "the name %r is kept for the run's file %s; writing %s as %r",
                        key,
                        run_file_of[key.lower()],
                        path,
                        stem,
                    )
                else:
                    logger.warning("two inputs map to the same output name; writing %s as %r", path, stem)
            if stem == key and not key.isascii():  # done earlier under the other Unicode spelling of its name
                respelt = _earlier_spelling(out_root / rel, key, path)
                stem = respelt if (key_dir, respelt.lower()) not in taken else stem
            taken.add((key_dir, stem.lower()))
            job = ImageJob(path=path, out_dir=out_root / rel, stem=stem)
            if _resolve(job.out_dir) == resolved.parent:
                raise UsageError(
                    f"--out {str(out)!r} is the folder of the input {str(path)!r}; choose another output folder "
                    f"(the label map {stem}.png could replace an input image)"
                )
            jobs.append(job)
        for path, reason in scan.skipped:
            resolved = _resolve(path)
            if resolved in seen or (exclude_out and _is_within(resolved, out_resolved)):
                continue
            seen.add(resolved)
            jobs.append(ImageJob(path=path, out_dir=out_root, stem=path.name, problem=reason))
        ignored = [p for p in scan.ignored if not (exclude_out and _is_within(_resolve(p), out_resolved))]
        left_out += [p for p in ignored if p in earlier]
        ignored = [p for p in ignored if p not in earlier]
        if left_out:
            folders = sorted({str(p.parent.parent if _in_folder_output(p) else p.parent) for p in left_out})
            logger.warning(
                "left out %d file(s) in %s that an earlier diffsegmenter run wrote (listed in its <name>.json "
                "sidecars); name a file explicitly to segment it anyway",
                len(left_out),
                ", ".join(repr(f) for f in folders[:3])
                + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else ""),
            )
        if ignored:
            logger.warning("ignored %d file(s) under %r that are not images (%s)", len(ignored), text, _kinds(ignored))
    jobs = mark_long_names(jobs, list(FORMATS) if formats is None else formats, extra)
    check_output_names(jobs, list(FORMATS) if formats is None else formats, out_root)
    if formats is not None and "yolo" in formats:
        _check_yolo_stems(jobs, out_root, run_file_of)
    if formats is not None:  # the formats asked for: the run files that record full paths
        _check_full_paths(jobs, out_root, formats)
    check_earlier_owners(jobs, list(FORMATS) if formats is None else formats)
    return _named(jobs, bases)


def mark_long_names(
    jobs: Sequence[ImageJob],
    formats: Sequence[str],
    extra: Callable[[ImageJob], Sequence[str]] | None = None,
) -> list[ImageJob]:
    """Give a ``problem`` to each job whose output file names (sidecar, every format's file or folder, `extra`'s)
    would be longer than file systems take (:data:`~diffsegmenter.io.atomic.MAX_NAME_BYTES`): reported as skipped
    before any work, not found out when writing (a 251-character name failed the whole run in the first ``is_done``;
    a 246-character one was segmented, then failed at its overlay, leaving its label map without a sidecar).

    Returns:
        `list[ImageJob]`: `jobs` in order, the ones with too long names replaced by a copy with a ``problem``.
    """
    from .atomic import MAX_NAME_BYTES
    from .results import output_paths

    marked = []
    for job in jobs:
        if job.problem is None:
            paths = output_paths(job.out_dir, job.stem, formats)
            names = [paths.sidecar.name, *(target.name for target in paths.targets.values())]
            names += [Path(name).name for name in (extra(job) if extra is not None else ())]
            longest = max(names, key=_name_bytes)
            size = _name_bytes(longest)
            if size > MAX_NAME_BYTES:
                stem_bytes = _name_bytes(job.stem)
                suffix = longest[len(job.stem) :] if longest.startswith(job.stem) else longest
                problem = (
                    f"its name is too long for its outputs: the name of its '<name>{suffix}' would be {size} bytes, "
                    f"more than the {MAX_NAME_BYTES} file systems take; rename it to at most "
                    f"{MAX_NAME_BYTES - size + stem_bytes} bytes before the extension"
                )
                job = dataclasses.replace(job, problem=problem)
        marked.append(job)
    return marked


def _name_bytes(name: str) -> int:
    """A file name's length as file systems count it: UTF-8 bytes (undecodable bytes kept as they are)."""
    return len(name.encode("utf-8", "surrogateescape"))


def check_earlier_owners(
    jobs: Sequence[ImageJob],
    formats: Sequence[str],
    extra: Callable[[ImageJob], Sequence[str]] | None = None,
) -> None:
    """Refuse, before any work, an input whose outputs would land on a file that an earlier run wrote for another
    image (its sidecar lists it): ``x.png`` with ``coco`` writes ``x.coco.json``, the sidecar of an input
    ``x.coco.png`` segmented earlier; ``x.png``'s overlay ``x.overlay.png`` is an earlier input's label map. Within one
    run [`check_output_names`] refuses the same clashes; ``--overwrite`` would still destroy the other image's results.
    [`collect_jobs`] calls it for the formats' outputs; a command that writes more (``edit --save-mask``'s
    ``x.mask.png``) calls it again with `extra`: a job's further file names, relative to its output folder.

    Raises:
        UsageError: naming the input, the file, the earlier image and the ways out.
    """
    from .formats import FORMATS
    from .results import output_paths, sidecars_in

    # folder -> (written file, and first part of each written path) -> (its sidecar, its source); compared without
    # case, as the within-run check compares paths (X.coco.json is x.coco.json on macOS and Windows)
    owners: dict[Path, tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]] = {}
    for job in jobs:
        if job.problem is not None:
            continue
        folder = Path(job.out_dir)
        if folder not in owners:
            files: dict[str, tuple[str, str]] = {}
            tops: dict[str, tuple[str, str]] = {}
            for sidecar_name, sidecar in sidecars_in(folder).items():
                owner = (sidecar_name, str(sidecar.get("source", "?")))
                # an edit's sidecar names its edited image apart ("edit"), so that segment takes it as an input
                edited = [sidecar["edit"]] if isinstance(sidecar.get("edit"), str) else []
                for listed in [sidecar_name, *edited, *(f for f in sidecar["files"] if isinstance(f, str))]:
                    files.setdefault(listed.lower(), owner)
                    tops.setdefault(listed.split("/")[0].lower(), owner)
            owners[folder] = (files, tops)
        files, tops = owners[folder]
        if not files:
            continue
        paths = output_paths(folder, job.stem, formats)
        mine = paths.sidecar.name.lower()
        more = [("output", folder / n) for n in (extra(job) if extra is not None else [])]
        for name, target in [("sidecar", paths.sidecar), *paths.targets.items(), *more]:
            rel = target.relative_to(folder).as_posix()
            is_folder = FORMATS.get(name) is not None and FORMATS[name].is_folder
            owner = (tops if is_folder else files).get(rel.lower())  # a folder format: a file listed inside it
            if owner is not None and owner[0].lower() != mine:
                sidecar_name, source = owner
                what = name if name in ("sidecar", "output") else FORMATS[name].what
                raise UsageError(
                    f"{job.label!r} would write its {what} over {str(folder / rel)!r}, which an earlier run wrote for "
                    f"the input {source!r} (listed in {sidecar_name}); rename one of them, or write into another --out"
                )


def _check_full_paths(jobs: Sequence[ImageJob], out: Path, formats: Sequence[str]) -> None:
    """Refuse, before any work, full paths that a run file must record but UTF-8 cannot: ``dataset.yaml`` holds
    the output folder's, Label Studio's tasks each image's (a folder above named in another encoding, which the
    inputs' names as given do not show)."""
    rename = "rename that folder (e.g. `convmv -f latin1 -t utf-8 --notest <folder>`)"
    if "yolo" in formats and not is_utf8_name(_resolve(out)):
        raise UsageError(
            f"the output folder's full path '{printable_path(_resolve(out))}' is not valid UTF-8 (a folder named in "
            f"another encoding), and the yolo export's dataset.yaml must record it; {rename}, choose another --out, "
            "or leave yolo out of --format"
        )
    if "labelstudio" in formats:
        for job in jobs:
            full = os.path.abspath(job.path)
            if job.problem is None and not is_utf8_name(Path(full)):
                raise UsageError(
                    f"the full path of '{printable_path(job.path)}', '{printable_path(full)}', is not valid UTF-8 (a "
                    f"folder named in another encoding), and Label Studio's tasks must record it; {rename}, move "
                    "the images, or leave labelstudio out of --format"
                )


def _named(jobs: list[ImageJob], bases: Sequence[str]) -> list[ImageJob]:
    """The jobs with their ``name``: the path relative to the folder that holds every input (two inputs' ``x.png``
    from ``a/`` and ``b/`` are ``a/x.png`` and ``b/x.png``, not both ``x.png``)."""
    try:
        base = os.path.commonpath(bases) if bases else None
    except ValueError:  # e.g. inputs on different Windows drives
        base = None
    named = []
    for job in jobs:
        name = None
        if base is not None:
            relative = os.path.relpath(os.path.abspath(job.path), base)
            name = None if relative.startswith("..") else Path(relative).as_posix()
        named.append(dataclasses.replace(job, name=name))
    return named


def _recorded_source(sidecar: Path) -> str | None:
    """The input an earlier run's sidecar records (``source``), or None when there is none, it cannot be read, or it
    is too large to be a sidecar (1 MiB)."""
    from .sidecar import load_sidecar

    try:
        if not sidecar.is_file() or sidecar.stat().st_size > 1 << 20:
            return None
        recorded = load_sidecar(sidecar).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def _name_problem(path: Path) -> str | None:
    """Why an input's file name cannot name its outputs, or None: not valid UTF-8 (its sidecar could not record it,
    nor the run files name it), or holding a backslash (a folder separator on Windows, which ``output_paths``
    refuses: the run ended there)."""
    if not is_utf8_name(path):
        return (
            "its name is not valid UTF-8 (written in another encoding); rename the file, e.g. with `convmv -f latin1 "
            "-t utf-8 --notest <file>`"
        )
    if "\\" in path.name:
        return (
            "its name holds a backslash, which Windows reads as a folder separator: its outputs could not be named "
            "after it; rename the file"
        )
    return None


def _earlier_spelling(out_dir: Path, stem: str, path: Path) -> str:
    """``stem``, or its other Unicode spelling (composed or decomposed) when only that one's sidecar exists and
    records ``path``: an image done as ``café.png`` written by macOS (``e`` plus an accent), then copied by a tool
    that composes names, keeps its finished results (they were redone beside the old ones, which stayed orphaned)."""
    from .sidecar import sidecar_owner, source_name

    if (out_dir / f"{stem}.json").exists():
        return stem
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, stem)
        if other == stem:
            continue
        sidecar, _ = sidecar_owner(out_dir / f"{other}.json", path)  # this name (either spelling), this content
        if sidecar is None:
            continue
        # the file it records must be gone (renamed to this spelling) or be this one (a file system that ignores
        # the spelling): on Linux both spellings can be two images, each with its own results
        spelt = path.parent / source_name(str(sidecar.get("source", "")), composed=False)
        if not spelt.exists() or _same_file(spelt, path):
            return other
    return stem


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _claimed_by_sibling(out_dir: Path, stem: str, path: Path) -> bool:
    """Whether ``out_dir/<stem>.json`` (an earlier run's sidecar) records another image of ``path``'s folder that
    still exists as its source: that image keeps the name, so a file added later cannot take over its outputs."""
    from .sidecar import source_name

    source = _recorded_source(out_dir / f"{stem}.json")
    if source is None:
        return False
    return (
        source_name(source) != source_name(path.name) and (path.parent / source_name(source, composed=False)).is_file()
    )


def _kept_full_name(out_dir: Path, stem: str, path: Path) -> bool:
    """Whether an earlier run wrote ``path``'s results under its full name (``x.png.json`` records it) because a
    sibling (``x.jpg``) held ``<stem>.json``: the name stays ``path``'s when the sibling has left the folder (else
    its finished results were not found, and the rerun was refused as writing over the sibling's)."""
    from .sidecar import source_name

    own = _recorded_source(out_dir / f"{path.name}.json")
    if own is None or source_name(own) != source_name(path.name):
        return False
    other = _recorded_source(
        out_dir / f"{stem}.json"
    )  # the sibling's (another name, or the same name in another folder)
    return other is None or source_name(other) != source_name(path.name) or _resolve(Path(other)) != _resolve(path)


def check_output_names(jobs: Sequence[ImageJob], formats: Sequence[str], out: Path) -> None:
    """Refuse, before any work, two inputs whose outputs would land on the same path.

    Each job claims its output files, its folder outputs such as the heat-map folder (which it prunes, so no one
    else may write there) and the folders its outputs go in (shared).

    Raises:
        UsageError: naming both inputs, the path and what each would write there.
    """
    from .formats import FORMATS
    from .results import output_paths

    claims: dict[str, tuple[str, ImageJob, str]] = {}

    def claim(path: Path, kind: str, job: ImageJob, what: str) -> None:
        key = path_key(path)
        previous = claims.setdefault(key, (kind, job, what))
        if previous[1] is job or (kind == "folder" and previous[0] == "folder"):
            return
        raise UsageError(
            f"the inputs {previous[1].label!r} and {job.label!r} would both write {str(path)!r} (the "
            f"{previous[2]} of the first, the {what} of the second); rename one of them, or segment them into "
            "separate --out folders"
        )

    for job in jobs:
        if job.problem is not None:
            continue
        with contextlib.suppress(ValueError):
            rel = job.out_dir.relative_to(out)
            for depth in range(1, len(rel.parts) + 1):
                claim(out.joinpath(*rel.parts[:depth]), "folder", job, "output sub-folder")
        paths = output_paths(job.out_dir, job.stem, formats)
        targets = [(FORMATS[name], path) for name, path in paths.targets.items()]
        for fmt, path in targets:
            if not fmt.is_folder:
                claim(path, "file", job, fmt.what)
        claim(paths.sidecar, "file", job, "sidecar")
        for fmt, path in targets:
            if fmt.is_folder:
                claim(path, fmt.what, job, fmt.what)


def _check_yolo_stems(jobs: Sequence[ImageJob], out: Path, reserved: dict[str, str]) -> None:
    """Refuse, for the YOLO export, an input whose outputs could not take its own stem (``x.png`` beside ``x.jpg``):
    Ultralytics finds an image's labels by its stem, so it would read the other image's ``labels/x.txt``.

    Raises:
        UsageError: naming the input, the other one when it is in this run, and the way out.
    """
    usable = [(job, image_key(job.path)) for job in jobs if job.problem is None]
    own = {(path_key(job.out_dir), key.lower()): job for job, key in usable if job.stem.lower() == key.lower()}
    for job, key in usable:
        if job.stem.lower() == key.lower():
            continue
        other = own.get((path_key(job.out_dir), key.lower()))
        ways = "rename one of them, segment them into separate --out folders, or leave yolo out of --format"
        if other is None and key.lower() in reserved and path_key(job.out_dir) == path_key(out):
            raise UsageError(
                f"{job.label!r}: its stem {key!r} is kept for the run's file {reserved[key.lower()]}, so its "
                f"outputs are named {job.stem!r}, and Ultralytics looks for an image's labels under its stem (labels/{key}.txt); "
                "rename the image, or leave yolo out of --format"
            )
        why = (
            f"{other.label!r} and {job.label!r} share the stem {key!r}"
            if other is not None
            else f"{job.label!r} shares the stem {key!r} with an image an earlier run wrote into this folder"
        )
        raise UsageError(
            f"{why}, and YOLO names labels by the image's stem (Ultralytics would read labels/{key}.txt for both); "
            + ways
        )
