"""The quantize stage: QDQ/QOperator/dynamic INT8 through onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from modelquant.errors import UserError
from modelquant.models import onnx_file
from modelquant.stages.quantize import QuantizeConfig
from tests.pipeline_runs import run_recipe

EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def quantize(checkpoint: Path, out: Path, **settings: object):  # type: ignore[no-untyped-def]
    stages = [{"export": {}}, {"quantize": settings}]
    return run_recipe(checkpoint, out, stages=stages, evaluate=EVAL)


def test_static_qdq_default(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path)
    path = tmp_path / "model.int8.onnx"
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(path)
    details = report.stages[1].details
    assert details["format"] == "qdq" and details["qdq_nodes"] > 0
    assert details["calibration"]["samples"] == 128
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.02
    assert report.deltas.size_ratio < 0.8
    # per-channel int8 weights: parameters are counted through their DequantizeLinear
    assert report.compressed.params == report.baseline.params


def test_qoperator_format(tiny_checkpoint: Path, tmp_path: Path) -> None:
    quantize(tiny_checkpoint, tmp_path, format="qoperator")
    assert {"QLinearConv", "QuantizeLinear"} <= ops(tmp_path / "model.int8.onnx")


def test_dynamic_mode(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path, mode="dynamic")
    assert "DynamicQuantizeLinear" in ops(tmp_path / "model.int8.onnx") or "MatMulInteger" in ops(
        tmp_path / "model.int8.onnx"
    )
    assert "calibration" not in report.stages[1].details


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration(tiny_checkpoint: Path, tmp_path: Path, method: str) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path, calibration={"method": method, "samples": 64})
    assert report.stages[1].details["calibration"]["method"] == method
    assert report.compressed.accuracy > 0.8


def test_override_keeps_classifier_in_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(
        tiny_checkpoint, tmp_path, overrides=[{"match": "re:classifier.*", "precision": "fp32"}]
    )
    kept = report.stages[1].details["kept_float"]
    assert kept and all("classifier" in name for name in kept)
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    gemm_inputs = {i for n in model.graph.node if n.op_type == "Gemm" for i in n.input}
    assert "classifier.3.weight" in gemm_inputs  # the float weight feeds the Gemm directly


def test_override_matching_nothing_is_an_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'re:head.*' matches no layer"):
        quantize(tiny_checkpoint, tmp_path, overrides=[{"match": "re:head.*"}])


def test_calibration_cache_reused_across_settings(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first, _ = quantize(tiny_checkpoint, tmp_path, per_channel=True)
    second, _ = quantize(tiny_checkpoint, tmp_path, per_channel=False)  # new stage key, same ranges
    assert first.stages[1].details["calibration"]["cache"] == "computed"
    assert second.stages[1].details["calibration"]["cache"] == "reused"
    assert not second.stages[1].cached


def test_rerun_resumes_from_stage_cache_and_is_deterministic(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    quantize(tiny_checkpoint, tmp_path / "a")
    again, _ = quantize(tiny_checkpoint, tmp_path / "a")
    assert [s.cached for s in again.stages] == [True, True]
    quantize(tiny_checkpoint, tmp_path / "b")
    assert onnx_file.content_hash(tmp_path / "a" / "model.int8.onnx") == onnx_file.content_hash(
        tmp_path / "b" / "model.int8.onnx"
    )


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        QuantizeConfig.model_validate({"precision": "int8", "per_chanel": True})
