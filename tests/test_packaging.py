"""Dependencies: every third-party import of the package is declared, and optional ones say which extra they need."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffsegmenter
from diffsegmenter._optional import require
from tests.test_layering import PACKAGE, package_edges

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"PIL": "pillow", "huggingface_hub": "huggingface-hub", "cv2": "opencv-python-headless"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def test_every_third_party_import_is_declared(project):
    core = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    optional = set().union(*(reqs for name, reqs in extras.items() if name != "dev"))
    problems = []
    for e in package_edges(Path(diffsegmenter.__file__).parent):
        top = e.target.split(".")[0]
        if not top or top == PACKAGE or top in sys.stdlib_module_names or e.type_checking:
            continue
        dist = DISTRIBUTIONS.get(top, top).lower().replace("_", "-")
        if e.at_import and dist not in core:
            problems.append(f"{e.source}:{e.line} imports {top} when imported, but {dist} is no core dependency")
        elif dist not in core | optional:
            problems.append(f"{e.source}:{e.line} imports {top}, declared neither as core nor in an extra")
    assert problems == []
    assert {"psutil", "torch", "diffusers", "transformers"} <= core
    assert "accelerate" in core  # diffusers' low-memory loading, and eval under accelerate launch
    assert not core & {"torchmetrics", "pycocotools"}  # a test's check and an optional feature
    assert extras["rle"] == {"pycocotools"}
    assert {"pytest", "ruff", "torchmetrics", "diffsegmenter"} <= extras["dev"]  # dev pulls [rle] in


def test_every_core_floor_is_the_one_the_floors_check_pins(project):
    """``.ci/floors`` tests the lowest versions pyproject.toml allows only while .ci/floors.txt pins exactly those."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lines = (PYPROJECT.parent / ".ci" / "floors.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in (ln.split("#")[0].strip() for ln in lines):
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: .ci/floors.txt pins exact versions"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    floors = {}
    for text in project["dependencies"]:
        req = Requirement(text)
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{text}: every core dependency states one floor (>=)"
        floors[canonicalize_name(req.name)] = lower[0]
    assert pins == floors


def test_require_names_the_extra_to_install():
    assert require("json", extra="rle", feature="x").__name__ == "json"
    with pytest.raises(ImportError, match=r"COCO RLE output needs no_such_mod_13.*diffsegmenter\[rle\]"):
        require("no_such_mod_13.mask", extra="rle", feature="COCO RLE output")


def test_rle_output_without_pycocotools_names_the_extra(monkeypatch):
    from diffsegmenter.io import decode_rle_records, encode_rle_records

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    labels = np.zeros((4, 4), np.int64)
    with pytest.raises(ImportError, match=r"diffsegmenter\[rle\]"):
        encode_rle_records(labels, np.zeros((1, 4, 4), np.float32), ["a"])
    with pytest.raises(ImportError, match=r"diffsegmenter\[rle\]"):
        decode_rle_records([])


def test_loading_a_model_folder_leaves_no_resource_warning():
    """Each component's folder check listed it with an unclosed os.scandir (a ResourceWarning per component under
    python -X dev or -W error)."""
    code = "from diffsegmenter import DiffSegmenter; DiffSegmenter.from_pretrained('shapes')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr


def test_the_wheel_carries_the_licence_and_the_typing_marker(project):
    """Apache-2.0 asks for its text to travel with the package; type checkers read annotations only with py.typed."""
    package = Path(diffsegmenter.__file__).parent
    assert (package / "py.typed").is_file() and re.search(r'diffsegmenter = \[.*"py\.typed"', PYPROJECT.read_text())
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (PYPROJECT.parent / "LICENSE").read_text(encoding="utf-8")
