"""Model sources behind one registry: each says whether a model spec is its kind, loads it into a
`ModelState`, and names what the model's cache key is made of.

Adding a source (Hugging Face next) is one module with `@register_model_source("name")` and one
import line in `_load_sources`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

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


class ModelSource(ABC):
    """One kind of model a recipe can name."""

    name: ClassVar[str]

    @abstractmethod
    def claims(self, spec: ModelSpec) -> bool:
        """Whether `spec` names a model of this kind."""

    @abstractmethod
    def load(self, spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
        """The model as a `ModelState`; problems with files or weights are `UserError`s."""

    @abstractmethod
    def key_parts(self, spec: ModelSpec, base_dirs: list[Path]) -> list[Any]:
        """What the model is, by content (file hashes, source code), for the stage cache."""


_SOURCES: dict[str, ModelSource] = {}
M = TypeVar("M", bound=type[ModelSource])


def register_model_source(name: str) -> Callable[[M], M]:
    """Class decorator: make a model source available under `name` (once)."""

    def decorate(cls: M) -> M:
        if name in _SOURCES:
            raise ValueError(f"model source '{name}' is registered twice")
        cls.name = name
        _SOURCES[name] = cls()
        return cls

    return decorate


def _load_sources() -> None:
    from modelquant.models import factory, hf, onnx_file  # noqa: F401  (each registers its source)


def model_sources() -> dict[str, ModelSource]:
    """Source name -> source, in registration order."""
    _load_sources()
    return dict(_SOURCES)


def source_of(spec: ModelSpec) -> ModelSource:
    for source in model_sources().values():
        if source.claims(spec):
            return source
    raise UserError("the recipe's model names no known kind of model (factory, onnx or hf)")


def load_model(spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
    """Build the model a recipe names."""
    return source_of(spec).load(spec, base_dirs)


def model_key(spec: ModelSpec, base_dirs: list[Path]) -> str:
    """Hash of what the model is: its spec, its content, modelquant and library versions."""
    from modelquant import __version__
    from modelquant.pipeline.cache import hash_parts, library_versions

    parts = source_of(spec).key_parts(spec, base_dirs)
    return hash_parts(spec.model_dump(mode="json"), parts, __version__, library_versions())
