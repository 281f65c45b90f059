"""Helpers for the robustness suite: CLI runs and one-line error checks."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from modelquant.cli import app

runner = CliRunner()


def compress(recipe: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(app, ["compress", str(recipe), "--out", str(out), *extra])


def last_line(result: Result) -> str:
    """The line a user reads last (progress comes first); no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    return lines[-1]
