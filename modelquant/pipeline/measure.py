"""Measuring a finished run: baseline and compressed through the evaluator, judged by the gates,
gathered into the `Report`."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from modelquant import __version__
from modelquant.report.model import (
    Deltas,
    Gate,
    ModelResult,
    Report,
    StageEntry,
    StepQuality,
)

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from modelquant.latency_profile import LatencyProfile
    from modelquant.pipeline.run import Pipeline, StagesResult
    from modelquant.recipe import Recipe

PROFILE_RUNS = 20
PROFILE_SECONDS = 0.25
"""Profiled runs per model and batch size in a compress run, and the time that caps them: a
diagnosis, not a measurement (the speedup comes from the timed runs), so it stays short."""


def measure(pipeline: Pipeline, result: StagesResult) -> Report:
    """Evaluate baseline and compressed (and backend variants) and build the report."""
    from modelquant import distributed, gates
    from modelquant.environment import environment
    from modelquant.errors import step
    from modelquant.evaluator import evaluate_models
    from modelquant.tasks import get_task

    recipe = pipeline.recipe
    published = pipeline.artifacts.published
    env = environment()
    env.distributed = distributed.environment_info(
        pipeline.world, [r.details for r in result.state.lineage]
    )
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
    with step("scoring each stage's model"):
        trail = step_trail(pipeline, result, measured.cpu_outputs)
    judged = gates.judge(recipe, base, comp, deltas)
    # A stage that judges its own result (the quantize stage's accuracy budget) says so.
    judged += [
        Gate.model_validate(r.details["gate"]) for r in result.state.lineage if "gate" in r.details
    ]
    warnings = [w for w in [slower_warning(recipe, comp, deltas)] if w]
    profile = None
    slow = slower_batches(comp, deltas)
    if slow:  # after every timed run: a profiled session never runs among them
        with step("profiling the slower batch sizes"):
            profile, failed = _profile(pipeline, result, slow, deltas)
        if failed:
            warnings.append(failed)
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
                quality=trail[i] if i < len(trail) else None,
            )
            for i, r in enumerate(result.state.lineage)
        ],
        baseline=base,
        compressed=comp,
        variants=measured.variants,
        deltas=deltas,
        gates=judged,
        artifacts={**published, **{name: name for name in reports}},
        warnings=warnings,
        latency_profile=profile,
    )


def step_trail(
    pipeline: Pipeline, result: StagesResult, scored: dict[Path, np.ndarray] | None = None
) -> list[StepQuality]:
    """Each stage's model scored on the evaluation data against the baseline (torch models in
    torch, ONNX files in onnxruntime on the CPU): the accuracy cost of every step. `scored`: the
    evaluator's CPU outputs per file, reused for the baseline and the final model."""

    from modelquant import metrics
    from modelquant.backends import get_backend
    from modelquant.evaluator import model_outputs
    from modelquant.models import onnx_file
    from modelquant.state import parameter_counts, torch_outputs
    from modelquant.tasks import get_task

    recipe = pipeline.recipe
    task = get_task(recipe.metric_task)
    data = pipeline.plan.data("evaluation")
    batch_size = recipe.data.evaluation.batch_size
    cpu = get_backend("cpu")
    assert result.baseline.onnx_path is not None
    pipeline.log("scoring the model after each stage on the evaluation data")
    scored = dict(scored or {})

    def on_cpu(path: Path) -> np.ndarray:
        if path not in scored:
            scored[path] = model_outputs(path, data, cpu, batch_size=batch_size, task=task)
        return scored[path]

    reference = on_cpu(result.baseline.onnx_path)
    trail: list[StepQuality] = []
    for state in result.states:
        if state.onnx_path is not None:
            # The last stage's file is the one published as the compressed model.
            final = state is result.state and result.compressed in scored
            out = on_cpu(result.compressed if final else state.onnx_path)
            params, runtime = onnx_file.param_counts(state.onnx_path)[0], "onnxruntime cpu"
        else:
            assert state.module is not None
            out = torch_outputs(state.module, data, task, batch_size)
            params, runtime = parameter_counts(state.module)[0], "torch"
        similarity = task.similarity(out, reference)
        if similarity is not None:
            value = float(similarity["cosine_mean"])
            agreement = float(similarity["neighbour_agreement"])
        else:
            value = task.score(out, data.labels, reference)
            agreement = metrics.agreement(out, reference)
        trail.append(
            StepQuality(
                metric=task.metric.name,
                value=value,
                agreement=agreement,
                cosine_p5=None if similarity is None else similarity["cosine_p5"],
                cosine_min=None if similarity is None else similarity["cosine_min"],
                params=params,
                runtime=runtime,
            )
        )
    return trail


def _cpu_speedups(compressed: ModelResult, deltas: Deltas) -> dict[str, float]:
    """Batch size -> speedup on the CPU where both were timed; none where the compressed
    model's CPU latency is emulated (FP8: casts around float kernels say nothing of speed)."""
    entry = compressed.backends.get("cpu")
    if entry is None or entry.emulated:
        return {}
    speed = deltas.speedup.get("cpu", {})
    return {bs: speed[bs].value for bs in sorted(speed, key=int)}


def slower_batches(compressed: ModelResult, deltas: Deltas) -> list[int]:
    """The batch sizes at which the compressed model is slower than the baseline on the CPU
    (point estimate of the speedup below 1)."""
    return [int(bs) for bs, v in _cpu_speedups(compressed, deltas).items() if v < 1]


def slower_warning(recipe: Recipe, compressed: ModelResult, deltas: Deltas) -> str | None:
    """The warning line when the compressed model is slower on the CPU at every batch size
    timed and no `gates.min_speedup.cpu` judges it (with one, the gate speaks)."""
    speed = _cpu_speedups(compressed, deltas)
    if not speed or "cpu" in recipe.gates.min_speedup or any(v >= 1 for v in speed.values()):
        return None
    listed = ", ".join(f"{v:.2f}x at {bs}" for bs, v in speed.items())
    return (
        f"compressed model is slower than the baseline on cpu at every batch size ({listed}); "
        "set gates.min_speedup: {cpu: 1.0} to fail the run, see the latency section"
    )


def _profile(
    pipeline: Pipeline, result: StagesResult, batch_sizes: list[int], deltas: Deltas
) -> tuple[LatencyProfile | None, str | None]:
    """Both models profiled at `batch_sizes` (the latency section), or why not: the profile is
    a diagnosis, so a failure of it is a warning, not a failed run."""
    from modelquant.backends.bench import effective_threads
    from modelquant.latency_profile import auto_details, explain, precision_label

    recipe = pipeline.recipe
    lineage = result.state.lineage
    assert result.baseline.onnx_path is not None
    pipeline.log(f"profiling baseline and compressed at batch {', '.join(map(str, batch_sizes))}")
    try:
        profile = explain(
            result.baseline.onnx_path,
            result.compressed,
            pipeline.plan.data("evaluation"),
            batch_sizes,
            threads=effective_threads(recipe.evaluate.threads)[0],
            speedups=deltas.speedup.get("cpu", {}),
            auto=auto_details([r.details for r in lineage]),
            label=precision_label([(r.name, r.settings) for r in lineage]),
            recipe=recipe.name,
            runs=PROFILE_RUNS,
            max_seconds=PROFILE_SECONDS,
        )
    except Exception as exc:  # onnxruntime's profiler or its file: the run itself is measured
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"latency profile not made: {type(exc).__name__}: {first}"
    return profile, None
