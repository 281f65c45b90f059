"""Model loaders: a Python factory plus a checkpoint, or an ONNX file, into a `ModelState`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelquant.errors import UserError
from modelquant.state import ModelState

if TYPE_CHECKING:
    from modelquant.models.spec import ModelSpec


# The installed package folder: bundled recipes name `examples/digits/cnn.safetensors`, which lives
# here, so they run from any directory and from a copy saved with `recipes show NAME > x.yaml`.
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def resolve_path(path: Path, base_dirs: list[Path], what: str) -> Path:
    """A relative recipe path, looked up in order: the working directory, beside the recipe, then
    inside the installed modelquant package (where the bundled examples live); the first that exists
    wins."""
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(
            dict.fromkeys([Path.cwd() / path, *(d / path for d in base_dirs), PACKAGE_DIR / path])
        )
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise UserError(f"{what} not found: {path} (looked in {', '.join(str(c) for c in candidates)})")


def check_model_spec(spec: ModelSpec, base_dirs: list[Path]) -> None:
    """The cheap checks of a model spec (files exist, factory importable), for --dry-run."""
    from modelquant.models import factory

    if spec.onnx is not None:
        resolve_path(spec.onnx, base_dirs, "ONNX model")
        return
    assert spec.factory is not None
    factory.import_factory(spec.factory, base_dirs)
    if spec.checkpoint is not None:
        resolve_path(spec.checkpoint, base_dirs, "checkpoint")


def load_model(spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
    """Build the model a recipe names; problems with files or weights are `UserError`s."""
    from modelquant.models import factory, onnx_file

    if spec.onnx is not None:
        path = resolve_path(spec.onnx, base_dirs, "ONNX model")
        onnx_file.check(path)
        return ModelState(onnx_path=path)
    assert spec.factory is not None
    module = factory.build(spec.factory, spec.kwargs, base_dirs)
    if spec.checkpoint is not None:
        factory.load_checkpoint(module, resolve_path(spec.checkpoint, base_dirs, "checkpoint"))
    return ModelState(module=module.eval())
