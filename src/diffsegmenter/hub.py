"""Load pretrained components from the Hugging Face Hub or a local folder, with errors that say how to fix them.

Every model this package uses (the diffusion model's parts, BLIP, CLIP) is loaded through :func:`load_component`,
which wraps ``cls.from_pretrained`` so that:

- weights are only ever read from ``.safetensors`` files (``use_safetensors=True`` for model classes);
- a local folder, or a Hub id read from the cache only, whose component holds a single weights variant (only the
  ``*.fp16.safetensors`` files were downloaded) is read with that variant;
- ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set in the environment at call time is honoured
  (``local_files_only=True``), so nothing is downloaded in offline runs and tests;
- without network it fails fast: before a Hub id is fetched, one short request (:func:`hub_reachable`, at most
  :data:`HUB_PROBE_TIMEOUT` seconds) checks that the Hub answers; when it does not, only the local cache is used, so
  there are no minutes of huggingface_hub retries;
- "not found", "offline" and "no safetensors weights" failures become one :class:`ModelNotFoundError` whose message
  names the model, where it was looked for, why, and how to fetch it (``hf download <id> --local-dir <folder>``) or
  point to a local copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TRUE_VALUES = {"1", "on", "yes", "true"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

HUB_PROBE_TIMEOUT = 5.0
"""Seconds :func:`hub_reachable` waits for the Hub to answer (name lookup included) before the run treats it as
unreachable and uses the local cache only."""

_PROBE_TTL = 60.0
_probe_cache: dict[str, tuple[float, bool]] = {}


class ModelNotFoundError(ValueError):
    """A pretrained component could not be found locally and could not (or may not) be downloaded.

    Subclasses `ValueError` so that callers validating user input catch it with the other bad-argument errors.
    """


def hub_offline() -> bool:
    """Whether the Hub must not be contacted: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is truthy.

    The environment is read at call time (``huggingface_hub.constants.HF_HUB_OFFLINE`` is only read at import), so a
    variable set after import is honoured too.

    Returns:
        `bool`: `True` when offline mode is requested.
    """
    return _offline_variable() is not None


def _offline_variable() -> str | None:
    """The offline variable that is set (for messages), or None."""
    for var in _OFFLINE_VARIABLES:
        if os.environ.get(var, "").strip().lower() in _TRUE_VALUES:
            return var
    try:
        from huggingface_hub import constants

        return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None
    except (ImportError, AttributeError):  # pragma: no cover - huggingface_hub always ships with transformers
        return None


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except (ImportError, AttributeError):  # pragma: no cover
        return "https://huggingface.co"


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub answers one HTTP request within ``timeout`` seconds (any status counts).

    The request goes through huggingface_hub's own HTTP client, so ``HF_ENDPOINT`` and proxy variables apply. It is
    run in a helper thread so that a stalled name lookup cannot hold the caller longer than ``timeout``. The answer
    is remembered for a minute, so loading the five parts of a model probes once.

    Args:
        timeout (`float`, *optional*): seconds to wait; defaults to :data:`HUB_PROBE_TIMEOUT`.

    Returns:
        `bool`: `False` when the Hub could not be reached in time (no network, blocked, wrong endpoint).
    """
    endpoint = _hub_endpoint()
    cached = _probe_cache.get(endpoint)
    if cached is not None and time.monotonic() - cached[0] < _PROBE_TTL:
        return cached[1]
    answers: list[bool] = []

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout)
            answers.append(True)
        except Exception as exc:  # any failure to get an answer means "not reachable"
            logger.debug("the Hub at %s did not answer: %s", endpoint, exc)
            answers.append(False)

    thread = threading.Thread(target=probe, name="diffsegmenter-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    reachable = bool(answers and answers[0])
    _probe_cache[endpoint] = (time.monotonic(), reachable)
    return reachable


def reads_cache_only(local_files_only: bool | None = None) -> bool:
    """Whether a Hub id is read from the local cache only: ``local_files_only``, an offline variable, or a Hub that
    does not answer (:func:`hub_reachable`; no minutes of retries against an absent network)."""
    return bool(local_files_only) or hub_offline() or not hub_reachable()


def looks_like_local_path(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether ``name_or_path`` is meant as a filesystem path rather than a Hub repo id (``"org/name"``).

    True for `Path` objects, existing paths, and strings that start with ``/``, ``.``, ``~`` or a drive letter, contain
    a backslash, or have more than one ``/`` (a Hub id has at most one).

    Args:
        name_or_path (`str` or `os.PathLike`): what the user passed.

    Returns:
        `bool`: `True` when it should be treated as a local folder.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    if os.path.exists(os.path.expanduser(text)):
        return True
    if text.startswith(("/", ".", "~")) or "\\" in text or (len(text) > 1 and text[1] == ":"):
        return True
    return text.count("/") > 1


def _hub_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except (ImportError, AttributeError):  # pragma: no cover
        return "the Hugging Face cache (HF_HUB_CACHE)"


def _takes_weights(cls: type) -> bool:
    """Whether ``cls.from_pretrained`` loads weights (and so accepts ``use_safetensors``)."""
    try:
        import torch

        if issubclass(cls, torch.nn.Module):
            return True
    except ImportError:  # pragma: no cover
        pass
    return any(base.__name__ == "DiffusionPipeline" for base in cls.__mro__)


def _is_load_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means "the files are not there / cannot be fetched" rather than a genuine bug."""
    if isinstance(exc, OSError):  # EnvironmentError, FileNotFoundError, huggingface_hub HTTP/offline errors
        return True
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError

        if isinstance(exc, (HFValidationError, HfHubHTTPError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, ValueError) and "safetensors" in str(exc).lower()


#: Files that give a tokenizer its vocabulary, any one set of which is enough: the fast tokenizer's single file,
#: a sentencepiece model (T5), byte-level BPE's two files (CLIP), WordPiece's list.
TOKENIZER_VOCABULARIES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("spiece.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
)


def vocabulary_files_text() -> str:
    """:data:`TOKENIZER_VOCABULARIES` as the messages name them: "tokenizer.json, spiece.model, ..."."""
    return ", or ".join(" + ".join(files) for files in TOKENIZER_VOCABULARIES)


_MISMATCH = (
    "expected shape",  # diffusers: a config wider or narrower than its weights
    "size mismatch",  # torch / transformers
    "ignore_mismatched_sizes",  # transformers' advice for the same
    "Cannot copy out of meta tensor",  # diffusers: weights missing for layers the config names
    "Error(s) in loading state_dict",
)
"""Texts of the errors a config that does not match its weights gives (a model error, not a bug to re-raise)."""

SINGLE_FILE_ADVICE = (
    "diffsegmenter reads a model folder in the diffusers layout (model_index.json and one subfolder per component), "
    "not a single checkpoint file: pass the folder, or convert the file once with diffusers "
    "(`StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)`; StableDiffusionXLPipeline, "
    "StableDiffusion3Pipeline or FluxPipeline for those models) and pass that folder"
)

_UNREADABLE_WEIGHTS = (
    "Unable to load weights from checkpoint file",  # diffusers and transformers, for a file that will not parse
    "Error while deserializing header",  # safetensors
    "HeaderTooLarge",
    "MetadataIncompleteBuffer",
)
"""Texts of the errors that a present but truncated or damaged weights file gives (not a missing one)."""


def _is_empty(folder: str) -> bool:
    """Whether a folder has no entries (the listing closed at once: no ResourceWarning, no open descriptor)."""
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def describe_load_failure(
    name: str,
    subfolder: str | None,
    *,
    local: bool,
    offline: bool,
    local_files_only: bool = False,
    unreachable: bool = False,
    cache_dir: str | os.PathLike[str] | None,
    cause: BaseException | None,
) -> str:
    """The message of a failed load of ``name`` (``subfolder``): what was looked for, where, why it failed and how
    to fix it (a damaged or non-safetensors weights file, a missing local folder or file, a Hub id not in the cache
    with the reason the Hub was not asked).

    Args:
        name (`str`): the folder or Hub id passed. subfolder (`str`, *optional*): the component's subfolder.
        local (`bool`): ``name`` is a local path. offline (`bool`): an offline variable is set.
        local_files_only (`bool`): the caller asked for the cache only. unreachable (`bool`): the Hub did not
            answer. cache_dir: the Hub cache used (None: the default). cause: the exception, if any.

    Returns:
        `str`: one paragraph.
    """
    what = f"{name!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    cause_text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}" if cause is not None else ""
    if cause is not None and any(mark in str(cause) for mark in _UNREADABLE_WEIGHTS):
        return (
            f"Could not load {what}: a weights file is there but cannot be read, so it is incomplete or damaged "
            f"({cause_text}); an interrupted download or copy leaves such a file: download or copy it again"
        )
    if cause is not None and "safetensors" in str(cause).lower():
        return (
            f"Could not load {what}: no `.safetensors` weights were found ({cause_text}). This package only loads "
            "safetensors weights. Use a repository or folder that provides `*.safetensors` files, or convert a "
            "checkpoint you trust once (load it with `use_safetensors=False`, then `save_pretrained(folder)`) and "
            "pass that folder."
        )
    if local:
        where = f"the local folder {str(Path(os.path.expanduser(name)).resolve())!r}"
        target = os.path.join(os.path.expanduser(name), subfolder) if subfolder else os.path.expanduser(name)
        if not os.path.exists(os.path.expanduser(name)):
            reason = "that folder does not exist"
        elif os.path.isfile(os.path.expanduser(name)):
            reason = f"it is a file, not a folder. {SINGLE_FILE_ADVICE}"
        elif not os.path.isdir(target):
            reason = f"it has no {subfolder!r} subfolder" if subfolder else "it is not a folder"
        elif _is_empty(target):
            reason = f"{target!r} is empty"
        else:
            reason = "the folder does not contain the expected files" + (f" ({cause_text})" if cause_text else "")
        return (
            f"Could not load {what} from {where}: {reason}. Pass the path of a folder that holds the model files "
            "(config + `*.safetensors`), e.g. one written by `save_pretrained` or by `hf download <repo_id> "
            "--local-dir <folder>`, or pass a Hugging Face Hub id instead."
        )
    fixes = [
        f"on a machine with internet access run `hf download {name} --local-dir <folder>`, copy <folder> here and "
        "pass its path instead of the id (or copy that machine's Hugging Face cache and set HF_HOME to it)"
    ]
    variable = _offline_variable() if offline else None
    if variable is not None:
        why = f"{variable} is set, so the Hub was not contacted"
        fixes.append(f"or unset {variable} to allow downloading")
    elif local_files_only:
        why = "`local_files_only=True` was passed, so the Hub was not contacted"
        fixes.append("or leave local_files_only unset to allow downloading")
    elif unreachable:
        why = (
            f"the Hugging Face Hub ({_hub_endpoint()}) could not be reached within {HUB_PROBE_TIMEOUT:g} s (no "
            "network, or a proxy is needed)"
        )
        fixes.append("or connect to the network (set HTTPS_PROXY if a proxy is needed) and run again")
    else:
        why = "the Hugging Face Hub has no such repository (or it is gated, or could not be reached)"
    top = name.split("/")[0]
    also = (
        f" No local folder {name!r} exists either (under {os.getcwd()!r}, which has a {top!r} folder): if you meant "
        "a path, check it."
        if "/" in name and top and os.path.isdir(top)
        else ""
    )
    return (
        f"Could not load {what}: it is not in the local Hugging Face cache {_hub_cache_dir(cache_dir)!r} and {why}"
        + (f" ({cause_text})" if cause_text else "")
        + f". To fix: {'; '.join(fixes)}. Check the spelling of the id as well."
        + also
    )


_VARIANT_FILE = re.compile(
    r"^[^.]+\.([A-Za-z0-9_]+)(?:-\d+-of-\d+)?\.safetensors$|\.safetensors\.index\.([A-Za-z0-9_]+)\.json$"
)


_DTYPE_VARIANTS = {"float16": "fp16", "bfloat16": "bf16"}


def _pick_variant(folder: str, dtype: Any = None) -> str | None:
    """The weights variant to read from a local component folder that holds variant files only, e.g. ``"fp16"`` for
    a folder with ``diffusion_pytorch_model.fp16.safetensors`` and no ``diffusion_pytorch_model.safetensors`` (what
    ``hf download <id> --include "*.fp16.safetensors" ...`` leaves of SD1.5 or SDXL); with several variants, the one
    named by ``dtype`` (``torch.float16`` -> ``"fp16"``, ``torch.bfloat16`` -> ``"bf16"``). None when the folder has
    plain weights or no variant.

    Raises:
        ModelNotFoundError: several variants and none matches ``dtype``; the message names them.
    """
    if not os.path.isdir(folder):
        return None
    names = [entry.name for entry in os.scandir(folder) if entry.is_file()]
    variants = set()
    for n in names:
        m = _VARIANT_FILE.search(n)
        if m:
            variants.add(m.group(1) or m.group(2))
        elif n.endswith(".safetensors"):
            return None  # plain weights are there: the failure is something else
    if len(variants) <= 1:
        return variants.pop() if variants else None
    wanted = _DTYPE_VARIANTS.get(str(dtype).removeprefix("torch."))
    if wanted in variants:
        return wanted
    raise ModelNotFoundError(
        f"{folder} holds its weights only as the variants {', '.join(sorted(variants))} (no plain "
        f"`.safetensors`), and the dtype asked ({dtype}) names none of them: load with the dtype of one "
        f"({', '.join(k for k, v in _DTYPE_VARIANTS.items() if v in variants) or 'none known'}), keep one "
        "variant's files, or download the plain weights"
    )


def cached_folder(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
) -> str | None:
    """The folder of ``filename`` (``"unet/config.json"``, ``"model_index.json"``) in the local cache's snapshot of
    a Hub repo, or None when the cache does not hold it. Reads the cache only; never contacts the Hub."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    except Exception as exc:  # noqa: BLE001 - an id the cache cannot hold: from_pretrained gives the error
        logger.debug("no cached folder for %r: %s", repo_id, exc)
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def load_component(
    cls: type[T],
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
    strict: bool = False,
    **kwargs: Any,
) -> T:
    """Call ``cls.from_pretrained`` on a Hub id or a local folder, safetensors only, with actionable errors.

    Args:
        cls (`type`): any class with a ``from_pretrained`` classmethod (transformers / diffusers models,
            tokenizers, processors, schedulers). For model classes (``torch.nn.Module`` subclasses and diffusers
            pipelines) ``use_safetensors=True`` is passed, so pickle checkpoints are never loaded.
        name_or_path (`str` or `os.PathLike`): a Hub repo id (``"Salesforce/blip-image-captioning-large"``) or a
            local folder in the ``save_pretrained`` layout.
        subfolder (`str`, *optional*): folder inside the repo/folder (e.g. ``"unet"`` in the diffusers layout).
        local_files_only (`bool`, *optional*): never contact the Hub. Defaults to `True` when ``HF_HUB_OFFLINE`` /
            ``TRANSFORMERS_OFFLINE`` is set (see :func:`hub_offline`), else `False`. Passing `False` while offline
            mode is set is overridden to `True`. A Hub id is also read from the cache only when the Hub does not
            answer (:func:`hub_reachable`), so a machine without network fails in seconds, not minutes.
        strict (`bool`): for a transformers or diffusers model, refuse weights that leave some of the model's
            parameters unset (a config that names one layer more than its weights hold): transformers fills them
            at random and diffusers leaves them empty ("meta"), each with only a log line.
        **kwargs: forwarded to ``from_pretrained`` (e.g. ``cache_dir``, ``revision``, ``dtype``).

    Returns:
        An instance of ``cls``.

    Raises:
        ModelNotFoundError: the files are missing locally and could not (or may not) be downloaded, the local folder
            does not exist or lacks the files, there are no ``.safetensors`` weights, the files do not fit together
            (a config that does not match its weights), or a tokenizer loaded without a vocabulary. The message
            names the model, where it looked and how to fix it.
    """
    name = str(name_or_path)
    offline = hub_offline()
    if local_files_only is None or offline:
        local_files_only = bool(local_files_only) or offline
    local = looks_like_local_path(name_or_path)
    cache_dir = kwargs.get("cache_dir")
    target = ""
    if local:
        name = os.path.expanduser(name)
        target = os.path.join(name, subfolder) if subfolder else name
        if not os.path.isdir(target) or _is_empty(target):
            raise ModelNotFoundError(
                describe_load_failure(name, subfolder, local=True, offline=offline, cache_dir=cache_dir, cause=None)
            )
    unreachable = False
    if not local and not local_files_only and not hub_reachable():
        unreachable = local_files_only = True  # the cache only: no minutes of retries against an absent network
        logger.info("the Hugging Face Hub cannot be reached; looking for %r in the local cache only", name)
    if _takes_weights(cls):
        kwargs.setdefault("use_safetensors", True)
        if "variant" not in kwargs:
            if not local and local_files_only:  # the Hub cache's snapshot folder, when this component is there
                config = f"{subfolder}/config.json" if subfolder else "config.json"
                target = cached_folder(name, config, cache_dir, kwargs.get("revision")) or ""
            variant = _pick_variant(target, kwargs.get("dtype")) if target else None
            if variant is not None:  # e.g. only the fp16 files of SD1.5/SDXL were downloaded: from_pretrained must
                logger.info("%s holds only %r weights; loading those", target, variant)  # be told
                kwargs["variant"] = variant
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    strict = strict and _reports_loading_info(cls)
    if strict:
        kwargs["output_loading_info"] = True
    logger.debug("Loading %s from %r (local_files_only=%s)", cls.__name__, name, local_files_only)
    what = f"{name!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")

    def not_found(cause: BaseException | None) -> str:
        return describe_load_failure(
            name,
            subfolder,
            local=local,
            offline=offline,
            local_files_only=local_files_only and not unreachable,
            unreachable=unreachable,
            cache_dir=cache_dir,
            cause=cause,
        )

    try:
        with warnings.catch_warnings():
            # diffusers still passes huggingface_hub's retired `local_dir_use_symlinks`; the warning is noise here
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            loaded = cls.from_pretrained(name, local_files_only=local_files_only, **kwargs)  # type: ignore[attr-defined]
    except Exception as exc:
        if "tiktoken" in str(exc) and importlib.util.find_spec("sentencepiece") is None:
            # a vocabulary in spiece.model only (a T5 tokenizer downloaded now): transformers tried tiktoken last
            raise ModelNotFoundError(
                f"Could not load {what}: its vocabulary is a sentencepiece model (spiece.model), which needs "
                "sentencepiece, not installed: pip install 'diffsegmenter[sentencepiece]' (or pip install "
                "sentencepiece)"
            ) from exc
        if not _is_load_failure(exc):
            if any(mark in str(exc) for mark in _MISMATCH):  # not a missing dependency, not out of memory
                first = str(exc).strip().splitlines()[0]
                raise ModelNotFoundError(
                    f"Could not load {what}: its files do not fit together ({type(exc).__name__}: {first}). A "
                    "config that does not match its weights, or a damaged or missing file, gives this; download or "
                    "copy the model again"
                ) from exc
            raise
        raise ModelNotFoundError(not_found(exc)) from exc
    if strict:
        loaded, info = loaded
        unset = sorted(info.get("missing_keys") or ()) + sorted(info.get("mismatched_keys") or ())
        if unset:
            raise ModelNotFoundError(
                f"Could not load {what}: its weights leave {len(unset)} of the model's parameters unset "
                f"({', '.join(map(str, unset[:3]))}{', ...' if len(unset) > 3 else ''}), so its config does not match "
                "its weights; download or copy the model again"
            )
    if not _has_vocabulary(loaded):
        if not local:  # transformers builds a default tokenizer for an id it cannot find, without an error
            raise ModelNotFoundError(not_found(None))
        raise ModelNotFoundError(
            f"Could not load {what}: the tokenizer loaded knows {len(loaded)} token(s), all special, so its "
            f"vocabulary files ({vocabulary_files_text()}) are missing; download or copy the model again"
        )
    return loaded


def _reports_loading_info(cls: type) -> bool:
    """Whether ``cls.from_pretrained`` takes ``output_loading_info`` (transformers and diffusers models)."""
    bases = {("transformers", "PreTrainedModel"), ("diffusers", "ModelMixin")}
    return any((b.__module__.split(".")[0], b.__name__) in bases for b in cls.__mro__)


def _has_vocabulary(loaded: Any) -> bool:
    """False for a tokenizer that knows no words besides its special tokens: transformers builds one, without an
    error, from a folder that lacks the vocabulary files (or for a Hub id it cannot find), and every class then
    gets the same prompt ids. True for anything that is not a tokenizer."""
    special = getattr(loaded, "all_special_ids", None)
    if special is None or not hasattr(loaded, "__len__"):
        return True
    return len(loaded) - len(set(special)) > 1
