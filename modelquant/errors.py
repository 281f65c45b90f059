"""The error types and the one place where exit codes are decided."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_STAGE_FAILED = 3


class ModelquantError(Exception):
    """Base of the errors the CLI turns into an exit code and one console line."""

    exit_code = EXIT_STAGE_FAILED
    label = "error"


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
