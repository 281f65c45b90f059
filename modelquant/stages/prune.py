"""The `prune` stage: magnitude (global or per layer), 2:4 semi-structured, and structured channel
pruning through torch-pruning, one-shot or gradual, with fine-tuning."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelquant.errors import StageError, UserError
from modelquant.layer_rules import check_rule, rule_matches
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.stages.finetune import (
    FinetuneConfig,
    LossFn,
    accuracy,
    cosine_loss,
    cross_entropy,
    deterministic,
    embeddings,
    finetune,
    similarity_to,
)
from modelquant.state import ModelState

if TYPE_CHECKING:
    import torch


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["oneshot", "gradual"] = Field(
        "oneshot",
        description="oneshot: prune once; gradual: ramp up in steps, fine-tuning between.",
    )
    steps: int = Field(3, ge=1, description="Pruning steps of a gradual schedule.")
    ramp: Literal["cubic", "linear"] = Field(
        "cubic", description="How sparsity grows over the steps (cubic: fast first, then gently)."
    )


class PruneConfig(StageConfig):
    method: Literal["magnitude", "semi_structured", "structured"] = Field(
        "magnitude",
        description="magnitude: L1 unstructured; semi_structured: 2:4; structured: drop channels.",
    )
    scope: Literal["global", "layer"] = Field(
        "global", description="magnitude: one threshold over all targeted layers, or per layer."
    )
    sparsity: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Share of weights (magnitude) or channels (structured) removed.",
    )
    targets: list[str] = Field(
        default_factory=lambda: ["Linear", "Conv2d"], description="Layer types that are pruned."
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Layers left alone: exact names, 're:<regex>' or 'type:<Class>'.",
    )
    importance: Literal["l1", "l2", "taylor"] = Field(
        "l1",
        description="structured: channel importance by the L1 or L2 norm of its weights, or by a "
        "first-order Taylor score (|weight x gradient|) of the loss on 64 training samples.",
    )
    heads: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="structured, transformers: share of each layer's attention heads removed "
        "(default: sparsity).",
    )
    ffn: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="structured, transformers: share of each layer's feed-forward channels "
        "removed (default: sparsity).",
    )
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig | None = Field(
        None, description="Fine-tuning after pruning (after each step when gradual)."
    )

    @field_validator("ignore")
    @classmethod
    def _valid_rules(cls, rules: list[str]) -> list[str]:
        return [check_rule(rule) for rule in rules]

    @model_validator(mode="after")
    def _semi_structured_is_half(self) -> PruneConfig:
        if self.method == "semi_structured" and self.sparsity != 0.5:
            raise ValueError("semi_structured (2:4) keeps 2 of every 4 weights: sparsity is 0.5")
        if self.method != "structured" and (
            self.heads is not None or self.ffn is not None or self.importance == "taylor"
        ):
            raise ValueError("heads, ffn and importance: taylor are for method: structured")
        return self


def layer_weight(module: torch.nn.Module) -> torch.Tensor:
    """A Linear/Conv layer's weight, typed as a tensor."""
    return cast("torch.Tensor", module.weight)


def ramp(final: float, step: int, steps: int, kind: str) -> float:
    """Cumulative sparsity after `step` of `steps` (Zhu & Gupta's cubic, or linear)."""
    frac = step / steps
    return final * (1 - (1 - frac) ** 3) if kind == "cubic" else final * frac


def semi_structured_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| in every group of 4 consecutive weights along the input dimension
    (flattened in*kh*kw for convolutions); a trailing partial group keeps half, rounded up."""
    import torch

    flat = weight.detach().reshape(weight.shape[0], -1)
    cols = flat.shape[1]
    mask = torch.zeros_like(flat)
    full = cols - cols % 4
    if full:
        groups = flat[:, :full].abs().reshape(flat.shape[0], -1, 4)
        keep = groups.topk(2, dim=-1).indices
        mask[:, :full] = (
            torch.zeros_like(groups).scatter_(-1, keep, 1.0).reshape(flat.shape[0], full)
        )
    if cols % 4:
        tail = flat[:, full:].abs()
        keep = tail.topk(-(-tail.shape[1] // 2), dim=-1).indices
        mask[:, full:] = torch.zeros_like(tail).scatter_(-1, keep, 1.0)
    return mask.reshape(weight.shape)


def output_layers(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[Any]:
    """The Linear/Conv2d layers whose outputs reach the model's outputs with no other such layer
    between: their widths are the model's output sizes (classes, heads), so they keep them.

    Found by walking the autograd graph back from every output, which holds for heads registered
    in any order, several heads, and ops after the last layer (view, softmax)."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    made_by: dict[Any, torch.nn.Module] = {}

    def record(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made_by[output.grad_fn] = module

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.enable_grad():
            out = model(*example)
    finally:
        for hook in hooks:
            hook.remove()
    found: list[torch.nn.Module] = []
    heads = list(out) if isinstance(out, tuple | list) else [out]
    stack = [h.grad_fn for h in heads if isinstance(h, torch.Tensor) and h.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            if made_by[fn] not in found:
                found.append(made_by[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    if not found:
        raise StageError("prune", "found no Linear/Conv2d layer that produces the model output")
    return found


@register_stage("prune")
class Prune(Stage):
    """Prune the torch model (magnitude, 2:4 or structured), then optionally fine-tune it."""

    Config = PruneConfig
    needs = "torch"
    produces = "torch"
    data_roles: ClassVar[tuple[str, ...]] = ("train", "validation")
    config: PruneConfig
    _anchor: np.ndarray | None = None
    """data.validation embedded by the model as loaded (sentence encoders), for this run."""

    def requires(self, targets: tuple[str, ...]) -> dict[str, str]:
        if self.config.method == "structured":
            return {"torch_pruning": "structured pruning"}
        return {}

    def targeted(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Layers of a targeted type not caught by an ignore rule; a rule matching nothing errs."""
        cfg = self.config
        hits = dict.fromkeys(cfg.ignore, 0)
        chosen = {}
        for name, module in model.named_modules():
            kind = type(module).__name__
            if not name:
                continue
            ignored = False
            # A rule naming a container (e.g. "classifier") covers every layer inside it.
            scopes = [name, *(name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1))]
            for rule in cfg.ignore:
                if rule_matches(rule, scopes, kind):
                    hits[rule] += 1
                    ignored = True
                    break
            if not ignored and kind in cfg.targets and hasattr(module, "weight"):
                chosen[name] = module
        unused = [rule for rule, n in hits.items() if n == 0]
        if unused:
            raise UserError(f"prune ignore rule(s) {unused} match no layer of the model")
        if not chosen:
            raise UserError(f"prune: no layer of type {cfg.targets} is left to prune")
        return chosen

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        from modelquant.state import parameter_counts

        assert state.module is not None
        cfg = self.config
        model = copy.deepcopy(state.module).eval()  # the baseline stays as loaded
        validation = ctx.data("validation")
        params_before, nonzero_before = parameter_counts(model)
        metric = self._metric_name(ctx)
        # The model as loaded, embedded once: every cosine of the stage is to it.
        self._anchor = embeddings(self._reference(ctx), validation) if metric == "cosine" else None
        ctx.details.update(
            method=cfg.method,
            **(
                {}
                if cfg.method == "structured" and state.hf is not None
                else {"asked_sparsity": cfg.sparsity}
            ),
            params_before=params_before,
            nonzero_params_before=nonzero_before,
            **{f"{metric}_on": validation.description},
            **{f"{metric}_before": self._quality(model, ctx)},
        )
        with deterministic(ctx.seed):
            if cfg.method == "structured" and state.hf is not None:
                model = self._structured_transformer(model, ctx)
            elif cfg.method == "structured":
                model = self._structured(model, ctx)
            else:
                self._unstructured(model, ctx)
        params_after, nonzero_after = parameter_counts(model)
        ctx.details.update(
            params_after=params_after,
            nonzero_params_after=nonzero_after,
            **{f"{metric}_after": self._quality(model, ctx)},
        )
        if metric == "cosine":
            assert self._anchor is not None
            ctx.details["similarity_after"] = similarity_to(model, self._anchor, validation)
        return state.replace(module=model)

    @staticmethod
    def _metric_name(ctx: StageContext) -> str:
        return "cosine" if ctx.task == "feature-extraction" else "accuracy"

    @staticmethod
    def _reference(ctx: StageContext) -> torch.nn.Module:
        if ctx.baseline.module is None:
            raise UserError("prune needs the model as a torch module (model.factory or model.hf)")
        return ctx.baseline.module

    def _quality(self, model: torch.nn.Module, ctx: StageContext) -> float:
        """On data.validation: top-1 accuracy, or (embeddings) the mean cosine to the model as
        loaded."""
        validation = ctx.data("validation")
        if ctx.task == "feature-extraction":
            assert self._anchor is not None
            return float(similarity_to(model, self._anchor, validation)["cosine_mean"])
        return accuracy(model, validation)

    def _loss(self, ctx: StageContext) -> LossFn:
        """What fine-tuning after a pruning step minimises: the labels' cross-entropy, or (no
        labels: embeddings) 1 - cosine to the model as loaded, a distillation from it."""
        if ctx.task == "feature-extraction":
            return cosine_loss(self._reference(ctx))
        return cross_entropy

    def _after_step(
        self, model: torch.nn.Module, ctx: StageContext, step: int, steps: int, losses: list[Any]
    ) -> None:
        """After a pruning step: the accuracy it left (first step), then fine-tuning if asked."""
        if step == 1:
            key = f"{self._metric_name(ctx)}_pruned_before_finetune"
            ctx.details[key] = self._quality(model, ctx)
        if self.config.finetune is not None:
            label = f"prune step {step}/{steps}"
            needs_labels = ctx.task != "feature-extraction"
            losses.append(
                finetune(
                    model,
                    ctx,
                    self.config.finetune,
                    self._loss(ctx),
                    label=label,
                    needs_labels=needs_labels,
                )
            )

    # ------------------------------------------------------------------ unstructured
    def _unstructured(self, model: torch.nn.Module, ctx: StageContext) -> None:
        import torch.nn.utils.prune as tprune

        cfg = self.config
        layers = self.targeted(model)
        steps = cfg.schedule.steps if cfg.schedule.kind == "gradual" else 1
        losses: list[Any] = []
        reached_prev = 0.0
        for step in range(1, steps + 1):
            target = ramp(cfg.sparsity, step, steps, cfg.schedule.ramp)
            if cfg.method == "semi_structured":
                if step == 1:
                    for module in layers.values():
                        tprune.custom_from_mask(
                            module, "weight", semi_structured_mask(layer_weight(module))
                        )
            else:
                # torch's pruning containers apply `amount` to the still-unpruned weights.
                amount = (target - reached_prev) / (1 - reached_prev) if reached_prev < 1 else 0.0
                if cfg.scope == "global":
                    tprune.global_unstructured(
                        [(m, "weight") for m in layers.values()],
                        pruning_method=tprune.L1Unstructured,
                        amount=amount,
                    )
                else:
                    for module in layers.values():
                        tprune.l1_unstructured(module, "weight", amount=amount)
            reached_prev = target
            # The masks are parametrizations: pruned weights stay zero while fine-tuning.
            self._after_step(model, ctx, step, steps, losses)
        for module in layers.values():
            tprune.remove(module, "weight")  # permanent: plain zeros in the weight tensor
        per_layer = {
            name: float((layer_weight(m) == 0).sum()) / layer_weight(m).numel()
            for name, m in layers.items()
        }
        zeros = sum(float((layer_weight(m) == 0).sum()) for m in layers.values())
        total = sum(layer_weight(m).numel() for m in layers.values())
        ctx.details.update(
            scope=cfg.scope if cfg.method == "magnitude" else "layer",
            schedule=f"{cfg.schedule.kind}"
            + (f" {steps} steps {cfg.schedule.ramp}" if steps > 1 else ""),
            reached_sparsity=zeros / total,
            per_layer_sparsity=per_layer,
            finetune=losses,
        )

    # ------------------------------------------------------------------ structured
    def _structured(self, model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
        import torch

        from modelquant.extras import require

        tp: Any = require("torch_pruning", "structured pruning")
        cfg = self.config
        layers = self.targeted(model)
        train = ctx.data("train")
        example = tuple(torch.from_numpy(a) for a in train.sample_batch(2).values())
        # The layers that produce the model's outputs keep their width (the classes).
        outputs = output_layers(model, example)
        ignored = [
            m
            for m in model.modules()
            if m in outputs
            or (isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and m not in layers.values())
        ]
        shapes_before = {n: tuple(layer_weight(m).shape) for n, m in layers.items()}
        steps = cfg.schedule.steps if cfg.schedule.kind == "gradual" else 1
        try:
            pruner = tp.pruner.MetaPruner(
                model,
                example[0] if len(example) == 1 else example,
                importance=tp.importance.MagnitudeImportance(p=1 if cfg.importance == "l1" else 2),
                pruning_ratio=cfg.sparsity,
                iterative_steps=steps,
                ignored_layers=ignored,
            )
        except Exception as exc:
            raise StageError("prune", f"torch-pruning could not trace the model: {exc}") from exc
        losses: list[Any] = []
        for step in range(1, steps + 1):
            pruner.step()
            self._after_step(model, ctx, step, steps, losses)
        # Sparsity here is the share of output channels removed, per layer and over all the
        # layers that lost channels; the weights shrink by more (inputs shrink too).
        channels = {n: (shapes_before[n][0], layer_weight(m).shape[0]) for n, m in layers.items()}
        cut = {n: c for n, c in channels.items() if layers[n] not in outputs}
        before_total = sum(b for b, _ in cut.values())
        ctx.details.update(
            importance=cfg.importance,
            schedule=cfg.schedule.kind + (f" {steps} steps" if steps > 1 else ""),
            reached_sparsity=1 - sum(a for _, a in cut.values()) / before_total
            if before_total
            else 0.0,
            per_layer_sparsity={n: 1 - a / b for n, (b, a) in channels.items()},
            shapes={
                n: {"before": list(shapes_before[n]), "after": list(layer_weight(m).shape)}
                for n, m in layers.items()
            },
            kept_output_layers=[n for n, m in model.named_modules() if m in outputs],
            finetune=losses,
        )
        return model

    # ------------------------------------------------------------------ transformers
    def _structured_transformer(self, model: torch.nn.Module, ctx: StageContext) -> torch.nn.Module:
        """Whole attention heads and feed-forward channels out of every layer of a Hugging Face
        encoder (torch-pruning's dependency graph), the same share in each layer; the hidden size
        and embeddings stay. Then fine-tuning, if asked."""
        import torch

        from modelquant.extras import require
        from modelquant.models import transformer

        tp: Any = require("torch_pruning", "structured pruning")
        cfg = self.config
        if cfg.ignore or cfg.targets != ["Linear", "Conv2d"]:
            raise UserError(
                "prune structured on a transformer removes heads and feed-forward channels in "
                "every layer; targets and ignore do not apply (set heads: and ffn:)"
            )
        if cfg.schedule.kind != "oneshot":
            raise UserError("prune structured on a transformer is one-shot: remove schedule:")
        heads = cfg.sparsity if cfg.heads is None else cfg.heads
        ffn = cfg.sparsity if cfg.ffn is None else cfg.ffn
        before = transformer.shape_summary(model)
        for i, layer in enumerate(before):
            if heads and math.ceil(heads * layer["heads"]) >= layer["heads"]:
                raise UserError(
                    f"prune heads: {heads} would remove every head of layer {i} "
                    f"({layer['heads']} heads); keep at least one"
                )
        train = ctx.data("train")
        sample = train.take(64)
        example = {
            k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sample.sample_batch(2).items()
        }
        if cfg.importance == "taylor":
            importance = tp.importance.GroupTaylorImportance()
        else:
            importance = tp.importance.GroupMagnitudeImportance(
                p=1 if cfg.importance == "l1" else 2
            )

        def taylor(pruned: torch.nn.Module) -> None:
            """Gradients of the loss on 64 training samples (dropout on, seeded: for embeddings
            the model is its own reference, so only dropout gives the loss a gradient)."""
            if cfg.importance != "taylor":
                return
            loss_fn = self._loss(ctx)
            pruned.zero_grad()
            pruned.train()
            for batch, labels in sample.batches(16):
                tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in batch.items()}
                label_t = None if labels is None else torch.from_numpy(labels)
                loss_fn(pruned, tensors, label_t).backward()
            pruned.eval()

        removed = transformer.prune_heads_ffn(model, example, heads, ffn, importance, taylor)
        model.zero_grad(set_to_none=True)
        losses: list[Any] = []
        self._after_step(model, ctx, 1, 1, losses)
        after = transformer.shape_summary(model)
        ctx.details.update(
            importance=cfg.importance,
            heads_share=heads,
            ffn_share=ffn,
            transformer_layers={
                str(i): {
                    "heads_before": b["heads"],
                    "heads_after": a["heads"],
                    "heads_removed": removed.get(i, []),
                    "ffn_before": b["ffn"],
                    "ffn_after": a["ffn"],
                }
                for i, (b, a) in enumerate(zip(before, after, strict=True))
            },
            finetune=losses,
        )
        return model
