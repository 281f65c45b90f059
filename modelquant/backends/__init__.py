"""Backends: where a model runs. Each says whether it can run here and opens inference sessions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar


class Backend(ABC):
    """One execution target. Backends differ only in how they open a session."""

    name: ClassVar[str]
    execution_provider: ClassVar[str]
    emulated: ClassVar[bool] = False
    """True where latency says nothing about the real device (never gated on)."""

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(can run here, reason when not)."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Library versions that decide this backend's numerics and speed."""

    @abstractmethod
    def session(self, path: Path, threads: int | None) -> Any:
        """An onnxruntime InferenceSession (or an object with the same `run`) for `path`."""


def get_backend(name: str) -> Backend:
    from modelquant.backends.cpu import CpuBackend

    backends: dict[str, type[Backend]] = {"cpu": CpuBackend}
    return backends[name]()
