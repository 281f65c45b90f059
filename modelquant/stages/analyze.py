"""The `analyze` stage: per-layer quantization sensitivity of the quantize stage after it, put in
the report (`details.layers`, worst first); the model passes through unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from modelquant.errors import UserError
from modelquant.sensitivity import DEFAULT_SAMPLES, NO_VALIDATION, Progress
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.stages.quantize import QuantizeConfig

if TYPE_CHECKING:
    from modelquant.recipe import Recipe
    from modelquant.sensitivity import Sensitivity
    from modelquant.state import ModelState


class AnalyzeConfig(StageConfig):
    accuracy: bool = Field(
        False,
        description="Also score the task metric with each layer alone quantized, on "
        "data.validation (one quantization and one evaluation per layer).",
    )
    samples: int = Field(
        DEFAULT_SAMPLES,
        gt=0,
        description="Calibration samples whose activations are compared (all kept in memory).",
    )
    quantize: QuantizeConfig | None = Field(
        None,
        description="The quantize settings analysed (default: those of the quantize stage that "
        "follows in the recipe).",
    )


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """The per-layer analysis as a task of the current progress reporter (`modelquant.progress`),
    as a `sensitivity.Progress` callback."""
    from modelquant import progress

    with progress.task("analyze", unit="steps") as task:
        yield task.update


@register_stage("analyze")
class Analyze(Stage):
    """Measure each layer's quantization sensitivity (SQNR, optionally the metric) for the
    quantize stage after it; the model passes through unchanged."""

    Config = AnalyzeConfig
    needs = "onnx"
    produces = "any"  # nothing new to publish: the model it hands on is the one it got
    data_roles: ClassVar[tuple[str, ...]] = ("calibration", "validation")
    config: AnalyzeConfig
    progress: Progress | None = None
    """Set by the caller (the `analyze` command) to draw its own progress; default: a bar on a
    terminal's stderr."""

    def reads(self) -> tuple[str, ...]:
        # data.validation only when the metric is measured per layer.
        return self.data_roles if self.config.accuracy else ("calibration",)

    def bind(self, later: Sequence[Stage]) -> None:
        if self.config.quantize is not None:
            return
        quantize = next((s for s in later if isinstance(s.config, QuantizeConfig)), None)
        if quantize is None:
            raise UserError(
                "stage analyze measures the quantize stage after it, and none follows; "
                "place `- analyze: {}` before a quantize stage"
            )
        self.config = self.config.model_copy(update={"quantize": quantize.config})

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        from modelquant.models import onnx_file
        from modelquant.sensitivity import analyze

        assert state.onnx_path is not None
        cfg = self.config
        if cfg.quantize is None:
            raise UserError("stage analyze has no quantize settings to analyse")
        with contextlib.ExitStack() as stack:
            progress = self.progress
            if progress is None:
                progress = stack.enter_context(progress_bar())
            found = analyze(
                state.onnx_path,
                cfg.quantize,
                ctx,
                cfg.accuracy,
                samples=cfg.samples,
                progress=progress,
            )
        ctx.details.update(stage_details(found))
        ctx.log(f"analyze: most sensitive layer {ctx.details['most_sensitive']}")
        # The cache keeps a stage's model in its folder: hand on a copy of the same bytes.
        out = onnx_file.copy(state.onnx_path, ctx.work_dir / "model.onnx")
        return state.replace(onnx_path=out)


def stage_details(found: Sensitivity) -> dict[str, Any]:
    """What the report says: the worst layer in words, the layers worst first, and the rest of
    the sensitivity document (nested, so the console's stage notes stay one line)."""
    doc: dict[str, Any] = found.model_dump(mode="json")
    layers = doc.pop("layers")
    worst = found.layers[0]
    if found.ranked_by == "metric_delta" and worst.metric_delta is not None:
        why = f"{worst.metric_delta * 100:+.2f} pt alone"
    else:
        why = f"own activation SQNR {worst.activation_sqnr_db or float('nan'):.1f} dB"
    return {"most_sensitive": f"{worst.layer} ({why})", "layers": layers, "sensitivity": doc}


def sensitivity_from_details(details: dict[str, Any]) -> Sensitivity:
    """The sensitivity document back from the stage's details (`stage_details`)."""
    from modelquant.sensitivity import Sensitivity

    return Sensitivity.model_validate({**details["sensitivity"], "layers": details["layers"]})


def analysis_recipe(recipe: Recipe, accuracy: bool, samples: int) -> Recipe:
    """The recipe for `modelquant analyze`: its stages up to its first quantize stage, which an
    analyze stage with that stage's settings replaces (analyze stages before it are dropped: this
    one does their work). The stages kept have the same cache keys as in the recipe."""
    from pydantic import TypeAdapter

    from modelquant.recipe import StageItem

    stages = recipe.stage_list()
    at = next((i for i, (_, cfg) in enumerate(stages) if isinstance(cfg, QuantizeConfig)), None)
    if at is None:
        raise UserError(
            f"recipe '{recipe.name}' has no quantize stage, and analyze measures what quantize "
            "does to each layer; add one after the export, e.g. `- quantize: {precision: int8}`"
        )
    if accuracy and recipe.data.validation is None:
        raise UserError(NO_VALIDATION)
    quantize = stages[at][1]
    assert isinstance(quantize, QuantizeConfig)
    config = AnalyzeConfig(accuracy=accuracy, samples=samples, quantize=quantize)
    item = TypeAdapter(StageItem).validate_python({"analyze": config})
    kept = [
        raw
        for raw, (name, _) in zip(recipe.stages[:at], stages[:at], strict=True)
        if name != "analyze"
    ]
    return recipe.model_copy(update={"stages": [*kept, item]})
