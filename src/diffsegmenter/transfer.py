"""Host <-> device copies that do not stall the host.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory makes PyTorch wait for the device's stream to
finish everything queued before it, and so does every ``.cpu()``: the host then cannot queue the next kernels while
the device works. :func:`to_device` copies from pinned (page-locked) memory without waiting;
:func:`to_host` brings many results back with one wait. On the CPU both are plain, copy-free moves.
:func:`check_device` refuses a device this machine does not have before any model is loaded, and
:func:`check_dtype` a precision that is not one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_DTYPE", "check_device", "check_dtype", "to_device", "to_host"]

_DTYPE_SPELLINGS = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_DTYPES = {name: getattr(torch, name) for name in ("float32", "float16", "bfloat16")}
DEFAULT_DTYPE = torch.float32
"""The models' precision when none is given (``DiffSegmenter.from_pretrained``'s ``dtype``)."""


def check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` as a `torch.dtype`: ``torch.float16`` or a name (``"float16"``, ``"fp16"``, ``"bf16"``...).

    A name was passed through to diffusers and transformers as it was: ``"float16"`` gave a model with a float16 text
    encoder and a float32 UNet and VAE, and ``"fp16"`` transformers' error.

    Raises:
        ValueError: anything but float32, float16 or bfloat16 (or their names), with the accepted spellings.
    """
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        name = _DTYPE_SPELLINGS.get(name, name)
        if name in _DTYPES:
            return _DTYPES[name]
    raise ValueError(
        f"dtype must be torch.float32, torch.float16 or torch.bfloat16 (or 'float32'/'fp32', 'float16'/'fp16', "
        f"'bfloat16'/'bf16'), got {dtype!r}"
    )


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a `torch.device`, refused when it is not a device name or this machine (or this torch build)
    does not have it: checked before a model is loaded, so the answer comes in a second with the way out.

    Args:
        device (`torch.device` or `str`): ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... (``"auto"`` is the
            command line's, resolved before this).

    Returns:
        `torch.device`.

    Raises:
        ValueError: a malformed name, a CUDA device without a CUDA build or GPU, a CUDA index beyond the GPUs
            visible, MPS where it is not available, or another backend that is not available.
    """
    way_out = "use 'cpu', or 'auto' on the command line (a GPU when there is one)"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device name ({exc}); {way_out}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no GPU"
            raise ValueError(
                f"device {str(dev)!r}: this torch build {build}; install the CUDA build of torch (README, Set-up) "
                f"on a machine with an NVIDIA GPU, or {way_out}"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(dev)!r}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {str(dev)!r}: MPS (Apple GPUs) is not available here; {way_out}")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if not callable(available) or not available():
            raise ValueError(f"device {str(dev)!r}: the {dev.type!r} backend is not available here; {way_out}")
    return dev


def to_device(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` on ``device`` (in ``dtype`` if given), copied from pinned memory without waiting on a CUDA device.

    Args:
        x (`torch.Tensor`): any tensor (a host tensor is pinned first when the target is a CUDA device).
        device (`torch.device` or `str`): the target.
        dtype (`torch.dtype`, *optional*): cast after the copy (on the device).

    Returns:
        `torch.Tensor`: on ``device``; ``x`` itself when it is already there in that dtype.
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    return x if dtype is None else x.to(dtype)


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """CPU copies of ``tensors`` with one wait for the device (pinned buffers, non-blocking copies, one sync).

    Args:
        tensors (`Sequence[torch.Tensor]`): tensors on any devices.

    Returns:
        `list[torch.Tensor]`: the same values on the CPU, in order (CPU tensors are returned as they are).
    """
    out: list[torch.Tensor] = []
    devices = set()
    for t in tensors:
        if t.device.type == "cuda":
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t, non_blocking=True)
            out.append(buf)
            devices.add(t.device)
        else:
            out.append(t.cpu())
    for dev in devices:
        torch.cuda.current_stream(dev).synchronize()
    return out
