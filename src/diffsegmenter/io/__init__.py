"""Everything that reads or writes result files: one atomic writer, the palette, the formats and the result paths.

================  ==============================================================================================
``atomic``        the one atomic writer ([`atomic_open`]) and its temporary-name rule; JSON, text and npz helpers
``palette``       [`VOC_PALETTE`] (the one name of the PASCAL VOC colour map), class colours, the heat-map colours
``checks``        what every writer checks (label maps, score maps, class names, stems)
``formats``       the formats as a registry: png, overlay, heatmaps, rle, npz and the dataset exports coco, yolo,
                  labelstudio (run-level files gathered after the loop; see ``register_format``)
``sidecar``       the ``<stem>.json`` that describes a result and marks its image finished
``results``       one image's output names, [`write_result`] (sidecar last), [`is_done`], [`earlier_outputs`]
``paths``         [`image_key`] (the one image name), the jobs of a ``segment`` run and the output-name collision rules
================  ==============================================================================================

Importing this package imports none of them: the names below load their module on first use (numpy and Pillow
are only needed once something is written).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "atomic_open": "atomic",
    "remove_stale_temp_files": "atomic",
    "temp_path": "atomic",
    "write_json": "atomic",
    "write_npz": "atomic",
    "write_text": "atomic",
    "HEATMAP_LUT": "palette",
    "IGNORE_INDEX": "palette",
    "VOC_PALETTE": "palette",
    "class_colors": "palette",
    "colorize_scores": "palette",
    "ResultLike": "checks",
    "FORMATS": "formats",
    "OUTPUT_FORMATS": "formats",
    "EXPORT_FORMATS": "formats",
    "OutputFormat": "formats",
    "register_format": "formats",
    "load_label_png": "formats.label_png",
    "save_label_png": "formats.label_png",
    "render_overlay": "formats.overlay",
    "save_overlay": "formats.overlay",
    "heatmap_filenames": "formats.heatmaps",
    "safe_filename": "formats.heatmaps",
    "save_heatmaps": "formats.heatmaps",
    "decode_rle_records": "formats.rle",
    "encode_rle_records": "formats.rle",
    "load_rle_json": "formats.rle",
    "save_rle_json": "formats.rle",
    "NPZ_SCORES_MAX_SIDE": "formats.npz",
    "load_npz": "formats.npz",
    "save_npz": "formats.npz",
    "load_sidecar": "sidecar",
    "package_version": "sidecar",
    "save_sidecar": "sidecar",
    "OutputPaths": "results",
    "earlier_outputs": "results",
    "is_done": "results",
    "output_paths": "results",
    "write_result": "results",
    "write_run_outputs": "results",
    "RunImage": "formats",
    "SKIPPED_FILE": "paths",
    "ImageJob": "paths",
    "collect_jobs": "paths",
    "image_key": "paths",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
