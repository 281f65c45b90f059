"""Progress of a run: its progress lines and the bars of long steps (calibration, fine-tuning,
benchmarking, per-layer analysis). Rich bars on a terminal; plain, unwrapped, uncoloured lines when
stderr is not a terminal or `CI` is set; nothing with `--quiet`; and, when asked, every line with a
timestamp in a log file (appended, whatever the console shows).

Code that does a long step opens a task on the current reporter, which the CLI installs for the
command it runs (`reporting`); without one, bars show on a terminal and nothing else::

    with progress.task("calibrating (minmax)", total=len(reader), unit="batches") as t:
        for chunk in ...:
            t.advance(len(chunk))
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

Mode = Literal["rich", "plain", "quiet"]
"""rich: bars and dim lines (a terminal); plain: lines only, no colour, no wrapping (CI, a pipe,
a file); quiet: nothing on the console (the log file still gets every line)."""

HEARTBEAT_S = 10.0
"""In plain mode a long task prints where it is at most this often (a CI log shows it is alive)."""

REFRESH_S = 0.1
"""Bars are redrawn from the working thread at most this often: no refresh thread runs beside
the work, so nothing competes with latency measurements for the CPU."""


def ci() -> bool:
    """Whether `CI` is set (to anything but empty, 0 or false), as CI services do."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def plain_output(stream: IO[str] | None = None) -> bool:
    """True when output must be plain: `CI` set, or `stream` (default stderr) not a terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return ci() or not (callable(isatty) and isatty())


def choose_mode(quiet: bool = False, stream: IO[str] | None = None) -> Mode:
    if quiet:
        return "quiet"
    return "plain" if plain_output(stream) else "rich"


def _stamp() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class Task:
    """One long step: a bar in rich mode, start/heartbeat/end lines in plain mode."""

    def __init__(self, reporter: Reporter, description: str, total: int | None, unit: str):
        self.reporter = reporter
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self._said = self.started
        self._drawn = 0.0
        self._id: TaskID | None = None
        bar = reporter._bar
        if bar is not None:
            self._id = bar.add_task(description, total=total, info="")

    def _where(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return f"{self.done}{of} {self.unit}".rstrip()

    def _moved(self, info: str | None = None) -> None:
        bar, now = self.reporter._bar, time.monotonic()
        if bar is not None and self._id is not None:
            fields: dict[str, Any] = {} if info is None else {"info": info}
            bar.update(self._id, completed=self.done, total=self.total, **fields)
            if now - self._drawn >= REFRESH_S:
                self._drawn = now
                bar.refresh()
        elif self.reporter.mode == "plain" and now - self._said >= HEARTBEAT_S:
            self._said = now
            self.reporter.line(f"{self.description}: {self._where()}")

    def advance(self, steps: int = 1, info: str | None = None) -> None:
        """`steps` more done; `info` is shown beside the bar (e.g. the loss)."""
        self.done += steps
        self._moved(info)

    def update(self, done: int, total: int | None = None, what: str | None = None) -> None:
        """Set where the task is (also a `sensitivity.Progress` callback: done, total, what)."""
        self.done = done
        if total is not None:
            self.total = total
        self._moved(what)

    def note(self, text: str) -> None:
        """A milestone (an epoch's loss): beside the bar in rich mode, a line in plain mode, and
        in the log file always."""
        if self.reporter.mode == "rich":
            self.reporter.record(f"{self.description}: {text}")
            self._moved(text)
        else:
            self._said = time.monotonic()
            self.reporter.line(f"{self.description}: {text}")

    def _finish(self) -> None:
        seconds = time.monotonic() - self.started
        text = f"{self.description}: done in {seconds:.1f} s"
        if self.reporter.mode == "plain" and self._said > self.started:
            self.reporter.line(text)  # it said something since it started: say it ended
        else:
            self.reporter.record(text)


class Reporter:
    """Where a command's progress goes: the console in one of three modes, and a log file."""

    def __init__(
        self,
        console: Console | None = None,
        mode: Mode | None = None,
        log_file: Path | None = None,
    ) -> None:
        from modelquant.errors import UserError

        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console
        self.mode: Mode = mode or ("rich" if not plain_output() else "quiet")
        self.log_path = log_file
        self._log: IO[str] | None = None
        self._bar: Progress | None = None
        self._open = 0
        if log_file is not None:
            try:
                if log_file.is_dir():
                    raise IsADirectoryError(21, "is a folder")
                log_file.parent.mkdir(parents=True, exist_ok=True)
                self._log = log_file.open("a", encoding="utf-8")
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise UserError(
                    f"cannot write the log file {log_file} ({reason}); give --log-file a file "
                    "you can write to"
                ) from None

    # ------------------------------------------------------------------ lines
    def line(self, message: str) -> None:
        """A progress line: on the console unless quiet, and in the log file."""
        self.record(message)
        if self.mode == "rich":
            from rich.markup import escape

            self.console.print(f"[dim]· {escape(message)}[/]", highlight=False, soft_wrap=True)
        elif self.mode == "plain":
            self.write_plain(f"· {message}")

    def write_plain(self, text: str) -> None:
        """One line as it is: no markup, no colour, no wrapping."""
        stream = self.console.file
        stream.write(text + "\n")
        stream.flush()

    def record(self, message: str) -> None:
        """A line for the log file only (the final line and errors go there too)."""
        if self._log is not None:
            for part in message.splitlines() or [""]:
                self._log.write(f"{_stamp()} {part}\n")
            self._log.flush()

    # ------------------------------------------------------------------ tasks
    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None, unit: str = "") -> Iterator[Task]:
        """A long step with a bar (rich), start, heartbeat and end lines (plain), or only log
        lines (quiet). The end line is said only when the step finished."""
        self._start_bar()
        task: Task | None = None
        try:
            task = Task(self, description, total, unit)
            start = f"{description}: {total} {unit}".rstrip() if total else description
            if self.mode == "plain":
                self.line(start)
            else:
                self.record(start)
            yield task
            task._finish()
        finally:
            if task is not None and task._id is not None and self._bar is not None:
                self._bar.remove_task(task._id)
            self._stop_bar()

    def _start_bar(self) -> None:
        self._open += 1
        if self.mode != "rich" or self._bar is not None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("[dim]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[dim]{task.fields[info]}"),
            console=self.console,
            transient=True,
            auto_refresh=False,
        )
        self._bar.start()

    def _stop_bar(self) -> None:
        self._open -= 1
        if self._open == 0 and self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._log is not None:
            self._log.close()
            self._log = None


_CURRENT: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "modelquant_reporter", default=None
)


def current() -> Reporter:
    """The reporter of the running command; without one, bars on a terminal and nothing else."""
    reporter = _CURRENT.get()
    return reporter if reporter is not None else Reporter()


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make `reporter` the current one for the duration (closed at the end)."""
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)
        reporter.close()


def task(
    description: str, total: int | None = None, unit: str = ""
) -> contextlib.AbstractContextManager[Task]:
    """`current().task(...)`: a context manager yielding a `Task`."""
    return current().task(description, total, unit)
