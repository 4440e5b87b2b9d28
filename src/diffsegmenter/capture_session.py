"""Capture sessions: a UNet's capturing processors installed once per run and switched on per pass.

Installing capture per pass (read every processor, build the capturing ones, ``set_attn_processor`` twice) walks the
UNet's whole module tree four times per forward: about 12 ms of host time per pass on the tests' tiny UNet on one
CPU thread, more on SD1.5's. Within :func:`capture_session` the layers a pass reads get a
:class:`SwitchableCaptureProcessor` when a pass first needs them. While no pass is bound it calls the layer's own
processor (the forward is the uncaptured one, exactly); while a pass is bound (:meth:`CaptureSession.bind`) it runs
the capturing processor of :mod:`diffsegmenter.attention` into that pass's store. Binding sets one attribute per
captured layer and walks nothing. On exit, also after an exception, every layer gets its own processor back.

The switchable processors are cached per UNet and capture plan, so every session installs the *same* objects: a
compiled UNet (``torch.compile``) keeps its compiled graphs from one pass and one session to the next.
:func:`~diffsegmenter.attention.capture_attention` (one pass) opens a session of its own when none is open.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .attention import (
    AgreementCaptureProcessor,
    AttentionStore,
    CrossAttentionCaptureProcessor,
    SelfAttentionCaptureProcessor,
    layer_downsampling_factor,
)

__all__ = ["CaptureSession", "SwitchableCaptureProcessor", "capture_plan", "capture_session", "open_session"]

# unet -> the session open on it; unet -> its layer table and cached switchable processors per plan
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SwitchableCaptureProcessor:
    """A captured layer's processor in a session: its own processor while capture is off, the capturing one on.

    Args:
        original: the layer's own processor (updated at each install).
        capture: a capturing processor of :mod:`diffsegmenter.attention`; capture is on while its ``store`` is set.
    """

    def __init__(self, original: Any, capture: Any) -> None:
        self.original = original
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.capture.store is not None:
            return self.capture(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if temb is not None:
            kwargs["temb"] = temb
        return self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )


def _layers(unet) -> dict[str, tuple[Any, str, int]]:
    """``{processor key: (attention module, "attn1" | "attn2" | "", downsampling factor)}``, computed once per UNet.

    Keys and order are those of diffusers' ``attn_processors`` (every module with ``get_processor``, depth first).
    """
    cache = _CACHE.setdefault(unet, {})
    if "layers" not in cache:
        nd, nu = len(unet.down_blocks), len(unet.up_blocks)
        table = {}
        for name, module in unet.named_modules():
            if name and hasattr(module, "get_processor"):
                key = f"{name}.processor"
                kind = "attn2" if ".attn2." in key else "attn1" if ".attn1." in key else ""
                table[key] = (module, kind, layer_downsampling_factor(key, nd, nu) if kind else 0)
        cache["layers"] = table
    return cache["layers"]


def capture_plan(unet, self_factor: int | None = None) -> dict[str, str]:
    """Which layers to capture: ``{processor key: "cross" | "self"}``.

    Every cross-attention layer (``attn2``); the self-attention layers (``attn1``) at ``self_factor`` (a downsampling
    factor), or at the finest level that has any.

    Raises:
        ValueError: the UNet has no cross-attention layer, or no self-attention layer at ``self_factor``.
    """
    layers = _layers(unet)
    self_layers = {k: f for k, (_, kind, f) in layers.items() if kind == "attn1"}
    plan = {k: "cross" for k, (_, kind, _) in layers.items() if kind == "attn2"}
    if not plan:
        raise ValueError("the UNet has no cross-attention layers (attn2): it cannot be used as a segmenter")
    if self_layers:
        level = min(self_layers.values()) if self_factor is None else int(self_factor)
        if level not in self_layers.values():
            raise ValueError(
                f"no self-attention layers at downsampling factor {level}; this UNet has them at "
                f"{sorted(set(self_layers.values()))}"
            )
        plan.update({k: "self" for k, f in self_layers.items() if f == level})
    return plan


def _switches(unet, self_factor: int | None, agreement: bool) -> dict[str, SwitchableCaptureProcessor]:
    """The cached switchable processors of one plan (built on first use; each capture's store is None)."""
    cache = _CACHE.setdefault(unet, {})
    key = ("plan", self_factor, agreement)
    if key not in cache:
        plan = capture_plan(unet, self_factor)
        switches = {}
        for name, (_, kind, _) in _layers(unet).items():
            role = plan.get(name)
            if role == "cross":
                capture = CrossAttentionCaptureProcessor(None, name)
            elif agreement and kind == "attn1":
                capture = AgreementCaptureProcessor(None, name, keep_qk=role == "self")
            elif role == "self":
                capture = SelfAttentionCaptureProcessor(None, name)
            else:
                continue
            switches[name] = SwitchableCaptureProcessor(None, capture)
        cache[key] = switches
    return cache[key]


class CaptureSession:
    """The switchable processors installed on one UNet, and the pass bound to them (see the module docstring).

    Args:
        unet (`UNet2DConditionModel`): the model (diffusers' block structure, attention modules with
            ``set_processor``).
    """

    def __init__(self, unet) -> None:
        self.unet = unet
        self._layers = _layers(unet)
        self._originals: dict[str, Any] = {}
        self._installed: dict[str, SwitchableCaptureProcessor] = {}
        self._bound: list[tuple[dict[str, SwitchableCaptureProcessor], AttentionStore]] = []

    def _install(self, switches: dict[str, SwitchableCaptureProcessor]) -> None:
        """Put ``switches`` on their layers (only where another processor sits) and the originals back elsewhere.

        What a layer holds is read, not assumed: a processor set on it from outside during the session (e.g.
        ``unet.set_attn_processor``) becomes its own processor (called while capture is off, kept on exit), and a
        switch left on it by an interrupted earlier install is unwrapped, never taken as the layer's own (a switch
        calling itself recursed on every later forward). Each switch is recorded before it is set, so an interrupt
        between the two leaves nothing that :meth:`restore` does not know about.
        """
        for key in [k for k in self._installed if k not in switches]:
            self._put_back(key)
        for key, switch in switches.items():
            module = self._layers[key][0]
            current = module.processor
            if current is switch and self._installed.get(key) is switch:
                continue
            if current is not self._installed.get(key) or key not in self._originals:
                while isinstance(current, SwitchableCaptureProcessor):
                    current = current.original
                self._originals[key] = current
            switch.original = self._originals[key]
            self._installed[key] = switch
            module.set_processor(switch)

    def _put_back(self, key: str) -> None:
        """Give one layer its own processor back, unless something other than the session's switch sits there now
        (set from outside: it stays)."""
        module = self._layers[key][0]
        switch, original = self._installed.pop(key), self._originals.pop(key)
        if module.processor is switch:
            module.set_processor(original)

    @contextmanager
    def bind(self, store: AttentionStore, self_factor: int | None = None) -> Iterator[AttentionStore]:
        """Capture into ``store`` for the duration of the context (one pass); capture is off again on exit.

        Args:
            store (`AttentionStore`): receives the captured tensors; its ``measure_agreement`` picks the plan.
            self_factor (`int`, *optional*): downsampling factor of the self-attention layers read (None = finest).
        """
        switches = _switches(self.unet, None if self_factor is None else int(self_factor), store.measure_agreement)
        self._install(switches)
        self._set_store(self._bound[-1][0] if self._bound else {}, None)
        self._set_store(switches, store)
        self._bound.append((switches, store))
        try:
            yield store
        finally:
            self._bound.pop()
            self._set_store(switches, None)
            if self._bound:  # a pass bound around this one (nested) captures again
                outer, outer_store = self._bound[-1]
                self._install(outer)
                self._set_store(outer, outer_store)

    @staticmethod
    def _set_store(switches: dict[str, SwitchableCaptureProcessor], store: AttentionStore | None) -> None:
        for switch in switches.values():
            switch.capture.store = store

    def restore(self) -> None:
        """Give every captured layer its own processor back."""
        for key in list(self._installed):
            self._installed[key].capture.store = None
            self._put_back(key)


@contextmanager
def capture_session(unet) -> Iterator[CaptureSession]:
    """Keep capturing processors on ``unet`` for the duration of the context; restore its own on exit (always).

    Inside, :func:`~diffsegmenter.attention.capture_attention` binds a pass to the installed processors instead of
    installing its own. A session opened while one is open on the same UNet is that one (the outer restores).

    Yields:
        `CaptureSession`: the session.
    """
    session = _OPEN.get(unet)
    if session is not None:
        yield session
        return
    session = CaptureSession(unet)
    _OPEN[unet] = session
    try:
        yield session
    finally:
        try:
            session.restore()
        finally:
            _OPEN.pop(unet, None)


def open_session(unet) -> CaptureSession | None:
    """The session open on ``unet``, if any."""
    return _OPEN.get(unet)
