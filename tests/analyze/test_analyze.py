"""`modelquant analyze` and the `analyze` stage: per-layer SQNR (and metric) of the quantize
stage's layers, worst first, in a table, sensitivity.json and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.sensitivity import Sensitivity
from tests.pipeline_runs import run_recipe

runner = CliRunner()
EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}
WITH_VALIDATION = {
    "train": {"source": "digits", "split": "train"},
    "calibration": {"source": "digits", "split": "train", "samples": 64},
    "validation": {"source": "digits", "split": "val", "samples": 96},
    "evaluation": {"source": "digits", "split": "test"},
}


def analyze(recipe: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app, ["analyze", str(recipe), "--out", str(out), "--samples", "32", *extra]
    )


def weighted_layers(model: Path) -> set[str]:
    return {n.name for n in onnx.load(str(model)).graph.node if n.op_type in ("Conv", "Gemm")}


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output
    assert len(lines) == 1, output
    return lines[0]


def test_table_and_json_list_every_conv_and_gemm(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = analyze(write_recipe(), out)
    assert result.exit_code == 0, result.output
    expected = weighted_layers(out / "model.fp32.onnx")
    assert len(expected) == 3  # the tiny CNN: one Conv, two Gemm
    doc = Sensitivity.model_validate_json((out / "sensitivity.json").read_text())
    assert doc.schema_version == 1 and doc.recipe == "tiny"
    assert {layer.node for layer in doc.layers} == expected
    assert [layer.rank for layer in doc.layers] == [1, 2, 3]
    assert doc.activations.samples == 32 and doc.activations.data == "calibration"
    assert doc.accuracy is None and doc.ranked_by == "activation_sqnr_db"
    table = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(table) == len(expected)
    for layer in doc.layers:
        assert any(layer.node in row for row in table), layer.node
        # int8 keeps tens of dB; onnxruntime's raw qdq_err reads single digits where the
        # quantizer folded a Relu into the Q/DQ range (it compares the Relu's input with it)
        assert layer.activation_sqnr_db is not None and layer.activation_sqnr_db > 25
        assert layer.weight_sqnr_db is not None and layer.weight_sqnr_db > 25
        assert layer.activation_sqnr_accumulated_db is not None
    # ranked by each layer's own error, lowest SQNR first
    own = [layer.activation_sqnr_db for layer in doc.layers]
    assert own == sorted(own)
    # the file is the schema's JSON, and the command leaves no report of its own
    assert json.loads((out / "sensitivity.json").read_text())["layers"][0]["match_names"]
    assert not (out / "report.json").exists()


def test_json_flag_prints_only_the_document(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = analyze(write_recipe(), tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema_version"] == 1


def test_recipe_without_quantize_stage_exits_2(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = analyze(write_recipe(stages=[{"export": {}}]), tmp_path / "o")
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "no quantize stage" in line and "- quantize:" in line


def test_bad_recipe_exits_2(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    result = analyze(write_recipe(stages=[{"export": {"opsett": 17}}]), tmp_path / "o")
    assert result.exit_code == 2
    assert "opsett" in one_line_error(result.output)


def test_accuracy_adds_the_metric_of_each_layer_alone(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = analyze(write_recipe(data=WITH_VALIDATION), out, "--accuracy")
    assert result.exit_code == 0, result.output
    doc = Sensitivity.model_validate_json((out / "sensitivity.json").read_text())
    acc = doc.accuracy
    assert acc is not None and doc.ranked_by == "metric_delta"
    assert acc.data == "validation" and acc.samples == 96
    assert acc.variant == "only_this_layer_quantized" and acc.variant_reason
    assert 0.5 < acc.baseline <= 1 and 0.5 < acc.quantized <= 1
    for layer in doc.layers:
        assert layer.metric is not None and layer.metric_delta is not None
        assert layer.metric_delta == pytest.approx(layer.metric - acc.baseline)
        assert layer.output_sqnr_db is not None
    keys = [(layer.metric_delta, layer.output_sqnr_db) for layer in doc.layers]
    assert keys == sorted(keys)
    assert "only this layer quantized" in result.stdout
    assert "delta" in result.stdout


def test_accuracy_is_never_measured_on_the_evaluation_data(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = analyze(write_recipe(), tmp_path / "o", "--accuracy")  # no data.validation
    assert result.exit_code == 2
    assert "data.validation" in one_line_error(result.output)


def test_analyze_stage_puts_the_layers_in_the_report(tiny_checkpoint: Path, tmp_path: Path) -> None:
    stages: list[dict[str, Any]] = [
        {"export": {}},
        {"analyze": {"accuracy": False, "samples": 32}},
        {"quantize": {"per_channel": False}},
    ]
    report, _ = run_recipe(tiny_checkpoint, tmp_path, stages=stages, evaluate=EVAL)
    assert [s.name for s in report.stages] == ["export", "analyze", "quantize"]
    details = report.stages[1].details
    layers = details["layers"]
    assert {layer["node"] for layer in layers} == weighted_layers(tmp_path / "model.fp32.onnx")
    own = [layer["activation_sqnr_db"] for layer in layers]
    assert own == sorted(own)
    # it analysed the quantize stage after it (per-tensor weights), and passed the model on
    assert details["sensitivity"]["quantize"]["per_channel"] is False
    assert report.stages[2].details["qdq_nodes"] > 0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["stages"][1]["details"]["layers"][0]["node"] == layers[0]["node"]


def test_analyze_stage_needs_a_quantize_stage_after_it(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    stages = [{"export": {}}, {"quantize": {}}, {"analyze": {}}]
    result = runner.invoke(
        app, ["compress", str(write_recipe(stages=stages)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "before a quantize stage" in one_line_error(result.output)


def test_recipe_file_for_the_digits_example_is_analysable() -> None:
    from modelquant.recipe import load_recipe
    from modelquant.stages.analyze import analysis_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "digits-int8.yaml")
    names = [name for name, _ in analysis_recipe(recipe, False, 64).stage_list()]
    assert names == ["export", "analyze"]


def test_analyze_stage_rejects_unknown_keys(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    stages = [{"export": {}}, {"analyze": {"acuracy": True}}, {"quantize": {}}]
    result = runner.invoke(
        app, ["compress", str(write_recipe(stages=stages)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "accuracy" in one_line_error(result.output)


def test_layers_the_recipe_keeps_float_are_listed_not_analysed(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    stages = [
        {"export": {}},
        {"quantize": {"overrides": [{"match": "classifier.3", "precision": "fp32"}]}},
    ]
    out = tmp_path / "out"
    result = analyze(write_recipe(stages=stages), out)
    assert result.exit_code == 0, result.output
    doc = Sensitivity.model_validate_json((out / "sensitivity.json").read_text())
    assert doc.kept_float == ["/classifier/classifier.3/Gemm"]
    assert {layer.layer for layer in doc.layers} == {"features.0", "classifier.1"}
