"""What a model folder recommends: :class:`ModelSettings`, read from its ``segmenter_config.json``.

The file holds :class:`~diffsegmenter.config.SegmenterConfig` fields (values chosen for that model on validation
data) plus a few keys that are not method settings, written with a leading ``_`` so that older readers skip them::

    {"_classes": ["circle", "square"],                  # the model's own classes
     "_diffusion_filter": {"threshold": 0.0004, ...},   # settings of the diffusion category filter
     "_provenance": "chosen by ... on 150 val scenes",  # how the values were chosen
     "_behaviour": "validated with these departures ...",
     "tau": 0.6, "resolution": 160, ...}                # SegmenterConfig fields

:class:`ModelSettings` gives each of them a typed place instead of leaving them to be dropped. Unknown ``_`` keys are
kept in :attr:`ModelSettings.notes`, so nothing a folder says is lost. Importing this module loads no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SegmenterConfig

__all__ = ["ModelSettings"]

_KEYS = {"_classes": "classes", "_diffusion_filter": "diffusion_filter", "_provenance": "provenance"}


@dataclass
class ModelSettings:
    """A model folder's recommendations (its ``segmenter_config.json``), typed.

    Attributes:
        classes (`list[str]`, *optional*): the model's own class names (``"_classes"``); what
            :meth:`DiffSegmenter.segment <diffsegmenter.DiffSegmenter.segment>` uses when given none.
        segmenter (`dict[str, Any]`): :class:`~diffsegmenter.config.SegmenterConfig` field values, as written
            (checked on the class defaults when read).
        diffusion_filter (`dict[str, Any]`, *optional*): keyword settings of
            :class:`~diffsegmenter.filters.diffusion.DiffusionFilter` chosen for this model (``"_diffusion_filter"``:
            ``timesteps``, ``noise_draws``, ``quantile``, ``threshold``, ``resolution``, ``scoring``,
            ``min_region``); None when not given.
        provenance (`str`, *optional*): how the values were chosen (``"_provenance"``).
        notes (`dict[str, Any]`): every other ``_``-prefixed key, by its name without the ``_`` (e.g. ``"behaviour"``).
        source (`str`, *optional*): the file read, if any.

    Example:
        ```python
        >>> s = ModelSettings.from_dict({"_classes": ["cat"], "tau": 0.5})
        >>> s.classes, s.segmenter_config().tau
        (['cat'], 0.5)
        ```
    """

    classes: list[str] | None = None
    segmenter: dict[str, Any] = field(default_factory=dict)
    diffusion_filter: dict[str, Any] | None = None
    provenance: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> ModelSettings:
        """Read the ``segmenter_config.json`` layout (``_`` keys for what is not a SegmenterConfig field).

        Args:
            data (`dict[str, Any]`): the file's JSON object.
            source (`str`, *optional*): where it came from, for messages.

        Raises:
            ValueError: ``data`` is not a JSON object, ``_classes`` is not a list of strings, ``_diffusion_filter``
                not an object, or a SegmenterConfig field is unknown or has a bad value (the message names the
                file).
        """
        where = f" in {source}" if source else ""
        if not isinstance(data, dict):
            raise ValueError(f"model settings{where} must be a JSON object, got {type(data).__name__}")
        known: dict[str, Any] = {}
        notes: dict[str, Any] = {}
        segmenter: dict[str, Any] = {}
        for key, value in data.items():
            if key in _KEYS:
                known[_KEYS[key]] = value
            elif key.startswith("_"):
                notes[key[1:]] = value
            else:
                segmenter[key] = value
        classes = known.get("classes")
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
            raise ValueError(f"'_classes'{where} must be a list of class names, got {classes!r}")
        flt = known.get("diffusion_filter")
        if flt is not None and not isinstance(flt, dict):
            raise ValueError(f"'_diffusion_filter'{where} must be an object of filter settings, got {flt!r}")
        try:  # now, naming the file: not after a model's weights have loaded, as a bare config error
            SegmenterConfig().replace(**segmenter)
        except ValueError as exc:
            newer = (
                " (a field this version does not know may come from a newer diffsegmenter: pip install -U "
                "diffsegmenter)"
                if source
                else ""
            )
            raise ValueError(f"model settings{where}: {exc}; fix or delete that setting{newer}") from None
        return cls(
            classes=list(classes) if classes is not None else None,
            segmenter=segmenter,
            diffusion_filter=dict(flt) if flt is not None else None,
            provenance=known.get("provenance"),
            notes=notes,
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSettings:
        """Read a ``segmenter_config.json``.

        Raises:
            ValueError: the file is not a JSON object, or holds an unknown field or a bad value (naming the file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix it or delete it") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path} holds a JSON {type(data).__name__}, not an object of settings; fix it or delete it"
            )
        return cls.from_dict(data, source=str(path))

    @classmethod
    def coerce(cls, value: ModelSettings | dict[str, Any] | None) -> ModelSettings:
        """A :class:`ModelSettings` from itself, a dict in the file's layout, or None (no recommendations)."""
        if value is None:
            return cls()
        if isinstance(value, ModelSettings):
            return value
        return cls.from_dict(dict(value))

    def segmenter_config(self, **overrides: Any) -> SegmenterConfig:
        """The recommended :class:`~diffsegmenter.config.SegmenterConfig`, with ``overrides`` on top.

        Raises:
            ValueError: an unknown field name (listing the valid ones) or a bad value.
        """
        return SegmenterConfig().replace(**{**self.segmenter, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The ``segmenter_config.json`` layout (the inverse of :meth:`from_dict`; ``source`` is not written)."""
        out: dict[str, Any] = {}
        if self.classes is not None:
            out["_classes"] = list(self.classes)
        if self.diffusion_filter is not None:
            out["_diffusion_filter"] = dict(self.diffusion_filter)
        out.update({f"_{k}": v for k, v in self.notes.items()})
        out.update(self.segmenter)
        if self.provenance is not None:
            out["_provenance"] = self.provenance
        return out
