"""The README's shapes API example runs as written (offline, CPU)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _shapes_block() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    shapes = [b for b in blocks if 'from_pretrained("shapes")' in b]
    assert len(shapes) == 1, "the README should hold one shapes API example"
    return shapes[0]


def test_readme_shapes_example_runs(capsys) -> None:
    namespace: dict = {}
    exec(compile(_shapes_block(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    res = namespace["res"]
    assert res.classes == ["triangle", "circle"] and res.labels.shape == (64, 64)
    assert res.scores.shape == (2, 64, 64) and len(res.prompts) == 2
    assert "['triangle', 'circle'] (64, 64)" in capsys.readouterr().out
