"""What people read: units, rounding, and a reason in every cell that holds no number."""

from __future__ import annotations

import io

from rich.console import Console

from modelquant.gates import judge
from modelquant.recipe import Recipe
from modelquant.report.console import render_console
from modelquant.report.markdown import render_markdown
from modelquant.report.model import (
    BackendResult,
    Deltas,
    LatencyStats,
    ModelResult,
    Report,
    Speedup,
    StageEntry,
)
from modelquant.report.rows import comparison_rows, stage_notes
from tests.report.fakes import environment

RECIPE = {
    "name": "r",
    "model": {"onnx": "m.onnx"},
    "data": {"evaluation": {"source": "digits", "split": "test"}},
    "evaluate": {"batch_sizes": [1, 32]},
    "gates": {"max_accuracy_drop": 0.01, "min_speedup": {"cpu": 1.2}, "max_size_ratio": 0.5},
}
KEPT = [f"/classifier/layer_{i}/Gemm" for i in range(8)]


def _stats(p50: float) -> LatencyStats:
    return LatencyStats(
        p50=p50, p90=p50 * 1.1, mean=p50, runs=100, ci95=(p50 * 0.99, p50 * 1.01), threads=2
    )


def _result(acc: float, size: int, cpu: BackendResult) -> ModelResult:
    return ModelResult(
        path="m.onnx",
        metric="top1",
        accuracy=acc,
        size_bytes=size,
        gzip_bytes=size,
        params=1000,
        nonzero_params=900,
        backends={"cpu": cpu},
    )


def _report() -> Report:
    recipe = Recipe.model_validate(RECIPE)
    base = _result(0.98, 4000, BackendResult(accuracy=0.98, latency_ms={"32": _stats(12.345678)}))
    untimed = "not timed: model.int8.onnx is fixed to batch 32"
    comp = _result(
        0.97333333,
        1000,
        BackendResult(
            accuracy=0.97333333,
            latency_ms={"32": _stats(1.23456789)},
            untimed={"1": untimed},
        ),
    )
    base.backends["cpu"].untimed = {"1": "not timed: the other model cannot run this batch"}
    comp.agreement = 0.99
    deltas = Deltas(
        accuracy_pt=(comp.accuracy - base.accuracy) * 100,
        size_ratio=0.25,
        gzip_ratio=0.25,
        params_ratio=1.0,
        speedup={"cpu": {"32": Speedup(value=10.0, ci95=(9.5, 10.5))}},
    )
    return Report(
        modelquant_version="0",
        status="passed",
        created="now",
        recipe=recipe.model_dump(mode="json"),
        environment=environment(),
        stages=[
            StageEntry(
                name="quantize",
                settings={"precision": "int8"},
                seconds=1.0,
                details={"precision": "int8", "kept_float": KEPT, "sparsity": 0.123456},
            )
        ],
        baseline=base,
        compressed=comp,
        deltas=deltas,
        gates=judge(recipe, base, comp, deltas),
        artifacts={},
    )


def test_accuracy_gate_is_shown_in_points_and_kept_as_a_fraction() -> None:
    report = _report()
    gate = next(g for g in report.gates if g.name == "max_accuracy_drop")
    assert gate.unit == "fraction" and gate.threshold == 0.01
    assert abs(gate.value - 0.00666667) < 1e-6  # type: ignore[operator]  # full precision
    md = render_markdown(report)
    assert "| max_accuracy_drop | 1.00 pt | 0.67 pt | yes |" in md
    assert "| min_speedup.cpu | 1.20x | 9.50x | yes |" in md
    assert "| max_size_ratio | 0.500x | 0.250x | yes |" in md
    out = io.StringIO()
    render_console(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "1.00 pt" in text and "0.67 pt" in text and "0.0067" not in text


def test_no_cell_is_a_bare_dash_and_numbers_are_rounded() -> None:
    report = _report()
    rows = comparison_rows(report)
    cells = [cell for row in rows for cell in row[1:3]]
    assert all(cell.strip() not in ("", "-") for cell in cells), rows
    batch1 = next(r for r in rows if r[0] == "cpu p50, batch 1")
    assert batch1[2] == "not timed: model.int8.onnx is fixed to batch 32"
    assert batch1[3].startswith("no speedup")
    batch32 = next(r for r in rows if r[0] == "cpu p50, batch 32")
    assert batch32[1:] == ("12.3 ms (p90 13.6)", "1.23 ms (p90 1.36)", "10.00x [9.50, 10.50]")
    md = render_markdown(report)
    assert "| - |" not in md


def test_stage_notes_name_the_kept_float_layers() -> None:
    notes = stage_notes({"precision": "int8"}, {"kept_float": KEPT, "sparsity": 0.123456})
    assert "kept_float: /classifier/layer_0/Gemm, " in notes
    assert "/classifier/layer_4/Gemm +3 more" in notes and "layer_5" not in notes
    assert "[8]" not in notes and "sparsity: 0.123" in notes
    assert stage_notes({}, {"kept_float": []}) == "kept_float: none"
    assert stage_notes({}, {"kept_float": KEPT[:2]}) == f"kept_float: {KEPT[0]}, {KEPT[1]}"


def test_stage_notes_render_nested_details_for_people() -> None:
    from modelquant.report.rows import stage_notes

    notes = stage_notes(
        {},
        {
            "shapes": {"conv": {"before": [16, 1, 3, 3], "after": [8, 1, 3, 3]}},
            "finetune": [{"loss_first_epoch": 1.2575057618243892, "loss_last_epoch": 0.1}],
            "empty": {},
        },
    )
    assert "shapes: conv=16x1x3x3->8x1x3x3" in notes
    assert "finetune: 1 entry (in report.json)" in notes
    assert "1.2575057618243892" not in notes and "{" not in notes
    assert "empty: none" in notes
