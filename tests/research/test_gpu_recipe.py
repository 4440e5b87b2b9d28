"""The one-call GPU recipe (research/shapes/gpu_recipe.sh) is valid before any GPU sees it: bash syntax, every module
it runs exists and accepts its flags, the models it trains fit the shipped size limits."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from research.shapes import components as C
from research.shapes import train, train_mmdit, tune_dit

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "shapes" / "gpu_recipe.sh"
PARSERS = {
    "research.shapes.train": train.build_parser,
    "research.shapes.train_mmdit": train_mmdit.build_parser,
    "research.shapes.tune_dit": tune_dit.build_parser,
}


def _commands() -> list[list[str]]:
    """The ``python -m research.shapes.*`` commands of the script, continuation lines joined, variables filled."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        m = re.search(r"python -m (research\.shapes\.\w+)(.*?)(>|$)", line)
        if m:
            args = re.sub(r'"?\$\{?\(?\(?[A-Z_]+[^ ]*', "1", m.group(2))  # $OUT, "$DIT_S", $((X + 60)) -> 1
            out.append([m.group(1), *shlex.split(args)])
    return out


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_command_parses():
    commands = _commands()
    assert [c[0] for c in commands] == [
        "research.shapes.train_mmdit",
        "research.shapes.tune_dit",
        "research.shapes.train",
    ]
    for module, *args in commands:
        try:
            PARSERS[module]().parse_args(args)
        except SystemExit as exc:  # argparse exits on an unknown flag or bad value
            pytest.fail(f"{module} rejects {args}: exit {exc.code}")


def test_the_trained_unet_fits_the_size_limits():
    unet_cmd = next(c for c in _commands() if c[0] == "research.shapes.train")
    cfg = train.build_parser().parse_args(unet_cmd[1:])
    overrides = train.TrainConfig(unet_channels=cfg.unet_channels, unet_heads=cfg.unet_heads).unet_overrides()
    n = C.count_parameters(C.build_unet(**overrides))
    assert 2 * n < C.MAX_FILE_BYTES  # the fp16 UNet file; checkpoints would refuse to save otherwise
