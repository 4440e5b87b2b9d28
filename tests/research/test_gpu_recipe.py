"""The one-call GPU recipe (research/shapes/gpu_recipe.sh) is valid before any GPU sees it: bash syntax, every module
it runs exists and accepts its flags, the models it trains fit the shipped size limits."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
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
    """The ``python3 -m research.shapes.*`` commands of the script, continuation lines joined, variables filled."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        m = re.search(r"python3 -m (research\.shapes\.\w+)(.*?)(>|$)", line)
        if m:
            args = re.sub(r"\$[A-Z]+_ARGS\b", "", m.group(2))  # $DIT_ARGS, $UNET_ARGS: empty unless set
            args = re.sub(r'"?\$\{?\(?\(?[A-Z_]+[^ ]*', "1", args)  # $OUT, "$DIT_S", $((X + 60)) -> 1
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


@pytest.mark.parametrize(
    "script",
    [SCRIPT, SCRIPT.parents[2] / "benchmarks" / "gpu_run.sh", SCRIPT.parents[2] / "benchmarks" / "gpu_env.sh"],
)
def test_device_scripts_call_python3_only(script):
    """The device image's Python is ``python3`` (a bare ``python`` may not exist there): one wrong name would spend
    a start of the lent machine on nothing."""
    subprocess.run(["bash", "-n", str(script)], check=True)
    bare = [ln for ln in script.read_text().splitlines() if re.search(r"(^|[\s;(|&])python(\s|$)", ln)]
    assert bare == []


def test_the_gpu_env_puts_src_first_where_diffusers_imports(tmp_path):
    """Sourced where ``python3`` imports diffusers (this interpreter, through a shim), it installs nothing and only
    puts src/ first on PYTHONPATH."""
    root = SCRIPT.parents[2]
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    out = subprocess.run(
        ["bash", "-c", 'source benchmarks/gpu_env.sh && echo "$PYTHONPATH"'],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": f"{shim.parent}:/usr/bin:/bin", "PYTHONPATH": "/x"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{root}/src:/x"


def test_the_gpu_env_stops_without_diffusers_or_its_wheel(tmp_path):
    """Where ``python3`` cannot import diffusers and no wheel was carried: a clear message and a failing status."""
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexit 1\n")  # a python3 that imports nothing
    shim.chmod(0o755)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "gpu_env.sh").write_text((SCRIPT.parents[2] / "benchmarks" / "gpu_env.sh").read_text())
    out = subprocess.run(
        ["bash", "-c", "source benchmarks/gpu_env.sh || echo failed"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": f"{shim.parent}:/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "failed"
    assert "no .whl/diffusers-*.whl" in out.stderr
