"""precision: fp8: E4M3FN Q/DQ through onnxruntime.quantization, scales computed by modelquant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from pydantic import ValidationError
from typer.testing import CliRunner

from modelquant.backends.npu import NpuBackend
from modelquant.cli import app
from modelquant.schemes import fp8
from modelquant.stages.quantize import QuantizeConfig
from tests.pipeline_runs import run_recipe

REPO = Path(__file__).resolve().parents[2]
EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}
F8 = onnx.TensorProto.FLOAT8E4M3FN


def quantize_fp8(checkpoint: Path, out: Path, opset: int = 17, **changes: Any) -> Any:
    settings = changes.pop("quantize", {"precision": "fp8"})
    return run_recipe(
        checkpoint,
        out,
        stages=[{"export": {"opset": opset}}, {"quantize": settings}],
        **{"evaluate": EVAL, **changes},
    )


def f8_zero_points(graph: Any) -> set[str]:
    return {t.name for t in graph.initializer if t.data_type == F8 and len(t.dims) <= 1}


def test_shipped_recipe_keeps_digits_accuracy(tmp_path: Path) -> None:
    """recipes/digits-fp8.yaml on the real digits CNN: FP8 tensors, a drop of at most 0.3 point
    on test, gates passed, and the CPU latency of the FP8 model labelled emulated."""
    sets = ["evaluate.repeats=5", "evaluate.warmup=1", "evaluate.batch_sizes=[32]"]
    result = CliRunner().invoke(
        app,
        [
            "compress",
            str(REPO / "recipes" / "digits-fp8.yaml"),
            "--out",
            str(tmp_path),
            *[a for s in sets for a in ("--set", s)],
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["baseline"]["accuracy"] >= 0.97
    assert report["baseline"]["accuracy"] - report["compressed"]["accuracy"] <= 0.003
    assert report["deltas"]["size_ratio"] <= 0.3
    path = tmp_path / "model.fp8.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(path)).graph
    weights = [t.name for t in graph.initializer if t.data_type == F8 and len(t.dims) > 1]
    assert len(weights) == 5, weights  # 3 convolutions and 2 linear layers
    # E4M3 flushes to zero only what is below half its smallest subnormal (1 weight of 150k here)
    assert report["compressed"]["nonzero_params"] >= 0.999 * report["baseline"]["params"]
    cpu = report["compressed"]["backends"]["cpu"]
    assert cpu["emulated"] and "emulated" in cpu["notes"][0]
    assert not report["baseline"]["backends"]["cpu"]["emulated"]
    assert "cpu (emulated) p50" in (tmp_path / "report.md").read_text()


def test_old_opset_is_raised_and_every_node_is_fp8(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize_fp8(tiny_checkpoint, tmp_path, opset=17)
    details = report.stages[1].details
    assert details["opset"] == {"from": 17, "to": 19}
    path = tmp_path / "model.fp8.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain == "") == 19
    zeros = f8_zero_points(model.graph)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.input[2] in zeros for n in qdq)
    producer = {o: n for n in model.graph.node for o in n.output}
    initializers = {t.name: t for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear" and initializers[dq.input[0]].data_type == F8
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.02


def test_relu_survives_onnxruntime_graph_optimizations(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """onnxruntime's CPU optimizer drops a Relu in front of a QuantizeLinear whose zero point is
    not int8/uint8 (an FP8 zero point clamps nothing): the written graph must give the same
    outputs with every optimization on as with none."""
    quantize_fp8(tiny_checkpoint, tmp_path)
    path = tmp_path / "model.fp8.onnx"
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "Relu" for n in graph.node) == 2
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    outs = []
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"input": x})[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
def test_scales_are_absmax_over_448(
    tiny_checkpoint: Path, tmp_path: Path, per_channel: bool
) -> None:
    """Every FP8 activation scale is one modelquant computed (none left to onnxruntime's
    std-based choice), and each weight's scale (or each output channel's) maps its largest |w|
    to 448."""
    settings = {"precision": "fp8", "fp8": {"per_channel": per_channel}}
    report, _ = quantize_fp8(tiny_checkpoint, tmp_path, quantize=settings)
    calibration = report.stages[1].details["calibration"]
    assert calibration["scales"] == "absmax" and calibration["cache"] == "computed"
    computed = json.loads((tmp_path / calibration["cache_file"]).read_text())
    source = onnx.load(str(tmp_path / "model.fp32.onnx")).graph
    floats = {t.name: numpy_helper.to_array(t) for t in source.initializer}
    graph = onnx.load(str(tmp_path / "model.fp8.onnx")).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = 0
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert any(np.isclose(values[node.input[1]], s, rtol=1e-6) for s in computed.values())
        elif node.op_type == "DequantizeLinear" and node.input[0] in values:
            w = floats[node.input[0].removesuffix("_quantized")]
            # Conv (out, in, kh, kw) and Gemm with transB (out, in): output channels lead
            absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            expected = absmax / 448 if per_channel else absmax.max() / 448
            np.testing.assert_allclose(values[node.input[1]], expected, rtol=1e-6)
            weights += 1
    assert weights == 3


def test_scale_choices_on_a_histogram() -> None:
    """absmax keeps the outlier; a percentile clips it; mse never has more error than absmax."""
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.normal(0, 1, 100_000), [40.0]])).astype(np.float32)
    counts, edges = np.histogram(x, bins=fp8.HISTOGRAM_BINS)
    absmax = float(x.max())
    by_absmax = fp8.scale_from_histogram(counts, edges, absmax, "absmax", 99.99)
    by_percentile = fp8.scale_from_histogram(counts, edges, absmax, "percentile", 99.99)
    by_mse = fp8.scale_from_histogram(counts, edges, absmax, "mse", 99.99)
    assert by_absmax == pytest.approx(40.0 / 448)
    assert by_percentile < by_absmax / 5
    assert by_mse <= by_absmax * (1 + 1e-6)

    def err(scale: float) -> float:
        return float(np.sum((x - fp8.fake_quantize(x, np.float32(scale))) ** 2))

    assert err(by_mse) <= err(by_absmax) * 1.01
    assert fp8.scale_from_histogram(np.zeros(4), np.arange(5.0), 0.0, "mse", 99.0) == 1.0


def test_fp8_rules_in_a_float_model_verify_by_their_weights(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """precision fp32 with an fp8 rule: only the matched layer becomes fp8, which the stage's
    verification reads from its weight's DequantizeLinear (FLOAT8E4M3FN)."""
    rule = {"match": "classifier.3", "precision": "fp8"}
    report, _ = quantize_fp8(
        tiny_checkpoint,
        tmp_path,
        quantize={"precision": "fp32", "overrides": [rule], "fp8": {"per_channel": True}},
    )
    said = report.stages[1].details["rule_schemes"]["fp8"]
    assert said["scheme"] == "fp8" and said["nodes"] == 1 and said["per_channel"] is True
    graph = onnx.load(str(tmp_path / report.artifacts["baseline"])).graph
    before = next(n for n in graph.node if n.name == "/classifier/classifier.3/Gemm")
    after = onnx.load(str(tmp_path / report.artifacts["compressed"]))
    weights = {t.name for t in graph.initializer}
    assert fp8.applied(before, after, weights)
    other = next(n for n in graph.node if n.name == "/classifier/classifier.1/Gemm")
    assert not fp8.applied(other, after, weights)  # its weight is read in float
    quantize_fp8(
        tiny_checkpoint, tmp_path / "int8", quantize={"precision": "int8", "mode": "static"}
    )
    int8 = onnx.load(str(tmp_path / "int8" / "model.int8.onnx"))
    assert not fp8.applied(before, int8, weights)  # dequantized, but from int8


def test_a_model_the_converter_cannot_raise_is_bad_input(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from modelquant.errors import UserError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    bad = helper.make_node("Relu", ["x"], ["y"], name="relu", alpha=1.0)  # Relu has no alpha
    model = helper.make_model(
        helper.make_graph([bad], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="could not raise this model from opset 17.*opset: 19"):
        fp8.raise_opset(tmp_path / "m.onnx", tmp_path)
    good = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(good, str(tmp_path / "good.onnx"))
    raised, opset = fp8.raise_opset(tmp_path / "good.onnx", tmp_path)
    assert opset == 17 and onnx.load(str(raised)).opset_import[0].version == 19
    assert fp8.raise_opset(raised, tmp_path) == (raised, 19)


def test_emulated_cpu_latency_is_never_gated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    evaluate = {**EVAL, "batch_sizes": [4]}
    report, _ = quantize_fp8(
        tiny_checkpoint, tmp_path, gates={"min_speedup": {"cpu": 5.0}}, evaluate=evaluate
    )
    gate = next(g for g in report.gates if g.name == "min_speedup.cpu")
    assert gate.passed and gate.value is None and "emulated" in gate.detail
    assert report.status == "passed"


def test_settings_go_in_the_fp8_section() -> None:
    assert QuantizeConfig.model_validate({"precision": "fp8"}).scheme_config().scales == "absmax"
    cfg = QuantizeConfig.model_validate({"precision": "fp8", "fp8": {"scales": "mse"}})
    assert cfg.scheme_config().scales == "mse"
    with pytest.raises(ValidationError, match=r"per_channel: not a setting of precision fp8.*fp8:"):
        QuantizeConfig.model_validate({"precision": "fp8", "per_channel": False})
    with pytest.raises(ValidationError, match="fp8: settings of a precision that neither"):
        QuantizeConfig.model_validate({"precision": "int8", "fp8": {"scales": "mse"}})
    with pytest.raises(ValidationError):
        QuantizeConfig.model_validate({"precision": "fp8", "fp8": {"scale": "mse"}})


@pytest.mark.npu
@pytest.mark.skipif(not NpuBackend().available()[0], reason=NpuBackend().available()[1])
def test_npu_is_skipped_with_its_reason(tiny_checkpoint: Path, tmp_path: Path) -> None:
    evaluate = {**EVAL, "backends": ["cpu", "npu"], "npu": {"on_unsupported": "fail"}}
    report, _ = quantize_fp8(tiny_checkpoint, tmp_path, evaluate=evaluate)
    skipped = report.compressed.backends["npu"].skipped
    assert skipped is not None and "FP8" in skipped
    assert "not made" in report.stages[1].details["npu_variant"]
    assert report.compressed.backends["cpu"].accuracy is not None
