"""Torch models from a `package.module:function` factory and a safe checkpoint."""

from __future__ import annotations

import importlib
import pickle
import sys
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
    if not isinstance(module, torch.nn.Module):
        raise UserError(
            f"model factory '{spec}' returned {type(module).__name__}, not a torch module"
        )
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a `.pt`/`.pth` read with `weights_only=True`."""
    import torch

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
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise UserError(
            f"refused checkpoint {path}: it is a pickle with more than tensors in it ({first}); "
            "save the weights with safetensors or torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise UserError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None
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
