"""What a stage is: a typed config, `run(state, ctx) -> state`, and the registry of stage names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from modelquant.data import Dataset
    from modelquant.distributed import World
    from modelquant.recipe import DataSpec
    from modelquant.state import ModelState

ModelForm = Literal["torch", "onnx", "any"]


@dataclass(frozen=True)
class Timing:
    """How the run times models (the recipe's `evaluate`), for a stage that times candidates:
    the CPU batch sizes and intra-op threads, and the CPU they run on (a choice made by timing
    on one CPU says nothing of another, so the CPU is part of such a stage's key)."""

    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    block: int = 20
    cpu: str = ""
    cpu_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Budget:
    """The largest metric drop the recipe's gates allow (`gates.max_accuracy_drop`, or 1 -
    `gates.min_cosine` for embeddings), and which gate says so; for a stage that chooses among
    candidates by accuracy."""

    drop: float
    source: str


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown keys are errors, and so are NaN and infinity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class StageContext:
    """What a running stage may use besides the model. Stages never see the whole recipe: what
    they read here is what their cache key is made of."""

    seed: int
    """Every random choice of the stage takes it."""
    data: Callable[[str], Dataset]
    """`data(role)` opens a recipe data entry ("train", "calibration", "validation",
    "evaluation"), checked against the model and cached."""
    data_spec: Callable[[str], DataSpec | None]
    """`data_spec(role)`: the recipe's entry for that role (batch size, samples), or None."""
    baseline: ModelState
    """The model as loaded, before any stage (a distillation teacher)."""
    base_dirs: tuple[Path, ...] = ()
    """Where relative paths in stage settings are looked up (after the working directory)."""
    targets: tuple[str, ...] = ("cpu",)
    """The backends the result is for (e.g. ("cpu", "npu")); part of the key of stages that
    read it (`Stage.uses_targets`)."""
    cache_dir: Path = Path()
    """The run's cache folder, for caches finer than a stage (e.g. calibration ranges)."""
    work_dir: Path = Path()
    """A fresh folder for the running stage's files (its cache entry once it succeeds)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the running stage reports (sparsity reached, layers kept in float, ...)."""
    log: Callable[[str], None] = print
    task: str = "classification"
    """The recipe's metric task (`tasks.get_task`): what a stage that scores a model measures."""
    timing: Timing = field(default_factory=Timing)
    """How the run times models; part of the key of stages that time (`Stage.searches`)."""
    budget: Budget | None = None
    """The drop the recipe's gates allow; part of the key of stages that search."""
    world: World | None = None
    """The ranks of a torchrun launch (None: one process): a trainer shards its data and syncs
    gradients across them (`distributed.DataParallel`); part of the key of torch stages."""


class Stage(ABC):
    """One compression technique. Subclasses set `name`, `Config`, `needs` and `produces`."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    needs: ClassVar[ModelForm] = "any"
    """The model form the stage takes: a torch module, an ONNX file, or either."""
    produces: ClassVar[ModelForm] = "any"
    """The form it hands on; "onnx" stages are cached by content hash in the output folder."""
    data_roles: ClassVar[tuple[str, ...]] = ()
    """Recipe data entries the stage reads (their contents are part of its cache key)."""
    uses_targets: ClassVar[bool] = False
    """Whether the stage's output depends on `StageContext.targets` (then they are in its key)."""

    def __init__(self, config: StageConfig) -> None:
        self.config = config

    def artifact_name(self) -> str:
        """File name of this stage's ONNX output in the output folder."""
        return f"model.{self.name}.onnx"

    def variant_name(self, backend: str) -> str:
        """File name of the stage's variant for `backend` (e.g. a static-shape NPU flavour)."""
        return f"model.{self.name}.{backend}.onnx"

    def skeleton(self, state: ModelState, ctx: StageContext) -> torch.nn.Module:
        """A module of this stage's output architecture, for the cache to load saved tensors into
        (shapes may still differ, as after structured pruning). Default: the incoming model."""
        import copy

        if state.module is None:
            raise ValueError(f"stage '{self.name}' got no torch model to rebuild its output on")
        return copy.deepcopy(state.module)

    def reads(self) -> tuple[str, ...]:
        """The data roles this stage reads with its settings (default: `data_roles`)."""
        return self.data_roles

    def searches(self) -> bool:
        """Whether, with these settings, the stage chooses by timing and by the gates' budget
        (`StageContext.timing`, `StageContext.budget`; then both are in its key). Default: no."""
        return False

    def bind(self, later: Sequence[Stage]) -> None:
        """Called once the plan is built, with the stages that run after this one (an analysis
        takes the settings of the stage it analyses). Default: nothing."""
        return None

    def requires(self, targets: tuple[str, ...]) -> dict[str, str]:
        """Python modules this stage needs with these settings -> what for (names in
        `modelquant.extras.OPTIONAL`); checked before anything runs, so a missing one is bad input
        naming the install, not a crash."""
        return {}

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
