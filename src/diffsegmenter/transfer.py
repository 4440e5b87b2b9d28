"""Host <-> device copies that do not stall the host.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory makes PyTorch wait for the device's stream to
finish everything queued before it, and so does every ``.cpu()``: the host then cannot queue the next kernels while
the device works. :func:`to_device` copies from pinned (page-locked) memory without waiting;
:func:`to_host` brings many results back with one wait. On the CPU both are plain, copy-free moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["to_device", "to_host"]


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
