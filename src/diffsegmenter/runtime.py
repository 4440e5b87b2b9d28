"""Speed options that change no setting of the method: ``torch.compile`` and channels-last memory.

They are runtime choices of a loaded model (:meth:`DiffSegmenter.optimize`, ``from_pretrained(compile=...,
channels_last=...)``), not :class:`~diffsegmenter.config.SegmenterConfig` fields: the maps agree with the plain
model's to float rounding.

* ``compile``: ``torch.compile`` of the denoiser (UNet or transformer) and of the VAE encoder, in place
  (``nn.Module.compile``), so every caller (segmenting, filters, editing) runs the compiled forward. Attention capture
  keeps working: the capturing processors are ordinary Python the compiler traces, and a capture session installs
  the same processor objects every time (:mod:`diffsegmenter.capture_session`), so a compiled graph is reused from
  one pass to the next. Each new batch shape compiles once (minutes for SD1.5 with ``"max-autotune"``).
* ``channels_last``: NHWC memory for the UNet's and the VAE's convolutions, which tensor-core convolution kernels
  prefer in fp16/bf16 on recent NVIDIA GPUs (on a CPU it is usually no faster).
"""

from __future__ import annotations

from typing import Any

import torch

from .config import COMPILE_MODES

__all__ = ["COMPILE_MODES", "check_compile", "optimize_backbone"]


def _modules(backbone: Any) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """The backbone's denoiser (``unet`` or ``transformer``) and its VAE, if it has them."""
    denoiser = getattr(backbone, "unet", None) or getattr(backbone, "transformer", None)
    return denoiser, getattr(backbone, "vae", None)


def check_compile(compile: bool | str) -> None:
    """Refuse a ``compile=`` value that is neither a bool nor one of :data:`COMPILE_MODES` (``ValueError``)."""
    if compile not in (False, True) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")


def optimize_backbone(
    backbone: Any,
    *,
    compile: bool | str = False,
    channels_last: bool = False,
    compile_vae: bool = True,
    backend: str = "inductor",
) -> None:
    """Apply the speed options to a backbone's modules, in place.

    Args:
        backbone (`DiffusionBackbone`): the model (its ``unet`` or ``transformer``, and its ``vae``).
        compile (`bool` or `str`, *optional*, defaults to False): True (torch's default mode) or one of
            :data:`COMPILE_MODES`.
        channels_last (`bool`, *optional*, defaults to False): channels-last memory for the UNet and VAE.
        compile_vae (`bool`, *optional*, defaults to True): compile the VAE encoder too (False: the denoiser only,
            half the compile time).
        backend (`str`, *optional*, defaults to "inductor"): ``torch.compile``'s backend (``"aot_eager"`` traces
            without generating kernels: for tests).

    Raises:
        ValueError: an unknown compile mode; a backbone without a denoiser module.
    """
    check_compile(compile)
    denoiser, vae = _modules(backbone)
    if denoiser is None:
        raise ValueError(f"{type(backbone).__name__} has no unet or transformer to optimise")
    if channels_last:
        for module in (getattr(backbone, "unet", None), vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile:
        kwargs: dict[str, Any] = {"backend": backend}
        if compile is not True and compile != "default":
            kwargs["mode"] = compile
        denoiser.compile(**kwargs)
        if compile_vae and vae is not None and hasattr(vae, "encoder"):
            vae.encoder.compile(**kwargs)
