"""The `distill` stage: train a student on a teacher's softened logits, features and the labels."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelquant.errors import UserError
from modelquant.layer_rules import check_rule, rule_matches
from modelquant.models.spec import ModelSpec
from modelquant.models.transformer import keep_layers
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.stages.finetune import (
    FinetuneConfig,
    TensorBatch,
    accuracy,
    call,
    deterministic,
    embeddings,
    finetune,
    similarity_to,
)
from modelquant.stages.prune import layer_weight
from modelquant.state import ModelState, first_output, parameter_counts

if TYPE_CHECKING:
    import torch


class LossWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kl: float | None = Field(
        None,
        ge=0,
        description="KL on temperature-softened logits (scaled by T^2). Default 0.7 for "
        "classification, 0 for feature extraction.",
    )
    task: float | list[float] | None = Field(
        None,
        description="Cross-entropy on the labels; a list weighs each output of a multi-head model. "
        "Default 0.3 for classification, 0 for feature extraction (no labels).",
    )
    feature: float = Field(
        0.0,
        ge=0,
        description="MSE between the paired intermediate features (hidden states of the mapped "
        "layers for a student made from the teacher's layers).",
    )
    cosine: float | None = Field(
        None,
        ge=0,
        description="feature extraction: 1 - cosine between the student's and the teacher's pooled "
        "sentence embeddings. Default 1 for feature extraction.",
    )
    mse: float = Field(
        0.0, ge=0, description="feature extraction: MSE between the pooled sentence embeddings."
    )

    @model_validator(mode="after")
    def _non_negative(self) -> LossWeights:
        task = self.task if isinstance(self.task, list) else [self.task or 0.0]
        if any(w < 0 for w in task):
            raise ValueError("loss weights are >= 0")
        return self

    def resolved(self, task: str) -> LossWeights:
        """The weights with the task's defaults filled in; bad input where a term cannot apply
        to the task or none is left above 0."""
        embeddings = task == "feature-extraction"
        if embeddings:
            for name in ("kl", "task"):
                value = getattr(self, name)
                if any(value if isinstance(value, list) else [value or 0.0]):
                    raise UserError(
                        f"distill losses.{name}: a feature-extraction model has no logits or "
                        "labels; use losses.cosine / losses.mse (and feature) instead"
                    )
            done = self.model_copy(
                update={
                    "kl": 0.0,
                    "task": 0.0,
                    "cosine": 1.0 if self.cosine is None else self.cosine,
                }
            )
        else:
            if self.cosine or self.mse:
                raise UserError(
                    "distill losses.cosine and losses.mse compare sentence embeddings; for a "
                    "classifier use kl, task and feature"
                )
            done = self.model_copy(
                update={
                    "kl": 0.7 if self.kl is None else self.kl,
                    "task": 0.3 if self.task is None else self.task,
                    "cosine": 0.0,
                }
            )
        task_w = done.task if isinstance(done.task, list) else [done.task or 0.0]
        if not (done.kl or sum(task_w) or done.feature or done.cosine or done.mse):
            raise UserError("distill losses: give at least one loss term a weight above 0")
        return done


class FromTeacher(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(
        min_length=1,
        description="The teacher's transformer layers the student keeps (0-based, increasing), "
        "initialised from them as DistilBERT was.",
    )

    @field_validator("layers")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("layers: distinct indexes from 0, in increasing order")
        return v


class StudentFromTeacher(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_teacher: FromTeacher = Field(
        description="A student made of a subset of the teacher's layers (a transformer)."
    )


class FeaturePair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="Module name in the teacher (e.g. 'features.2').")
    student: str = Field(description="Module name in the student whose output should match it.")


class DistillConfig(StageConfig):
    teacher: Literal["baseline"] | ModelSpec = Field(
        "baseline", description="'baseline' (the model as loaded) or a model spec (factory)."
    )
    student: Literal["current"] | ModelSpec | StudentFromTeacher = Field(
        "current",
        description="'current' (the model coming in), a spec of a new architecture, or "
        "{from_teacher: {layers: [...]}}: the teacher with only those layers.",
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
    freeze: list[str] = Field(
        default_factory=list,
        description="Student modules left as they are (exact names, 're:<regex>' or "
        "'type:<Class>'), e.g. [embeddings]: a small corpus would move only the rows of the "
        "words it holds.",
    )

    @field_validator("freeze")
    @classmethod
    def _valid_rules(cls, rules: list[str]) -> list[str]:
        return [check_rule(rule) for rule in rules]

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if (
            self.losses.feature > 0
            and not self.features
            and not isinstance(self.student, StudentFromTeacher)
        ):
            raise ValueError(
                "losses.feature needs `features` (teacher/student layer pairs), or a student "
                "made from the teacher's layers (its layers are paired with theirs)"
            )
        for spec in (self.teacher, self.student):
            if isinstance(spec, ModelSpec) and spec.factory is None:
                raise ValueError("teacher and student specs need a torch factory, not an ONNX file")
        return self


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
            self.outputs[name] = first_output(output)

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
        student = self.config.student
        if student == "current":
            return super().skeleton(state, ctx)
        if isinstance(student, StudentFromTeacher):  # keep_layers copies: no copy of the teacher
            source = ctx.baseline.module if self.config.teacher == "baseline" else None
            if source is None:
                source = self._teacher(ctx)
            return keep_layers(source, student.from_teacher.layers)
        return self._load(student, ctx)

    def _teacher(self, ctx: StageContext) -> torch.nn.Module:
        if self.config.teacher == "baseline":
            if ctx.baseline.module is None:
                raise UserError(
                    "distill teacher 'baseline' needs a torch model (model.factory or model.hf)"
                )
            return copy.deepcopy(ctx.baseline.module)
        return self._load(self.config.teacher, ctx)

    def _student(
        self, state: ModelState, ctx: StageContext, teacher: torch.nn.Module
    ) -> torch.nn.Module:
        student = self.config.student
        if student == "current":
            assert state.module is not None
            return copy.deepcopy(state.module)
        if isinstance(student, StudentFromTeacher):
            return keep_layers(teacher, student.from_teacher.layers)
        return self._load(student, ctx)

    def _freeze(self, student: torch.nn.Module) -> list[str]:
        """Turn off training of the modules `freeze` names; the names frozen."""
        rules = self.config.freeze
        hits = dict.fromkeys(rules, 0)
        frozen = []
        for name, module in student.named_modules():
            if not name:
                continue
            kind = type(module).__name__
            for rule in rules:
                if rule_matches(rule, [name], kind):
                    hits[rule] += 1
                    frozen.append(name)
                    for p in module.parameters():
                        p.requires_grad_(False)
                    break
        unused = [rule for rule, n in hits.items() if n == 0]
        if unused:
            raise UserError(f"distill freeze rule(s) {unused} match no module of the student")
        return frozen

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        cfg = self.config
        losses = cfg.losses.resolved(ctx.task)
        teacher = self._teacher(ctx)
        student = self._student(state, ctx, teacher)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        frozen = self._freeze(student)
        if ctx.task == "feature-extraction":
            student = self._embeddings(student, teacher, losses, ctx)
        else:
            student = self._classifier(student, teacher, losses, ctx)
        if frozen:
            ctx.details["frozen"] = frozen
        for p in student.parameters():
            p.requires_grad_(True)
        return state.replace(module=student.eval())

    def _classifier(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        losses: LossWeights,
        ctx: StageContext,
    ) -> torch.nn.Module:
        import torch

        cfg = self.config
        start = copy.deepcopy(student)  # the same starting point for the student-alone run
        validation = ctx.data("validation")
        train = ctx.data("train")
        sample = train.sample_batch(2)
        task_weights = self._task_weights(student, teacher, sample, losses)
        projections = self._projections(teacher, student, sample, ctx, cfg.features)
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
            if losses.kl:
                kl = F.kl_div(
                    F.log_softmax(s_heads[0] / temperature, dim=-1),
                    F.softmax(first_output(t_out) / temperature, dim=-1),
                    reduction="batchmean",
                )
                loss = loss + losses.kl * temperature**2 * kl
            if losses.feature:
                for pair in cfg.features:
                    projected = projections[pair.student](s_taps.outputs[pair.student])
                    loss = loss + losses.feature * F.mse_loss(
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
        return student

    def _embeddings(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        losses: LossWeights,
        ctx: StageContext,
    ) -> torch.nn.Module:
        """Train a sentence encoder to give the teacher's pooled embeddings (and, with
        `losses.feature`, the hidden states of the mapped layers) on unlabeled text."""
        import time

        import torch
        import torch.nn.functional as F

        from modelquant.models.transformer import layer_stack, pooled

        cfg = self.config
        if cfg.compare_alone:
            raise UserError(
                "distill compare_alone trains the student on labels; a feature-extraction model "
                "has none: remove compare_alone"
            )
        pairs = list(cfg.features)
        if losses.feature and not pairs and isinstance(cfg.student, StudentFromTeacher):
            stack, _ = layer_stack(student)
            pairs = [
                FeaturePair(teacher=f"{stack}.{t}", student=f"{stack}.{i}")
                for i, t in enumerate(cfg.student.from_teacher.layers)
            ]
        elif losses.feature and not pairs:
            raise UserError(
                "distill losses.feature needs `features` (teacher/student layer pairs) unless the "
                "student is made from the teacher's layers"
            )
        validation = ctx.data("validation")
        train = ctx.data("train")
        projections = self._projections(teacher, student, train.sample_batch(2), ctx, pairs)
        extra = [p for m in projections.values() for p in m.parameters()]
        t_taps = _FeatureTaps(teacher, [f.teacher for f in pairs])
        s_taps = _FeatureTaps(student, [f.student for f in pairs])
        anchor = embeddings(teacher, validation)
        before = similarity_to(student, anchor, validation)

        def loss_fn(
            model: torch.nn.Module, inputs: TensorBatch, labels: torch.Tensor | None
        ) -> torch.Tensor:
            mask = inputs["attention_mask"]
            with torch.no_grad():
                target = pooled(first_output(call(teacher, inputs)), mask)
            got = pooled(first_output(call(model, inputs)), mask)
            loss = torch.zeros(())
            if losses.cosine:
                loss = loss + losses.cosine * (1 - (got * target).sum(dim=-1)).mean()
            if losses.mse:
                loss = loss + losses.mse * F.mse_loss(got, target)
            for pair in pairs:
                projected = projections[pair.student](s_taps.outputs[pair.student])
                loss = loss + losses.feature * F.mse_loss(projected, t_taps.outputs[pair.teacher])
            return loss

        if "attention_mask" not in train.inputs:
            raise UserError(
                "distill of a sentence encoder needs text data with an attention_mask (source: "
                "text) in data.train"
            )
        start = time.perf_counter()
        try:
            curve = finetune(
                student, ctx, cfg.finetune, loss_fn, extra, label="distill", needs_labels=False
            )
        finally:
            t_taps.close()
            s_taps.close()
        seconds = time.perf_counter() - start
        after = similarity_to(student, anchor, validation)
        ctx.details.update(
            similarity_on=validation.description,
            teacher_params=parameter_counts(teacher)[0],
            student_params=parameter_counts(student)[0],
            train_data=train.description,
            train_samples=len(train),
            train_seconds=round(seconds, 1),
            similarity_before=before,
            similarity_after=after,
            loss=curve,
        )
        if isinstance(cfg.student, StudentFromTeacher):
            ctx.details["layers_kept"] = list(cfg.student.from_teacher.layers)
        if pairs:
            ctx.details["feature_pairs"] = {p.student: p.teacher for p in pairs}
        return student

    def _task_weights(
        self, student: torch.nn.Module, teacher: torch.nn.Module, sample: Any, losses: LossWeights
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
            ref = first_output(call(teacher, args))
        if tuple(first_output(out).shape) != tuple(ref.shape):
            raise UserError(
                f"distill student outputs shape {tuple(first_output(out).shape)}, the teacher "
                f"{tuple(ref.shape)}: give a student with the teacher's number of classes"
            )
        heads = len(out) if isinstance(out, tuple | list) else 1
        task = losses.task if losses.task is not None else 0.0
        if isinstance(task, list):
            if len(task) != heads:
                raise UserError(
                    f"distill losses.task lists {len(task)} weight(s), and the student has "
                    f"{heads} output(s): give one weight per output"
                )
            return list(task)
        return [task] + [0.0] * (heads - 1)

    def _projections(
        self,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        sample: Any,
        ctx: StageContext,
        pairs: list[FeaturePair],
    ) -> dict[str, torch.nn.Module]:
        """One learned projection per feature pair, sized by a probe forward pass."""
        import numpy as np
        import torch

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
