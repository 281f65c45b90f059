"""Gates: the thresholds a recipe sets, judged against the measured report."""

from __future__ import annotations

from modelquant.recipe import DEFAULT_MIN_COSINE, Recipe
from modelquant.report.diff import Thresholds
from modelquant.report.model import Deltas, Gate, ModelResult, Report
from modelquant.report.rows import fmt_metric

# Accuracy differences smaller than float noise are not a drop.
_EPS = 1e-9


def _similarity(recipe: Recipe, compressed: ModelResult) -> list[Gate]:
    """The embedding gates (feature extraction): cosine mean / p5 / min and neighbour agreement
    of the compressed model to the baseline, on the CPU. A recipe that sets no accuracy gate
    gets `min_cosine` at its default: an embedding model is never passed unjudged."""
    if recipe.metric_task != "feature-extraction":
        return []
    g = recipe.gates
    s = compressed.similarity or {}
    asked = {
        "min_cosine": ("cosine_mean", g.min_cosine, "cosine"),
        "min_cosine_p5": ("cosine_p5", g.min_cosine_p5, "cosine"),
        "min_cosine_min": ("cosine_min", g.min_cosine_min, "cosine"),
        "min_neighbour_agreement": ("neighbour_agreement", g.min_neighbour_agreement, "share"),
    }
    default = all(v is None for _, v, _ in asked.values()) and g.max_accuracy_drop is None
    if default:
        asked["min_cosine"] = ("cosine_mean", DEFAULT_MIN_COSINE, "cosine")
    gates = []
    for name, (key, threshold, unit) in asked.items():
        if threshold is None:
            continue
        value = s.get(key)
        samples = s.get("samples", "?")
        detail = f"{key.replace('_', ' ')} to the baseline over {samples} samples (cpu)"
        if default:
            detail += f"; the default gate of feature-extraction (set gates.{name})"
        gates.append(
            Gate(
                name=name,
                threshold=threshold,
                value=value,
                passed=value is not None and value >= threshold - _EPS,
                detail=detail if value is not None else "not measured",
                unit=unit,
            )
        )
    return gates


def judge(
    recipe: Recipe, baseline: ModelResult, compressed: ModelResult, deltas: Deltas
) -> list[Gate]:
    g = recipe.gates
    gates: list[Gate] = _similarity(recipe, compressed)
    if g.max_accuracy_drop is not None:
        drop = baseline.accuracy - compressed.accuracy
        gates.append(
            Gate(
                name="max_accuracy_drop",
                threshold=g.max_accuracy_drop,
                value=drop,
                passed=drop <= g.max_accuracy_drop + _EPS,
                detail=f"{'cosine' if baseline.metric == 'cosine' else 'accuracy'} "
                f"{fmt_metric(baseline.metric, baseline.accuracy)} -> "
                f"{fmt_metric(compressed.metric, compressed.accuracy)} (cpu)",
                unit="fraction",
            )
        )
    if g.max_size_ratio is not None:
        gates.append(
            Gate(
                name="max_size_ratio",
                threshold=g.max_size_ratio,
                value=deltas.size_ratio,
                passed=deltas.size_ratio <= g.max_size_ratio,
                detail=f"{compressed.size_bytes:,} / {baseline.size_bytes:,} bytes",
                unit="ratio",
            )
        )
    batch = str(g.speedup_batch_size or max(recipe.evaluate.batch_sizes))
    for backend, threshold in g.min_speedup.items():
        name = f"min_speedup.{backend}"
        result = compressed.backends.get(backend)
        if result is not None and result.emulated:
            # e.g. FP8 on the CPU: casts around float kernels say nothing of FP8 hardware.
            gates.append(
                Gate(
                    name=name,
                    threshold=threshold,
                    value=None,
                    passed=True,
                    detail=f"not gated: the compressed model's {backend} latency is emulated",
                    unit="speedup",
                )
            )
            continue
        speed = deltas.speedup.get(backend, {}).get(batch)
        if speed is None:
            skipped = compressed.backends.get(backend)
            why = skipped.skipped if skipped and skipped.skipped else f"batch {batch} not timed"
            gates.append(
                Gate(
                    name=name,
                    threshold=threshold,
                    value=None,
                    passed=False,
                    detail=f"not measured: {why}",
                    unit="speedup",
                )
            )
            continue
        low = speed.ci95[0]
        gates.append(
            Gate(
                name=name,
                threshold=threshold,
                value=low,
                passed=low >= threshold,
                detail=(
                    f"batch {batch}: speedup {speed.value:.2f}x, 95% CI "
                    f"[{speed.ci95[0]:.2f}, {speed.ci95[1]:.2f}]; gated on the lower bound"
                ),
                unit="speedup",
            )
        )
    return gates


def with_baseline(report: Report, old: Report, thresholds: Thresholds, old_name: str) -> Report:
    """The run's report with the baseline gates added (`compress --baseline-report`): the same
    comparison as `report diff OLD report.json`, each judged row one gate. The speedup gates
    (`baseline_speedup_loss[backend,bs=N]`) judge speed on any machine; the absolute latency
    gates judge only when this run and the baseline report share the CPU and thread count, and
    are otherwise passed without a value (JUnit: skipped), their detail saying why."""
    from modelquant.report.diff import diff_reports, gates_from_diff

    diff = diff_reports(old, report, thresholds, old_name, "this run")
    gates = [*report.gates, *gates_from_diff(diff)]
    status = "passed" if all(g.passed for g in gates) else "gate_failed"
    return report.model_copy(update={"gates": gates, "status": status})
