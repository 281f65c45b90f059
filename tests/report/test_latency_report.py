"""What compress's report says about latency: the warning when the compressed model is slower at
every batch size (and the gate that fails the run instead), the latency section when it is
slower somewhere, and the candidates of quantize mode auto."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from modelquant.backends import bench
from modelquant.cli import app
from modelquant.recipe import Recipe
from modelquant.report.console import render_console
from modelquant.report.html import render_html
from modelquant.report.markdown import render_markdown
from modelquant.report.model import (
    BackendResult,
    Deltas,
    ModelResult,
    Report,
    StageEntry,
)
from modelquant.report.rows import auto_tables, stage_notes
from tests.report.fakes import environment

runner = CliRunner()
WARNING = "compressed model is slower than the baseline on cpu at every batch size"


def _stub_clock(monkeypatch: pytest.MonkeyPatch, ms: dict[int, dict[str, float]]) -> None:
    """Timed runs take `ms[batch][role]` on a fake clock (the models are not run): the machine
    decides nothing. Timing order is batch by batch, as `measure_latency` goes."""
    real = bench.time_alternating
    calls = iter(sorted(ms))

    def fake(runs: dict[str, Callable[[], object]], **kw: Any) -> dict[str, bench.Timed]:
        cost = ms[next(calls)]
        clock = [0]

        def tick(role: str) -> Callable[[], None]:
            return lambda: clock.__setitem__(0, clock[0] + int(cost[role] * 1e6))

        kw["timer"] = lambda: clock[0]
        return real({role: tick(role) for role in runs}, **kw)

    monkeypatch.setattr(bench, "time_alternating", fake)


def _compress(recipe: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["compress", str(recipe), "--out", str(out), *extra])


FORMATS = {"formats": ["json", "md", "html"]}


def test_slower_at_every_batch_warns_and_explains_but_passes(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_clock(
        monkeypatch,
        {1: {"baseline": 1.0, "compressed": 1.4}, 8: {"baseline": 2.0, "compressed": 2.5}},
    )
    out = tmp_path / "out"
    result = _compress(write_recipe(output=FORMATS), out)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("warning:"))
    assert WARNING in line and "(0.71x at 1, 0.80x at 8)" in line
    assert "set gates.min_speedup: {cpu: 1.0} to fail the run" in line
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.status == "passed" and len(report.warnings) == 1
    assert report.warnings[0] in line
    profile = report.latency_profile
    assert profile is not None and [b.batch_size for b in profile.batches] == [1, 8]
    assert profile.batches[0].advice.startswith("INT8 is 0.71x at batch 1")
    assert "latency explained, batch 1" in result.output and profile.advice in result.output
    md = (out / "report.md").read_text()
    assert "## Warnings" in md and report.warnings[0] in md
    assert "## Latency explained" in md and "### Batch 8" in md and "| QLinearConv |" in md
    html = (out / "report.html").read_text()
    assert 'id="warnings"' in html and 'id="latency"' in html


def test_min_speedup_of_one_fails_the_run_instead(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_clock(
        monkeypatch,
        {1: {"baseline": 1.0, "compressed": 1.4}, 8: {"baseline": 2.0, "compressed": 2.5}},
    )
    result = _compress(write_recipe(), tmp_path / "out", "--set", "gates.min_speedup.cpu=1.0")
    assert result.exit_code == 1, result.output
    assert "min_speedup.cpu" in result.output and WARNING not in result.output


def test_slower_at_one_batch_is_explained_without_a_warning(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_clock(
        monkeypatch,
        {1: {"baseline": 1.0, "compressed": 1.4}, 8: {"baseline": 2.0, "compressed": 1.0}},
    )
    out = tmp_path / "out"
    result = _compress(write_recipe(), out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["warnings"] == [] and WARNING not in result.output
    assert [b["batch_size"] for b in doc["latency_profile"]["batches"]] == [1]


def test_faster_everywhere_says_nothing_about_latency(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_clock(
        monkeypatch,
        {1: {"baseline": 1.0, "compressed": 0.5}, 8: {"baseline": 2.0, "compressed": 1.0}},
    )
    out = tmp_path / "out"
    result = _compress(write_recipe(), out)
    assert result.exit_code == 0, result.output
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.warnings == [] and report.latency_profile is None
    assert "latency explained" not in result.output


AUTO = {
    "budget": 0.01,
    "budget_from": "gates.max_accuracy_drop",
    "metric": "top1",
    "float_metric": 0.9815,
    "batch_sizes": [1, 64],
    "threads": 1,
    "candidates": [
        {
            "name": "static-qdq",
            "settings": {
                "mode": "static",
                "format": "qdq",
                "activations": "uint8",
                "per_channel": True,
            },
            "metric": 0.9815,
            "drop": 0.0,
            "size_ratio": 0.287,
            "latency_ms": {"1": 0.0144, "64": 0.077},
            "speedup": {"1": 0.82, "64": 1.67},
            "speedup_ci95": {"1": [0.81, 0.83], "64": [1.6, 1.7]},
            "within_budget": True,
            "error": None,
        },
        {
            "name": "dynamic-per-tensor",
            "settings": {"mode": "dynamic", "per_channel": False, "op_types": ["Gemm", "MatMul"]},
            "metric": 0.9796,
            "drop": 0.0019,
            "size_ratio": 0.27,
            "latency_ms": {"1": 0.012, "64": 0.06},
            "speedup": {"1": 0.97, "64": 1.97},
            "speedup_ci95": {"1": [0.95, 0.99], "64": [1.9, 2.0]},
            "within_budget": True,
            "error": None,
        },
        {
            "name": "static-qoperator",
            "settings": {"mode": "static", "format": "qoperator"},
            "within_budget": False,
            "error": "onnxruntime refused the model",
        },
    ],
    "winner": "dynamic-per-tensor",
    "reason": "fastest within the 1.00 pt budget at batch 64 (1.97x; geometric mean 1.38x)",
    "fixed_default": "static-qdq",
}


def _report() -> Report:
    recipe = Recipe.model_validate(
        {
            "name": "r",
            "model": {"onnx": "m.onnx"},
            "data": {"evaluation": {"source": "digits", "split": "test"}},
            "evaluate": {"batch_sizes": [1, 64]},
        }
    )

    def model(acc: float) -> ModelResult:
        return ModelResult(
            path="m.onnx",
            metric="top1",
            accuracy=acc,
            size_bytes=100,
            gzip_bytes=90,
            params=10,
            nonzero_params=10,
            backends={"cpu": BackendResult(accuracy=acc)},
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
                settings={"precision": "int8", "mode": "auto"},
                seconds=3.0,
                details={"scheme": "int8_dynamic", "auto": AUTO},
            )
        ],
        baseline=model(0.98),
        compressed=model(0.979),
        deltas=Deltas(accuracy_pt=-0.1, size_ratio=0.27, gzip_ratio=0.3, params_ratio=1.0),
        gates=[],
        artifacts={},
    )


def test_the_auto_candidates_render_in_every_view() -> None:
    report = _report()
    (table,) = auto_tables(report)
    assert table.title == "quantize mode: auto (validation data)"
    assert table.header[-3:] == ["speedup b1", "speedup b64", "within budget"]
    static, dynamic, failed = table.rows
    assert static[0] == "static-qdq (fixed default)" and dynamic[0] == "dynamic-per-tensor (winner)"
    assert static[2:] == [
        "98.15%",
        "0.00 pt",
        "0.287x",
        "0.82x [0.81, 0.83]",
        "1.67x [1.60, 1.70]",
        "yes",
    ]
    assert dynamic[1] == "dynamic per-tensor Gemm/MatMul" and dynamic[3] == "0.19 pt"
    assert failed[2:] == [
        "failed: onnxruntime refused the model",
        "n/a",
        "n/a",
        *["not timed"] * 2,
        "no",
    ]
    assert table.lines[0].startswith("budget: 1.00 pt drop (from gates.max_accuracy_drop)")
    assert table.lines[1] == f"winner dynamic-per-tensor: {AUTO['reason']}"
    notes = stage_notes(report.stages[0].settings, report.stages[0].details)
    assert notes.startswith("mode auto: dynamic-per-tensor of 3 candidate(s)")
    assert "candidates" not in notes  # the table shows them, not the notes
    out = io.StringIO()
    render_console(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "quantize mode: auto (validation data)" in text
    assert "dynamic-per-tensor (winner)" in text and AUTO["reason"] in text
    md = render_markdown(report)
    assert "## Quantize mode: auto (validation data)" in md
    assert "| dynamic-per-tensor (winner) | dynamic per-tensor Gemm/MatMul | 97.96% |" in md
    html = render_html(report)
    assert 'id="auto"' in html and "dynamic-per-tensor (winner)" in html
