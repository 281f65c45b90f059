"""What a stage is: a typed config, `run(state, ctx) -> state`, and the registry of stage names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from modelquant.data import Dataset
    from modelquant.recipe import Recipe
    from modelquant.state import ModelState

ModelForm = Literal["torch", "onnx", "any"]


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """What a running stage may use besides the model: the recipe, data, folders, the baseline."""

    recipe: Recipe
    base_dir: Path
    out_dir: Path
    cache_dir: Path
    baseline: ModelState
    data: Callable[[str], Dataset]
    """`data(role)` opens that recipe data entry (train, validation, calibration, evaluation)."""
    work_dir: Path = Path()
    """A fresh folder for the running stage's files (its cache entry once it succeeds)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the running stage reports (sparsity reached, layers kept in float, ...)."""
    log: Callable[[str], None] = print

    @property
    def seed(self) -> int:
        return self.recipe.seed


class Stage(ABC):
    """One compression technique. Subclasses set `name`, `Config`, `needs` and `produces`."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    needs: ClassVar[ModelForm] = "any"
    """The model form the stage takes: a torch module, an ONNX file, or either."""
    produces: ClassVar[ModelForm] = "any"
    """The form it hands on; "onnx" stages are cached by content hash in the output folder."""
    data_roles: ClassVar[tuple[str, ...]] = ()
    """Recipe data entries the stage reads (part of its cache key)."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config

    def artifact_name(self) -> str:
        """File name of this stage's ONNX output in the output folder."""
        return f"model.{self.name}.onnx"

    def variant_name(self, backend: str) -> str:
        """File name of the stage's variant for `backend` (e.g. a static-shape NPU flavour)."""
        return f"model.{self.name}.{backend}.onnx"

    @abstractmethod
    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        """Return the model after this stage; put what the report should say in `ctx.details`."""


_REGISTRY: dict[str, type[Stage]] = {}
S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator: make a stage available to recipes under `name` (once)."""

    def decorate(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(
                f"stage '{name}' is registered twice ({_REGISTRY[name]!r} and {cls!r})"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_stages() -> dict[str, type[Stage]]:
    """Stage name -> class, in registration order."""
    return dict(_REGISTRY)
