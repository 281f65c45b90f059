"""The shipped recipes run end to end on the digits example and show what their issues promise.

Latency gates are switched off here: timings belong in benchmarks/, not in tests that CI gates on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from modelquant.backends.npu import NpuBackend
from modelquant.cli import app

REPO = Path(__file__).resolve().parent.parent


def compress(recipe: str, out: Path, *overrides: str) -> dict[str, Any]:
    sets = [
        arg
        for o in ("gates.min_speedup={}", "evaluate.repeats=20", *overrides)
        for arg in ("--set", o)
    ]
    result = CliRunner().invoke(
        app, ["compress", str(REPO / "recipes" / recipe), "--out", str(out), *sets]
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    details: dict[str, Any] = next(s for s in report["stages"] if s["name"] == name)["details"]
    return details


def test_digits_int8(tmp_path: Path) -> None:
    report = compress("digits-int8.yaml", tmp_path)
    assert report["baseline"]["accuracy"] >= 0.97  # a really trained model
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.005
    assert report["deltas"]["size_ratio"] <= 0.3
    for model in ("baseline", "compressed"):
        assert report[model]["backends"]["cpu"]["latency_ms"]["1"]["p50"] > 0
    env = report["environment"]
    assert env["onnxruntime"] and env["torch"] and env["cpu"]
    path = tmp_path / "model.int8.onnx"
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_digits_int4(tmp_path: Path) -> None:
    report = compress("digits-int4.yaml", tmp_path)
    assert report["baseline"]["accuracy"] >= 0.97
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.005
    assert report["deltas"]["size_ratio"] <= 0.15
    payload = stage(report, "quantize")["payload_bytes"]
    assert payload["after"] * 7 <= payload["before"]  # the Linear weights: 1/7 of FP32 or less
    path = tmp_path / "model.int4.onnx"
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops


def test_digits_mixed_map_in_the_graph(tmp_path: Path) -> None:
    """Each rule's precision read back from the published graph: the input conv reads a float
    weight, the hidden Gemm a per-tensor int8 weight, the head an fp16 weight, the rest int8."""
    report = compress("digits-mixed.yaml", tmp_path)
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.005
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.int8.onnx")))
    init = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}

    def weight(node: str) -> tuple[str, int]:
        """(how the weight arrives, the stored scale count or element type)."""
        w = nodes[node].input[1]
        made = producer.get(w)
        if made is not None and made.op_type == "DequantizeLinear":
            scales = init[made.input[1]]
            zp_type = onnx.TensorProto.DataType.Name(init[made.input[2]].data_type)
            return f"dq-{zp_type}", int(max(1, *scales.dims) if scales.dims else 1)
        if made is not None and made.op_type == "Cast":
            return "cast", init[made.input[0]].data_type
        return "float", init[w].data_type

    assert weight("/features/features.0/Conv") == ("float", onnx.TensorProto.FLOAT)
    assert weight("/classifier/classifier.1/Gemm") == ("dq-INT8", 1)  # per-tensor by rule
    assert weight("/features/features.2/Conv")[0] == "dq-INT8"
    assert weight("/features/features.2/Conv")[1] > 1  # the stage's per-channel
    head = nodes["/classifier/classifier.3/Gemm"]
    assert init[head.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert stage(report, "quantize")["precision_map"] == {
        "/classifier/classifier.1/Gemm": "int8",
        "/classifier/classifier.3/Gemm": "fp16",
        "/features/features.0/Conv": "fp32",
    }


@pytest.mark.slow
def test_digits_eighth(tmp_path: Path) -> None:
    report = compress("digits-eighth.yaml", tmp_path)
    assert report["compressed"]["size_bytes"] * 8 <= report["baseline"]["size_bytes"]
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.01
    assert stage(report, "prune")["params_after"] <= 0.3 * stage(report, "prune")["params_before"]


@pytest.mark.slow
def test_digits_prune_int8(tmp_path: Path) -> None:
    report = compress("digits-prune-int8.yaml", tmp_path)
    prune = stage(report, "prune")
    assert abs(prune["reached_sparsity"] - 0.5) <= 0.01
    assert prune["per_layer_sparsity"]
    assert prune["accuracy_before"] - prune["accuracy_after"] <= 0.01
    assert report["deltas"]["gzip_ratio"] < report["deltas"]["size_ratio"]  # zeros compress


@pytest.mark.slow
def test_digits_structured_int8(tmp_path: Path) -> None:
    report = compress("digits-structured-int8.yaml", tmp_path)
    prune = stage(report, "prune")
    assert prune["params_after"] <= 0.6 * prune["params_before"]
    for shapes in prune["shapes"].values():
        assert shapes["after"] <= shapes["before"]
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.01


@pytest.mark.slow
def test_digits_distill_int8(tmp_path: Path) -> None:
    # The student-alone rerun doubles the training time; the recipe keeps it, the test skips it.
    report = compress("digits-distill-int8.yaml", tmp_path, "stages.0.distill.compare_alone=false")
    distill = stage(report, "distill")
    assert distill["retention"] >= 0.97
    assert distill["student_params"] * 3 < distill["teacher_params"]


@pytest.mark.slow
@pytest.mark.npu
@pytest.mark.skipif(not NpuBackend().available()[0], reason=NpuBackend().available()[1])
def test_digits_int8_npu(tmp_path: Path) -> None:
    report = compress("digits-int8-npu.yaml", tmp_path)
    npu = report["compressed"]["backends"]["npu"]
    assert npu["emulated"] and npu["latency_ms"]["1"]["p50"] > 0
    assert abs(npu["accuracy"] - report["baseline"]["accuracy"]) <= 0.01
    assert npu["parity"]["top1_agreement"] >= 0.99
    assert report["baseline"]["backends"]["npu"]["accuracy"] is not None
