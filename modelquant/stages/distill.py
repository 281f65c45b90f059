"""The `distill` stage: train a student on a teacher's softened logits, features and the labels."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelquant.errors import UserError
from modelquant.models.spec import ModelSpec
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.stages.finetune import (
    FinetuneConfig,
    TensorBatch,
    accuracy,
    call,
    deterministic,
    finetune,
)
from modelquant.stages.prune import layer_weight
from modelquant.state import ModelState, parameter_counts

if TYPE_CHECKING:
    import torch


class LossWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kl: float = Field(0.7, ge=0, description="KL on temperature-softened logits (scaled by T^2).")
    task: float | list[float] = Field(
        0.3,
        description="Cross-entropy on the labels; a list weighs each output of a multi-head model.",
    )
    feature: float = Field(0.0, ge=0, description="MSE between the paired intermediate features.")

    @model_validator(mode="after")
    def _some_weight(self) -> LossWeights:
        task = self.task if isinstance(self.task, list) else [self.task]
        if any(w < 0 for w in task):
            raise ValueError("loss weights are >= 0")
        if self.kl == 0 and sum(task) == 0 and self.feature == 0:
            raise ValueError("give at least one loss term a weight above 0")
        return self


class FeaturePair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="Module name in the teacher (e.g. 'features.2').")
    student: str = Field(description="Module name in the student whose output should match it.")


class DistillConfig(StageConfig):
    teacher: Literal["baseline"] | ModelSpec = Field(
        "baseline", description="'baseline' (the model as loaded) or a model spec (factory)."
    )
    student: Literal["current"] | ModelSpec = Field(
        "current", description="'current' (the model coming in) or a spec of a new architecture."
    )
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KL term.")
    losses: LossWeights = Field(default_factory=LossWeights)
    features: list[FeaturePair] = Field(
        default_factory=list, description="Teacher/student layer pairs for the feature term."
    )
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(epochs=10), description="Training settings."
    )
    compare_alone: bool = Field(
        False, description="Also train the same student on the labels alone and report both."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.losses.feature > 0 and not self.features:
            raise ValueError("losses.feature needs `features` (teacher/student layer pairs)")
        for spec in (self.teacher, self.student):
            if isinstance(spec, ModelSpec) and spec.factory is None:
                raise ValueError("teacher and student specs need a torch factory, not an ONNX file")
        return self


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


class _FeatureTaps:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise UserError(
                    f"distill features: no module named '{name}' in the model"
                ) from None
            self.handles.append(module.register_forward_hook(self._keep(name)))

    def _keep(self, name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            self.outputs[name] = _first(output)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _projection(student: torch.Tensor, teacher: torch.Tensor) -> torch.nn.Module:
    """A learned map from the student's feature width to the teacher's (identity when equal)."""
    import torch

    if student.shape == teacher.shape:
        return torch.nn.Identity()
    if student.dim() == 4 and student.shape[2:] == teacher.shape[2:]:
        return torch.nn.Conv2d(student.shape[1], teacher.shape[1], 1, bias=False)
    if student.dim() == 2:
        return torch.nn.Linear(student.shape[1], teacher.shape[1], bias=False)
    raise UserError(
        f"distill features: cannot match student shape {tuple(student.shape)} to teacher "
        f"{tuple(teacher.shape)} (channels may differ, spatial size must not)"
    )


def hold_zeros(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Mask the exact zeros of every Linear/Conv2d weight (a pruned model's) so that training
    cannot regrow them; `release_zeros` makes the masks permanent again."""
    import torch
    import torch.nn.utils.prune as tprune

    held: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            weight = layer_weight(module).detach()
            if bool((weight == 0).any()):
                tprune.custom_from_mask(module, "weight", (weight != 0).to(weight.dtype))
                held.append(module)
    return held


def release_zeros(held: list[torch.nn.Module]) -> None:
    import torch.nn.utils.prune as tprune

    for module in held:
        tprune.remove(module, "weight")


@register_stage("distill")
class Distill(Stage):
    """Knowledge distillation from a teacher into a (smaller) student, with optional features."""

    Config = DistillConfig
    needs = "torch"
    produces = "torch"
    data_roles: ClassVar[tuple[str, ...]] = ("train", "validation")
    config: DistillConfig

    def _load(self, spec: ModelSpec, ctx: StageContext) -> torch.nn.Module:
        from modelquant.models import factory, resolve_path

        assert spec.factory is not None
        with deterministic(ctx.seed):  # a fresh student starts from the same weights every run
            module = factory.build(spec.factory, spec.kwargs, list(ctx.base_dirs))
        if spec.checkpoint is not None:
            factory.load_checkpoint(
                module, resolve_path(spec.checkpoint, list(ctx.base_dirs), "checkpoint")
            )
        return module

    def skeleton(self, state: ModelState, ctx: StageContext) -> torch.nn.Module:
        if self.config.student == "current":
            return super().skeleton(state, ctx)
        return self._load(self.config.student, ctx)

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        import torch

        cfg = self.config
        if cfg.teacher == "baseline":
            if ctx.baseline.module is None:
                raise UserError("distill teacher 'baseline' needs a torch model (model.factory)")
            teacher = copy.deepcopy(ctx.baseline.module)
        else:
            teacher = self._load(cfg.teacher, ctx)
        if cfg.student == "current":
            assert state.module is not None
            student = copy.deepcopy(state.module)
        else:
            student = self._load(cfg.student, ctx)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        start = copy.deepcopy(student)  # the same starting point for the student-alone run
        validation = ctx.data("validation")
        train = ctx.data("train")
        sample = train.sample_batch(2)
        task_weights = self._task_weights(student, teacher, sample)
        projections = self._projections(teacher, student, sample, ctx)
        extra = [p for m in projections.values() for p in m.parameters()]
        # A pruned incoming model keeps its zeros while it learns (and so does its alone twin).
        held = hold_zeros(student) if cfg.student == "current" else []
        t_taps = _FeatureTaps(teacher, [f.teacher for f in cfg.features])
        s_taps = _FeatureTaps(student, [f.student for f in cfg.features])
        temperature = cfg.temperature

        # The student alone learns from the labels only: the task weights, or the first output's
        # cross-entropy when the distillation gives the labels no weight.
        alone_weights = task_weights if any(task_weights) else [1.0] + task_weights[1:]

        def task_loss(
            s_heads: list[torch.Tensor], labels: torch.Tensor | None, weights: list[float]
        ) -> torch.Tensor:
            import torch.nn.functional as F

            assert labels is not None  # classification training data has labels
            loss = torch.zeros(())
            for weight, head in zip(weights, s_heads, strict=True):
                if weight:
                    loss = loss + weight * F.cross_entropy(head, labels)
            return loss

        def alone_loss(
            model: torch.nn.Module, inputs: TensorBatch, labels: torch.Tensor | None
        ) -> torch.Tensor:
            out = call(model, inputs)
            heads = list(out) if isinstance(out, tuple | list) else [out]
            return task_loss(heads, labels, alone_weights)

        def loss_fn(
            model: torch.nn.Module, inputs: TensorBatch, labels: torch.Tensor | None
        ) -> torch.Tensor:
            import torch.nn.functional as F

            with torch.no_grad():
                t_out = call(teacher, inputs)
            s_out = call(model, inputs)
            s_heads = list(s_out) if isinstance(s_out, tuple | list) else [s_out]
            loss = task_loss(s_heads, labels, task_weights)
            if cfg.losses.kl:
                kl = F.kl_div(
                    F.log_softmax(s_heads[0] / temperature, dim=-1),
                    F.softmax(_first(t_out) / temperature, dim=-1),
                    reduction="batchmean",
                )
                loss = loss + cfg.losses.kl * temperature**2 * kl
            if cfg.losses.feature:
                for pair in cfg.features:
                    projected = projections[pair.student](s_taps.outputs[pair.student])
                    loss = loss + cfg.losses.feature * F.mse_loss(
                        projected, t_taps.outputs[pair.teacher]
                    )
            return loss

        try:
            curve = finetune(student, ctx, cfg.finetune, loss_fn, extra, label="distill")
        finally:
            t_taps.close()
            s_taps.close()
            release_zeros(held)
        teacher_acc = accuracy(teacher, validation)
        student_acc = accuracy(student, validation)
        params, _ = parameter_counts(student)
        ctx.details.update(
            accuracy_on=validation.description,
            teacher_accuracy=teacher_acc,
            student_accuracy=student_acc,
            retention=student_acc / teacher_acc if teacher_acc else None,
            teacher_params=parameter_counts(teacher)[0],
            student_params=params,
            loss=curve,
        )
        if held:
            ctx.details["held_zeros"] = sum(int((layer_weight(m) == 0).sum()) for m in held)
        if cfg.compare_alone:
            held_alone = hold_zeros(start) if cfg.student == "current" else []
            try:
                finetune(start, ctx, cfg.finetune, alone_loss, label="student alone")
            finally:
                release_zeros(held_alone)
            alone = accuracy(start, validation)
            ctx.details.update(
                student_alone_accuracy=alone,
                distillation_gain_pt=(student_acc - alone) * 100,
            )
        for p in student.parameters():
            p.requires_grad_(True)
        return state.replace(module=student.eval())

    def _task_weights(
        self, student: torch.nn.Module, teacher: torch.nn.Module, sample: Any
    ) -> list[float]:
        """One task weight per student output: a list must name every output; one number weighs
        the first output (the others are then left out of the task term). A student that cannot
        learn from the teacher (no weights, another input or output shape) is bad input."""
        import numpy as np
        import torch

        if next(student.parameters(), None) is None:
            raise UserError(
                "distill student has no weights to train; give a student factory that builds a "
                "module with parameters"
            )
        args = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sample.items()}
        with torch.no_grad():
            try:
                out = call(student, args)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise UserError(
                    f"distill student: its forward fails on 2 rows of data.train "
                    f"({type(exc).__name__}: {first}); give a student that takes the teacher's "
                    "inputs"
                ) from None
            ref = _first(call(teacher, args))
        if tuple(_first(out).shape) != tuple(ref.shape):
            raise UserError(
                f"distill student outputs shape {tuple(_first(out).shape)}, the teacher "
                f"{tuple(ref.shape)}: give a student with the teacher's number of classes"
            )
        heads = len(out) if isinstance(out, tuple | list) else 1
        task = self.config.losses.task
        if isinstance(task, list):
            if len(task) != heads:
                raise UserError(
                    f"distill losses.task lists {len(task)} weight(s), and the student has "
                    f"{heads} output(s): give one weight per output"
                )
            return list(task)
        return [task] + [0.0] * (heads - 1)

    def _projections(
        self, teacher: torch.nn.Module, student: torch.nn.Module, sample: Any, ctx: StageContext
    ) -> dict[str, torch.nn.Module]:
        """One learned projection per feature pair, sized by a probe forward pass."""
        import numpy as np
        import torch

        pairs = self.config.features
        if not pairs:
            return {}
        t_taps = _FeatureTaps(teacher, [f.teacher for f in pairs])
        s_taps = _FeatureTaps(student, [f.student for f in pairs])
        args = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sample.items()}
        with torch.no_grad():
            call(teacher, args)
            call(student, args)
        t_taps.close()
        s_taps.close()
        with deterministic(ctx.seed):
            return {
                f.student: _projection(s_taps.outputs[f.student], t_taps.outputs[f.teacher])
                for f in pairs
            }
