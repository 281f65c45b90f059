"""Torch models from a `package.module:function` factory and a safe checkpoint."""

from __future__ import annotations

import importlib
import pickle
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelquant.errors import UserError
from modelquant.models import ModelSource, register_model_source, resolve_path
from modelquant.state import ModelState

if TYPE_CHECKING:
    import torch

    from modelquant.models.spec import ModelSpec


def import_factory(spec: str, base_dirs: list[Path]) -> Callable[..., Any]:
    """Import `package.module:function`, looking in the working directory and beside the recipe."""
    module_name, _, func_name = spec.partition(":")
    for d in [Path.cwd(), *base_dirs]:
        if str(d) not in sys.path:
            sys.path.append(str(d))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"model factory '{spec}': cannot import module '{exc.name}'") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"model factory '{spec}': '{module_name}' has no function '{func_name}'")
    return func


def build(spec: str, kwargs: dict[str, Any], base_dirs: list[Path]) -> torch.nn.Module:
    import torch

    func = import_factory(spec, base_dirs)
    try:
        module = func(**kwargs)
    except TypeError as exc:
        raise UserError(f"model factory '{spec}' rejected its kwargs {kwargs}: {exc}") from None
    except Exception as exc:  # the factory is the user's code, run on the recipe's kwargs
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(
            f"model factory '{spec}' failed with kwargs {kwargs}: {type(exc).__name__}: {first}; "
            "fix the factory or model.kwargs"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise UserError(
            f"model factory '{spec}' returned {type(module).__name__}, not a torch module"
        )
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.pt`/`.pth` read with `weights_only=True`."""
    import torch

    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the weights file in it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"checkpoint {path} is not a readable safetensors file: {exc}"
            ) from None
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise UserError(f"checkpoint {path}: use a .safetensors file (or .pt saved weights)")
    try:
        # weights_only=True refuses pickles that would run code or build arbitrary objects.
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refused checkpoint {path}: it is a pickle with more than tensors in it "
            f"({_refusal(str(exc))}); save the weights with safetensors or "
            "torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, EOFError):
            first = "the file ends early" + (f" ({first})" if first != "EOFError" else "")
        raise UserError(f"checkpoint {path} cannot be read: {first}") from None
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UserError(f"checkpoint {path} holds {type(loaded).__name__}, not a state dict")
    return loaded


def _refusal(text: str) -> str:
    """What torch's weights-only unpickler refused ("Unsupported global: GLOBAL os.system"), out
    of its long advice text (which also carries terminal colour codes)."""
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+|[^.\n]*)", text)
    return found.group(0) if found else "not a plain state dict"


def load_checkpoint(module: torch.nn.Module, path: Path) -> None:
    """Load weights strictly: missing or unexpected keys and shape mismatches are user errors."""
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"checkpoint {path} does not fit the model: {detail[:300]}") from None


@register_model_source("factory")
class FactorySource(ModelSource):
    """A torch module from `package.module:function` (with `kwargs`) and an optional checkpoint."""

    def claims(self, spec: ModelSpec) -> bool:
        return spec.factory is not None

    def load(self, spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
        assert spec.factory is not None
        module = build(spec.factory, spec.kwargs, base_dirs)
        if spec.checkpoint is not None:
            load_checkpoint(module, resolve_path(spec.checkpoint, base_dirs, "checkpoint"))
        return ModelState(module=module.eval())

    def key_parts(self, spec: ModelSpec, base_dirs: list[Path]) -> list[Any]:
        import inspect

        from modelquant.pipeline.cache import file_hash

        assert spec.factory is not None
        source = inspect.getsourcefile(import_factory(spec.factory, base_dirs))
        parts: list[Any] = [file_hash(Path(source)) if source else spec.factory]
        if spec.checkpoint is not None:
            parts.append(file_hash(resolve_path(spec.checkpoint, base_dirs, "checkpoint")))
        return parts
