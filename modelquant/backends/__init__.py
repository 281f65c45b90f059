"""Backends: where a model runs. Each says whether it can run here and opens inference sessions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

BACKEND_NAMES = ("cpu", "cuda", "npu")
"""Every backend modelquant knows, whether or not it can run on this machine."""

# name -> "module:class"; modules are imported on demand so that importing this package stays
# free of onnxruntime and torch.
_REGISTRY = {
    "cpu": "modelquant.backends.cpu:CpuBackend",
    "cuda": "modelquant.backends.cuda:CudaBackend",
    "npu": "modelquant.backends.npu:NpuBackend",
}


class BackendUnavailable(Exception):
    """The backend said it can run here, but a session could not open on it (a GPU library
    missing at load time, say). The run goes on with the backend marked skipped, with this
    message as the reason."""


class Backend(ABC):
    """One execution target. Backends differ only in how they open a session."""

    name: ClassVar[str]
    execution_provider: ClassVar[str]
    emulated: ClassVar[bool] = False
    """True where latency says nothing about the real device (never gated on)."""
    static_shapes: ClassVar[bool] = False
    """True where sessions need every dimension fixed (a free batch is set per session)."""

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(can run here, reason when not)."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Library versions that decide this backend's numerics and speed."""

    @abstractmethod
    def session(self, path: Path, threads: int | None, batch_size: int | None = None) -> Any:
        """An onnxruntime InferenceSession (or an object with the same `run`) for `path`.

        `batch_size` fixes a symbolic batch dimension where the backend needs static shapes
        (npu); backends that take any batch ignore it.
        """


def get_backend(name: str) -> Backend:
    """The backend called `name` (one of BACKEND_NAMES); KeyError names the known ones."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backend '{name}' (known: {', '.join(BACKEND_NAMES)})") from None
    module, cls = target.split(":")
    backend: Backend = getattr(import_module(module), cls)()
    return backend


def backend_table() -> list[dict[str, Any]]:
    """One row per known backend: name, available, reason, execution_provider, versions, emulated.

    `versions` is filled only where the backend is available (asking an absent runtime for its
    version would fail or mislead).
    """
    rows = []
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        ok, reason = backend.available()
        rows.append(
            {
                "name": name,
                "available": ok,
                "reason": reason,
                "execution_provider": backend.execution_provider,
                "versions": backend.versions() if ok else {},
                "emulated": backend.emulated,
            }
        )
    return rows
