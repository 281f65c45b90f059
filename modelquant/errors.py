"""The error types and the one place where exit codes are decided."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_STAGE_FAILED = 3
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT): 128 + 2, what shells report for a process a signal ended."""
EXIT_TERMINATED = 143
"""SIGTERM (how CI runners cancel a job): 128 + 15."""


class ModelquantError(Exception):
    """Base of the errors the CLI turns into an exit code and one console line."""

    exit_code = EXIT_STAGE_FAILED
    label = "error"

    def __init__(self, message: str) -> None:
        # The console shows one line per error: a value or a library's text with line breaks in
        # it (a key written "a\nb", an exception's multi-line message) must not break it.
        super().__init__(" ".join(part.strip() for part in message.splitlines() if part.strip()))


class UserError(ModelquantError):
    """Bad input the user can fix: usage, recipe, file or data. Exit code 2."""

    exit_code = EXIT_USER_ERROR
    label = "bad input"


class StageError(ModelquantError):
    """A stage failed while running (export mismatch, quantizer failure, ...). Exit code 3."""

    exit_code = EXIT_STAGE_FAILED
    label = "stage failed"

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage '{stage}': {message}")
        self.stage = stage


class GateFailed(ModelquantError):
    """The run finished but at least one gate failed. Exit code 1."""

    exit_code = EXIT_GATE_FAILED
    label = "gate failed"


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception where it lands, so that it unwinds through the same
    cleanup as Ctrl-C (every `except BaseException` that removes a partial file)."""


_STEP: contextvars.ContextVar[str] = contextvars.ContextVar("modelquant_step", default="startup")


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Name what the run is doing, so an unexpected error can say where it happened."""
    token = _STEP.set(name)
    try:
        yield
    except BaseException:
        raise  # keep the innermost name: where the error was raised
    else:
        _STEP.reset(token)


def current_step() -> str:
    """The innermost step entered and not left normally (where an error happened)."""
    return _STEP.get()


def reset_step(name: str = "startup") -> None:
    """Start naming steps afresh (each CLI command does, before it runs)."""
    _STEP.set(name)


def describe_step(name: str) -> str:
    """A step as a user reads it: `stage 3 quantize` becomes `stage 3 'quantize'`."""
    head, sep, stage = name.partition(" ")
    number, _, stage_name = stage.partition(" ")
    if head == "stage" and sep and number.isdigit() and stage_name and " " not in stage_name:
        return f"stage {number} '{stage_name}'"
    return name
