"""Accuracy-aware fallback on the model all-INT8 breaks (breast_cancer: 17 points lost on
validation): the budget is met in few rounds with the culprit layer in higher precision, and a
budget out of reach exits 1 with the best model published."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from typer.testing import CliRunner

from modelquant.cli import app

runner = CliRunner()
FAST = ["--set", "evaluate.repeats=3", "--set", "evaluate.warmup=0", "--set", "evaluate.block=3"]
BN = "/bn_cont/BatchNormalization"


def compress(out: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = runner.invoke(
        app, ["compress", "breast-cancer-fallback", "--out", str(out), *FAST, *extra]
    )
    report = json.loads((out / "report.json").read_text())
    return result.exit_code, report


def test_fallback_meets_the_budget_with_the_culprit_in_float(tmp_path: Path) -> None:
    code, report = compress(tmp_path)
    assert code == 0
    fallback = report["stages"][1]["details"]["fallback"]
    assert fallback["met"] and 1 <= fallback["first_met_round"] <= 3
    # after the round that met it, one more without its w8a16 layers (they cost CPU time)
    assert fallback["rounds_taken"] == fallback["first_met_round"] + 1
    assert "w8a16" not in fallback["kept_higher"].values()
    assert fallback["ranking"][0]["node"] == BN  # ranked worst by its own error
    assert fallback["kept_higher"][BN] == "fp32"
    first, kept = fallback["rounds"][0], fallback["rounds"][fallback["kept_round"]]
    assert first["drop"] > 0.05 and kept["drop"] <= 0.005
    gate = next(g for g in report["gates"] if g["name"] == "quantize.accuracy_budget")
    assert gate["passed"] and gate["value"] == kept["drop"]
    # the published model is the kept round's: bn_cont reads the float input directly
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    bn = next(n for n in graph.node if n.name == BN)
    assert bn.input[0] == "input"
    assert "Accuracy-aware fallback" in (tmp_path / "report.md").read_text()
    assert report["compressed"]["accuracy"] >= report["baseline"]["accuracy"] - 0.005


def test_out_of_rounds_exits_1_with_the_best_round_published(tmp_path: Path) -> None:
    code, report = compress(tmp_path, "--set", "stages.1.quantize.max_rounds=1")
    assert code == 1
    assert report["status"] == "gate_failed"
    fallback = report["stages"][1]["details"]["fallback"]
    assert not fallback["met"] and fallback["rounds_taken"] == 1
    drops = [r["drop"] for r in fallback["rounds"]]
    assert fallback["kept_round"] == drops.index(min(drops)) == 1  # w8a16 beat all-INT8
    gate = next(g for g in report["gates"] if g["name"] == "quantize.accuracy_budget")
    assert not gate["passed"] and "best model is published" in gate["detail"]
    assert (tmp_path / "model.int8.onnx").is_file()
    # the 16-bit activations of round 1 are in the published graph
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    zero_points = {t.name: t.data_type for t in graph.initializer}
    dq = next(
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.output[0] in (next(x for x in graph.node if x.name == BN).input[0],)
    )
    assert zero_points[dq.input[2]] == onnx.TensorProto.UINT16


def test_fallback_off_reports_the_drop_and_changes_nothing(tmp_path: Path) -> None:
    code, report = compress(tmp_path, "--set", "stages.1.quantize.fallback=off")
    assert code == 1
    fallback = report["stages"][1]["details"]["fallback"]
    assert fallback["rounds_taken"] == 0 and fallback["kept_higher"] == {}


def test_the_npu_variant_keeps_the_fallbacks_float_layers(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("onnxruntime_qnn")
    code, report = compress(tmp_path, "--set", "evaluate.backends=[cpu, npu]")
    assert code == 0
    details = report["stages"][1]["details"]
    assert "bn_cont" in " ".join(details["npu_variant"]["kept_float"]).replace("/", " ")
    assert "fallback_not_applied" not in details["npu_variant"]
    npu = report["variants"]["npu"]
    assert npu["accuracy"] >= report["baseline"]["accuracy"] - 0.02


def test_analyze_measures_the_layers_the_fallback_would_move(tmp_path: Path) -> None:
    """analyze on a recipe with a budget ranks the plain quantization's layers: the fallback
    must not run inside it and hide the culprit in float."""
    result = runner.invoke(
        app, ["analyze", "breast-cancer-fallback", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layers"][0]["node"] == BN
    assert BN not in doc.get("kept_float", [])


def test_settings_that_cannot_work_are_bad_input() -> None:
    import pytest
    from pydantic import ValidationError

    from modelquant.stages.quantize import QuantizeConfig

    bad = [
        ({"accuracy_budget": 0.01, "mode": "dynamic"}, "accuracy_budget works with static int8"),
        ({"accuracy_budget": 0.01, "precision": "int4"}, "accuracy_budget works with static int8"),
        ({"fallback": "fp32"}, "without accuracy_budget does nothing"),
        ({"format": "qoperator", "activations": "uint16"}, "set `format: qdq`"),
        (
            {"format": "qoperator", "overrides": [{"match": "x", "precision": "w8a16"}]},
            "set `format: qdq`",
        ),
        ({"overrides": [{"match": "re:(("}]}, "not a valid regular expression"),
    ]
    for settings, message in bad:
        with pytest.raises(ValidationError, match=message):
            QuantizeConfig.model_validate(settings)
