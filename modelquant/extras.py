"""Optional dependencies: which extra installs each one, and the user error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from modelquant.errors import UserError

# import name -> (extra that installs it, distribution name); extra None: a core dependency
# that a broken or partial environment may still lack.
OPTIONAL: dict[str, tuple[str | None, str]] = {
    "onnxruntime_qnn": ("npu", "onnxruntime-qnn"),
    "optimum": ("hf", "optimum-onnx"),
    "torch_pruning": (None, "torch-pruning"),
}


def install_hint(module: str) -> str:
    """The command that installs `module`: `pip install "modelquant[npu]"` and the like."""
    extra, dist = OPTIONAL[module]
    if extra is None:
        return f"pip install {dist} (a modelquant dependency: reinstall modelquant)"
    return f'pip install "modelquant[{extra}]" ({dist})'


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise a `UserError` (exit 2) naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = OPTIONAL[module][1]
        raise UserError(
            f"{purpose} needs {dist}, which cannot be imported ({exc}); {install_hint(module)}"
        ) from None
