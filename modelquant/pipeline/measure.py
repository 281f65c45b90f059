"""Measuring a finished run: baseline and compressed through the evaluator, judged by the gates,
gathered into the `Report`."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from modelquant import __version__
from modelquant.report.model import Gate, Report, StageEntry

if TYPE_CHECKING:
    from modelquant.pipeline.run import Pipeline, StagesResult


def measure(pipeline: Pipeline, result: StagesResult) -> Report:
    """Evaluate baseline and compressed (and backend variants) and build the report."""
    from modelquant import gates
    from modelquant.environment import environment
    from modelquant.evaluator import evaluate_models
    from modelquant.tasks import get_task

    recipe = pipeline.recipe
    published = pipeline.artifacts.published
    env = environment()
    pipeline.log("measuring baseline and compressed")
    variants = {
        role.removeprefix("variant."): pipeline.artifacts.path(role)
        for role in published
        if role.startswith("variant.")
    }
    assert result.baseline.onnx_path is not None
    measured = evaluate_models(
        result.baseline.onnx_path,
        result.compressed,
        pipeline.plan.data("evaluation"),
        recipe.evaluate,
        env.backends,
        variants,
        pipeline.log,
        batch_size=recipe.data.evaluation.batch_size,
        task=get_task(recipe.metric_task),
    )
    base, comp, deltas = measured.baseline, measured.compressed, measured.deltas
    base.path = published["baseline"]
    comp.path = published["compressed"]
    for backend, variant in measured.variants.items():
        variant.path = published[f"variant.{backend}"]
    judged = gates.judge(recipe, base, comp, deltas)
    # A stage that judges its own result (the quantize stage's accuracy budget) says so.
    judged += [
        Gate.model_validate(r.details["gate"]) for r in result.state.lineage if "gate" in r.details
    ]
    from modelquant.report import file_renderers

    renderers = file_renderers()
    reports = sorted(renderers[f][0] for f in {*recipe.output.formats, "json"})
    return Report(
        modelquant_version=__version__,
        status="passed" if all(g.passed for g in judged) else "gate_failed",
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        recipe=recipe.model_dump(mode="json"),
        environment=env,
        stages=[
            StageEntry(
                name=r.name,
                settings=r.settings,
                seconds=r.seconds,
                cached=r.cached,
                details=r.details,
            )
            for r in result.state.lineage
        ],
        baseline=base,
        compressed=comp,
        variants=measured.variants,
        deltas=deltas,
        gates=judged,
        artifacts={**published, **{name: name for name in reports}},
    )
