"""What the CLI prints where programs read it: exact recipe bytes, unwrapped lines, plain help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import modelquant
from modelquant.cli import app

BUNDLED = Path(modelquant.__file__).resolve().parent / "recipes"
runner = CliRunner()


def run_module(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m modelquant ARGS` with stdout a pipe (not a terminal), as in CI and `> file`."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "CI")}
    root = str(Path(modelquant.__file__).resolve().parent.parent)
    environ["PYTHONPATH"] = os.pathsep.join([root, environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "modelquant", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        check=False,
    )


def test_recipes_show_writes_the_exact_bytes(tmp_path: Path) -> None:
    done = run_module("recipes", "show", "digits-int8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (BUNDLED / "digits-int8.yaml").read_bytes()


@pytest.mark.parametrize("env", [{}, {"CI": "true"}], ids=["pipe", "CI"])
def test_piped_lines_do_not_wrap_at_80_columns(tmp_path: Path, env: dict[str, str]) -> None:
    done = run_module("recipes", "list", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    for path in sorted(BUNDLED.glob("*.yaml")):
        about = path.read_text().splitlines()[0].lstrip("# ").strip()
        assert any(line.startswith(path.stem) and line.endswith(about) for line in lines), lines


def test_version_flag_prints_what_the_version_command_prints() -> None:
    flag, command = runner.invoke(app, ["--version"]), runner.invoke(app, ["version"])
    assert flag.exit_code == 0 and command.exit_code == 0
    assert flag.stdout == command.stdout and flag.stdout.startswith("modelquant ")


COMMANDS = [
    [],
    ["compress"],
    ["export"],
    ["evaluate"],
    ["backends"],
    ["benchmark"],
    ["version"],
    ["recipes"],
    ["recipes", "list"],
    ["recipes", "show"],
    ["recipes", "validate"],
    ["recipes", "schema"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "modelquant")
def test_help_shows_no_python_types(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "list[" not in result.output and "<Path>" not in result.output
