"""What a diffusers model folder must hold, checked from its file names before any weights are read.

A model folder that a download or a copy left incomplete (a missing ``scheduler/`` folder, a tokenizer without its
vocabulary, a shard of a sharded checkpoint) used to be found out component by component, after the components
before it had loaded (tens of gigabytes for FLUX), or not at all: a tokenizer folder holding only
``tokenizer_config.json`` loads as a tokenizer that knows no words, and every class then got the same map. The
checks here run on a local folder, or on the Hugging Face cache's copy of a Hub id when the run reads the cache only
(offline, or the Hub does not answer); a Hub id that will be downloaded is checked by the download itself.

Each check raises :class:`~diffsegmenter.hub.ModelNotFoundError` naming the folder, what is missing and how to get
it (download or copy the model again).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .hub import (
    SINGLE_FILE_ADVICE,
    TOKENIZER_VOCABULARIES,
    ModelNotFoundError,
    cached_folder,
    describe_load_failure,
    looks_like_local_path,
    reads_cache_only,
    vocabulary_files_text,
)

__all__ = ["model_root", "check_component_files", "check_model_files", "check_not_single_file"]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHARD = re.compile(r"-\d+-of-\d+(\.[A-Za-z0-9_]+)?\.safetensors$")


def model_root(src: str, local_files_only: bool | None = None) -> Path | None:
    """The folder whose files a load will read: ``src`` itself when it is a local path; for a Hub id, the cache's
    snapshot folder when the run reads the cache only (``local_files_only``, ``HF_HUB_OFFLINE``, or no answer from
    the Hub) and the cache holds the model's ``model_index.json``; else None (the download checks its files).

    Args:
        src (`str`): a local folder or a Hub id (a shipped model's name already resolved to its folder).
        local_files_only (`bool`, *optional*): as given to the loader.

    Returns:
        `Path` or `None`.
    """
    if looks_like_local_path(src):
        return Path(os.path.expanduser(src))
    if not reads_cache_only(local_files_only):
        return None
    found = cached_folder(src, "model_index.json")
    return Path(found) if found is not None else None


def check_not_single_file(src: str) -> None:
    """Refuse a path to one checkpoint file (``model.safetensors``), which is not the diffusers folder layout.

    Raises:
        ModelNotFoundError: naming the conversion that writes a folder.
    """
    path = Path(os.path.expanduser(src))
    if looks_like_local_path(src) and path.is_file():
        raise ModelNotFoundError(f"{src} is a single file; {SINGLE_FILE_ADVICE}")


def _kind(name: str) -> str:
    if name.startswith("tokenizer"):
        return "tokenizer"
    if name.startswith("scheduler"):
        return "scheduler"
    return "model"


def _again(src: str, local: bool) -> str:
    how = "`hf download <repo_id> --local-dir <folder>`" if local else f"`hf download {src}`"
    return f"download or copy the model again ({how})"


def check_component_files(root: Path, name: str, *, src: str, local: bool = True) -> None:
    """Check that ``root/name`` holds what its kind of component needs, from file names only.

    A model (``config.json`` and ``.safetensors`` weights: every shard an index names, or a single variant),
    a scheduler (``scheduler_config.json``) or a tokenizer (one of :data:`TOKENIZER_VOCABULARIES`), decided by the
    component's name as ``model_index.json`` spells it (``tokenizer_2`` is a tokenizer).

    Args:
        root (`Path`): the model folder (or the cache's snapshot folder).
        name (`str`): the component's subfolder, e.g. ``"unet"``.
        src (`str`): what the user passed, for the message.
        local (`bool`): ``src`` is a local folder (else a Hub id read from the cache).

    Raises:
        ModelNotFoundError: the folder is missing, empty, or lacks a needed file; the message names the file.
    """
    folder = root / name
    if not folder.is_dir() or not any(folder.iterdir()):
        if local:
            text = describe_load_failure(src, name, local=True, offline=False, cache_dir=None, cause=None)
        else:
            text = (
                f"{src}: the Hugging Face cache's copy of it ({root}) has no {name}/ files (a partial download); "
                f"this run reads the cache only, so {_again(src, local)} on a machine with network"
            )
        raise ModelNotFoundError(text)
    present = {p.name for p in folder.iterdir() if p.is_file()}  # a dangling cache link (lost blob) is not a file
    kind = _kind(name)
    where = f"{src}: {name}/"
    if kind == "scheduler":
        if "scheduler_config.json" not in present:
            raise ModelNotFoundError(f"{where} has no scheduler_config.json; {_again(src, local)}")
        return
    if kind == "tokenizer":
        readable = [files for files in TOKENIZER_VOCABULARIES if all(f in present for f in files)]
        if readable == [("spiece.model",)] and importlib.util.find_spec("sentencepiece") is None:
            # transformers then tries tiktoken and fails with "`tiktoken` is required to read a `tiktoken` file"
            raise ModelNotFoundError(
                f"{where} holds its vocabulary as spiece.model only (no tokenizer.json), which transformers reads "
                "with sentencepiece, not installed: pip install 'diffsegmenter[sentencepiece]' (or pip install "
                "sentencepiece)"
            )
        if readable:
            return
        pairs = [files for files in TOKENIZER_VOCABULARIES if len(files) > 1 and any(f in present for f in files)]
        lacking = [f for files in pairs for f in files if f not in present]
        what = (
            f"lacks {', '.join(lacking)} (its vocabulary comes in {' + '.join(pairs[0])})"
            if lacking
            else f"holds no vocabulary ({vocabulary_files_text()})"
        )
        raise ModelNotFoundError(
            f"{where} {what}: without it the tokenizer knows no words and every class would get the same map; "
            f"{_again(src, local)}"
        )
    if "config.json" not in present:
        raise ModelNotFoundError(f"{where} has no config.json; {_again(src, local)}")
    _check_weights(folder, present, where, _again(src, local))


def _check_weights(folder: Path, present: set[str], where: str, again: str) -> None:
    """Safetensors weights are there: a single file, or every shard of at least one index (an fp16-only download
    keeps the plain index too, whose shards it left out: the loader then reads the variant)."""
    weights = [f for f in present if f.endswith(".safetensors")]
    indexes = sorted(f for f in present if ".safetensors.index" in f and f.endswith(".json"))
    # a single variant file (model.fp16.safetensors) is read instead of an incomplete plain index; a plain single
    # file is not (the loaders prefer the index beside it)
    single_variants = [f for f in weights if not _SHARD.search(f) and f.count(".") >= 2]
    incomplete: list[tuple[str, int, list[str]]] = []
    for index in indexes:
        try:
            shards = set(json.loads((folder / index).read_text(encoding="utf-8-sig"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelNotFoundError(f"{where}{index} is not a weights index (damaged); {again}") from None
        missing = sorted(str(s) for s in shards if str(s) not in present)
        if not missing:
            return
        incomplete.append((index, len(shards), missing))
    if incomplete and not single_variants:
        index, count, missing = incomplete[0]
        raise ModelNotFoundError(
            f"{where}{index} names {count} weight shard(s) and {len(missing)} are missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); an interrupted download leaves "
            f"this: {again}"
        )
    if weights:
        return
    pickled = sorted(f for f in present if f.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise ModelNotFoundError(
            f"{where} holds only pickle weights ({', '.join(pickled[:3])}), no `.safetensors`. This package only loads "
            "safetensors weights (a pickle file can run code when read). Use a repository or folder that provides "
            "`*.safetensors` files, or convert a checkpoint you trust once (load it with `use_safetensors=False`, "
            "then `save_pretrained(folder)`) and pass that folder."
        )
    raise ModelNotFoundError(f"{where} has a config.json but no weights file; {again}")


def check_model_files(
    src: str, names: Iterable[str], *, optional: Iterable[str] = (), local_files_only: bool | None = None
) -> None:
    """Check every component folder a load will read, before the first one is loaded.

    Args:
        src (`str`): a local folder or a Hub id.
        names: the components (``model_index.json`` keys, which are also their subfolders).
        optional: components that may be absent (SD3's T5): checked only when their folder exists.
        local_files_only (`bool`, *optional*): as given to the loader.

    Raises:
        ModelNotFoundError: from :func:`check_component_files`, for the first component that fails.
    """
    root = model_root(src, local_files_only)
    if root is None:
        return
    local = looks_like_local_path(src)
    skip = set(optional)
    for name in names:
        if name in skip and not (root / name).exists():
            continue
        check_component_files(root, name, src=src, local=local)
