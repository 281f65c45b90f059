"""Progress and logs: bars on a terminal, plain unwrapped lines in CI, nothing with --quiet, every
line with a timestamp in --log-file."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from modelquant import progress
from tests.robustness.conftest import compress, last_line

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ")
ANSI = "\x1b["


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=80), buffer


# ---------------------------------------------------------------- the reporter


def test_plain_mode_prints_lines_as_they_are(tmp_path: Path) -> None:
    console, buffer = _console(terminal=True)  # plain even on a terminal (CI set)
    reporter = progress.Reporter(console, "plain")
    long = "a progress line far longer than the eighty columns of this console " * 3
    reporter.line(long)
    with reporter.task("fine-tune", total=4, unit="steps") as task:
        task.advance(2, info="loss 0.5")
        task.note("epoch 1/2, loss 0.4000")
        task.advance(2)
    text = buffer.getvalue()
    assert ANSI not in text
    assert text.splitlines() == [
        f"· {long}",  # one line: never wrapped
        "· fine-tune: 4 steps",
        "· fine-tune: epoch 1/2, loss 0.4000",
        text.splitlines()[-1],
    ]
    assert re.fullmatch(r"· fine-tune: done in \d+\.\d s", text.splitlines()[-1])


def test_quiet_mode_prints_nothing_but_logs_everything(tmp_path: Path) -> None:
    console, buffer = _console(terminal=True)
    log = tmp_path / "run.log"
    reporter = progress.Reporter(console, "quiet", log)
    reporter.line("stage 1 export: running")
    with reporter.task("calibrating (minmax)", total=2, unit="batches") as task:
        task.advance(2)
    reporter.close()
    assert buffer.getvalue() == ""
    lines = log.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    assert [STAMP.sub("", line) for line in lines][:2] == [
        "stage 1 export: running",
        "calibrating (minmax): 2 batches",
    ]
    assert STAMP.sub("", lines[2]).startswith("calibrating (minmax): done in ")


def test_rich_mode_draws_a_bar_on_a_terminal() -> None:
    console, buffer = _console(terminal=True)
    reporter = progress.Reporter(console, "rich")
    with reporter.task("timing cpu batch 1", total=10, unit="runs") as task:
        assert reporter._bar is not None
        task.advance(10)
    assert reporter._bar is None
    assert "timing cpu batch 1" in buffer.getvalue() and ANSI in buffer.getvalue()


def test_the_mode_follows_quiet_ci_and_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress.choose_mode(False, Tty()) == "rich"
    assert progress.choose_mode(False, io.StringIO()) == "plain"
    assert progress.choose_mode(True, Tty()) == "quiet"
    monkeypatch.setenv("CI", "true")
    assert progress.choose_mode(False, Tty()) == "plain"
    monkeypatch.setenv("CI", "false")
    assert progress.choose_mode(False, Tty()) == "rich"


def test_tasks_use_the_current_reporter() -> None:
    console, buffer = _console(terminal=False)
    with progress.reporting(progress.Reporter(console, "plain")):
        with progress.task("analyze", total=3, unit="steps") as task:
            task.update(1, 3, "layer 1/3")
    assert buffer.getvalue().splitlines() == ["· analyze: 3 steps"]


# ---------------------------------------------------------------- the command line


def test_quiet_prints_only_the_final_line(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = compress(write_recipe(), tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("done: all gates passed"), result.output


def test_log_file_gets_every_line_with_a_timestamp_appended(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe, out, log = write_recipe(), tmp_path / "out", tmp_path / "logs" / "run.log"
    assert compress(recipe, out, "--quiet", "--log-file", str(log)).exit_code == 0
    first = log.read_text().splitlines()
    assert first and all(STAMP.match(line) for line in first), first
    said = [STAMP.sub("", line) for line in first]
    for expected in (
        "stage 1 export: running",
        "stage 2 quantize: running",
        "calibrating (minmax): 4 batches",
        "measuring baseline and compressed",
        "timing cpu batch 8 (baseline, compressed): 20 runs",
    ):
        assert expected in said, said
    assert said[-1].startswith("done: all gates passed. Report: ")

    again = compress(recipe, out, "--log-file", str(log))  # not quiet: the same lines
    assert again.exit_code == 0, again.output
    lines = log.read_text().splitlines()
    assert lines[: len(first)] == first  # appended, not overwritten
    assert "stage 1 export: cached" in again.output
    assert any(line.endswith("stage 1 export: cached") for line in lines[len(first) :])


def test_an_unwritable_log_file_is_bad_input(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = compress(write_recipe(), tmp_path / "out", "--log-file", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "give --log-file a file you can write to" in last_line(result)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelquant", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=600)
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def _env(ci: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR", "COLUMNS")}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color", HF_HUB_OFFLINE="1")
    if ci:
        env["CI"] = "1"
    return env


@pytest.mark.parametrize("ci", [True, False])
def test_ci_set_means_no_colour_on_a_terminal(
    write_recipe: Callable[..., Path], tmp_path: Path, ci: bool
) -> None:
    text = _on_a_terminal(["compress", str(write_recipe()), "--dry-run"], _env(ci))
    assert "plan is valid" in text, text
    assert (ANSI in text) is not ci, text  # without CI, a terminal gets colour (the control)


@pytest.mark.slow
def test_a_whole_ci_run_on_a_terminal_is_plain_and_unwrapped(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    text = _on_a_terminal(["compress", str(write_recipe()), "--out", str(out)], _env(True))
    assert ANSI not in text, text
    assert "· stage 2 quantize: running\n" in text
    final = text.strip().splitlines()[-1]
    assert len(final) > 80  # longer than a terminal's default width, and not wrapped
    assert final == f"done: all gates passed. Report: {out / 'report.json'}"
