"""The package's import graph keeps its layers: core maths and capture never reach up to the front ends.

Every import of every module of the installed package is read with ``ast`` (function-level ones too, and the
optional dependencies loaded through ``diffsegmenter._optional.require``), then checked against the rules below.
The checker runs on a synthetic graph first, so a rule that could never fire would fail here too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import diffsegmenter

PACKAGE = "diffsegmenter"

#: Core maths and capture (and any backbone module): they must not depend on front ends, I/O or research.
CORE_MODULES = (
    "aggregation",
    "attention",
    "capture_session",
    "transfer",
    "runtime",
    "joint_attention",
    "readouts",
    "readout_ops",
    "passes",
    "decision",
    "tokens",
    "config",
    "prompts",
    "refinement",
)
CORE_PATTERN = re.compile(rf"^{PACKAGE}\.(?:{'|'.join(CORE_MODULES)}|backbones?(?:\..+)?)$")
#: What core modules may never import (a module or anything below it).
FORBIDDEN_FOR_CORE = tuple(f"{PACKAGE}.{name}" for name in ("cli", "app", "io", "batch", "evaluation", "filters")) + (
    "research",
)
#: The front half's own layers, bottom up: io (files) < batch (the runner) < evaluation < app (the web app) < cli.
#: A layer never imports one above it (``cli.serve`` starts the app; the app never reaches into the CLI).
FRONT_LAYERS = ("io", "batch", "evaluation", "app", "cli")
#: Heavy libraries a core module may load only where it runs them (function level) or for type checkers.
HEAVY_AT_IMPORT = ("diffusers", "transformers")


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` (absolute module names) at ``line``.

    ``at_import`` is True when the statement runs when ``source`` is imported (module or class level, not inside a
    function); ``type_checking`` when it sits under ``if TYPE_CHECKING:`` (never runs).
    """

    source: str
    target: str
    line: int = 0
    at_import: bool = True
    type_checking: bool = False


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _resolve(module: str | None, level: int, source: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    parts = source.split(".") if is_package else source.split(".")[:-1]
    if level > 1:
        parts = parts[: -(level - 1)]
    return ".".join([*parts, *([module] if module else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_edges(source_code: str, source: str, is_package: bool = False, known: frozenset[str] = frozenset()):
    """All imports of one module's source, as `Edge`s.

    ``from X import name`` gives ``X.name`` when that is a module in ``known``, else ``X``. A call
    ``require("mod", ...)`` or ``importlib.import_module("mod")`` with a literal absolute name counts as an import
    of ``mod``.
    """
    edges: list[Edge] = []

    def visit(node: ast.AST, at_import: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                edges.append(Edge(source, alias.name, node.lineno, at_import, type_checking))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, source, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                edges.append(Edge(source, sub if sub in known else base, node.lineno, at_import, type_checking))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            if name in ("require", "import_module") and isinstance(first, str) and not first.startswith("."):
                edges.append(Edge(source, first, node.lineno, at_import, type_checking))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, at_import, True)
            for child in node.orelse:
                visit(child, at_import, type_checking)
            return
        inner = at_import and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(ast.parse(source_code), True, False)
    return edges


def package_modules(root: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every ``.py`` file under the package folder ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        is_pkg = rel[-1] == "__init__"
        mods[".".join((package, *(rel[:-1] if is_pkg else rel)))] = (path, is_pkg)
    return mods


def package_edges(root: Path) -> list[Edge]:
    mods = package_modules(root)
    known = frozenset(mods)
    return [e for name, (path, is_pkg) in mods.items() for e in module_edges(path.read_text(), name, is_pkg, known)]


def _front_layer(name: str) -> int | None:
    """Index of the front-half layer (in `FRONT_LAYERS`) that module `name` belongs to, or None."""
    for index, layer in enumerate(FRONT_LAYERS):
        if _within(name, f"{PACKAGE}.{layer}"):
            return index
    return None


def layering_violations(edges) -> list[str]:
    """Every edge that breaks a rule, as a readable line (empty: the layers hold)."""
    bad = []
    for e in edges:
        where = f"{e.source}:{e.line} imports {e.target}"
        if _within(e.source, PACKAGE) and _within(e.target, "research"):
            bad.append(f"{where}: the installed package may not import research/ (it is not installed)")
        elif CORE_PATTERN.match(e.source) and any(_within(e.target, f) for f in FORBIDDEN_FOR_CORE):
            bad.append(f"{where}: core maths/capture may not depend on front ends, I/O, evaluation or filters")
        elif _front_layer(e.source) is not None and (_front_layer(e.target) or -1) > _front_layer(e.source):
            bad.append(f"{where}: {FRONT_LAYERS[_front_layer(e.source)]} may not import a layer above it")
        if (
            CORE_PATTERN.match(e.source)
            and e.at_import
            and not e.type_checking
            and any(_within(e.target, h) for h in HEAVY_AT_IMPORT)
        ):
            bad.append(f"{where} at import time: import it where it runs, or under TYPE_CHECKING for a type hint")
    return bad


# ------------------------------------------------------------------------------------------ the checker itself


def test_the_checker_flags_synthetic_violations_and_passes_allowed_edges():
    bad = [
        Edge("diffsegmenter.aggregation", "diffsegmenter.cli"),
        Edge("diffsegmenter.attention", "diffsegmenter.io.results", at_import=False),  # function level counts too
        Edge("diffsegmenter.prompts", "diffsegmenter.evaluation.metrics"),
        Edge("diffsegmenter.tokens", "diffsegmenter.filters.base"),
        Edge("diffsegmenter.config", "research.shapes.world"),
        Edge("diffsegmenter.backbones.sd", "diffsegmenter.io.atomic"),
        Edge("diffsegmenter.filters.clip", "research.shapes.tokenizer", at_import=False),
        Edge("diffsegmenter.attention", "diffusers.models.attention_processor"),
        Edge("diffsegmenter.io.results", "diffsegmenter.batch.runner", at_import=False),
        Edge("diffsegmenter.io.paths", "diffsegmenter.cli"),
        Edge("diffsegmenter.batch.images", "diffsegmenter.evaluation.harness"),
        Edge("diffsegmenter.evaluation.harness", "diffsegmenter.cli.evaluate", at_import=False),
        Edge("diffsegmenter.app", "diffsegmenter.cli.model", at_import=False),
        Edge("diffsegmenter.io.formats.overlay", "diffsegmenter.app", at_import=False),
        Edge("diffsegmenter.segmenter", "research.shapes.world", at_import=False),
        Edge("diffsegmenter.aggregation", "diffsegmenter.app", at_import=False),
    ]
    for edge in bad:
        assert layering_violations([edge]), edge
    good = [
        Edge("diffsegmenter.cli", "diffsegmenter.io"),
        Edge("diffsegmenter.cli.evaluate", "diffsegmenter.evaluation.harness"),
        Edge("diffsegmenter.cli.serve", "diffsegmenter.app", at_import=False),
        Edge("diffsegmenter.app", "diffsegmenter.io.formats.overlay", at_import=False),
        Edge("diffsegmenter.evaluation.harness", "diffsegmenter.batch.runner"),
        Edge("diffsegmenter.batch.images", "diffsegmenter.io.results"),
        Edge("diffsegmenter.io.paths", "diffsegmenter.images"),
        Edge("diffsegmenter.segmenter", "diffsegmenter.attention"),
        Edge("diffsegmenter.prompts", "diffsegmenter.tokens"),
        Edge("diffsegmenter.attention", "diffusers.models.attention_processor", type_checking=True),
        Edge("diffsegmenter.attention", "diffusers", at_import=False),
        Edge("diffsegmenter.loading", "diffusers"),
        Edge("diffsegmenter.configuration", "diffsegmenter.cli"),  # not a core module, despite the prefix
        Edge("research.shapes.tune", "diffsegmenter.segmenter"),
    ]
    assert layering_violations(good) == []


def test_the_collector_sees_relative_function_level_and_type_checking_imports():
    code = (
        "from typing import TYPE_CHECKING\n"
        "from . import tokens\n"
        "if TYPE_CHECKING:\n"
        "    from diffusers import UNet2DConditionModel\n"
        "class A:\n"
        "    import json\n"
        "def f():\n"
        "    from ..cli import main\n"
        "    mask = require('pycocotools.mask', extra='rle', feature='x')\n"
    )
    known = frozenset({"diffsegmenter.filters.tokens"})
    edges = {e.target: e for e in module_edges(code, "diffsegmenter.filters.clip", known=known)}
    assert edges["diffsegmenter.filters.tokens"].at_import
    assert edges["diffusers"].type_checking and not edges["json"].type_checking and edges["json"].at_import
    assert not edges["diffsegmenter.cli"].at_import
    assert not edges["pycocotools.mask"].at_import
    pkg = {e.target for e in module_edges("from .metrics import x\n", "diffsegmenter.evaluation", is_package=True)}
    assert pkg == {"diffsegmenter.evaluation.metrics"}


# ------------------------------------------------------------------------------------------ the real package


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return package_edges(Path(diffsegmenter.__file__).parent)


def test_the_package_keeps_its_layers(edges):
    sources = {e.source for e in edges}
    assert {f"{PACKAGE}.{m}" for m in CORE_MODULES} <= sources  # the rules reach the core modules
    assert any(_within(e.target, f"{PACKAGE}.io") and not e.at_import for e in edges)  # function-level edges are seen
    assert {f"{PACKAGE}.{layer}" for layer in FRONT_LAYERS} <= {e.source.rsplit(".", 1)[0] for e in edges} | sources
    assert layering_violations(edges) == []


def test_importing_attention_loads_no_diffusers():
    code = "import sys, diffsegmenter.attention; print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
