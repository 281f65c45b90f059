"""The precision map: layer rules that set a node's activation type, weight granularity,
symmetry or calibration method, read back from the ONNX graph the quantize stage writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from modelquant.errors import UserError
from modelquant.models import PACKAGE_DIR
from tests.pipeline_runs import run_recipe
from tests.stages.test_quantize import EVAL, quantize

CONV = "/features/features.0/Conv"
GEMM = "/classifier/classifier.1/Gemm"
HEAD = "/classifier/classifier.3/Gemm"


def graph(path: Path) -> onnx.GraphProto:
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ort.InferenceSession(str(path))
    return model.graph


def dequantizer_of(g: onnx.GraphProto, node_name: str, index: int) -> onnx.NodeProto:
    """The DequantizeLinear feeding input `index` of the node (through ORT's rename)."""
    node = next(n for n in g.node if n.name == node_name)
    producer = {o: n for n in g.node for o in n.output}
    made_by = producer[node.input[index]]
    assert made_by.op_type == "DequantizeLinear", (node_name, index, made_by.op_type)
    return made_by


def zero_point_type(g: onnx.GraphProto, dq: onnx.NodeProto) -> str:
    init = {t.name: t for t in g.initializer}
    return str(onnx.TensorProto.DataType.Name(init[dq.input[2]].data_type))


def scale(g: onnx.GraphProto, dq: onnx.NodeProto) -> np.ndarray:
    init = {t.name: t for t in g.initializer}
    return np.asarray(numpy_helper.to_array(init[dq.input[1]]))


def test_w8a16_rule_gives_that_layer_16_bit_activations(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    report, _ = quantize(
        tiny_checkpoint, tmp_path, overrides=[{"match": "classifier.3", "precision": "w8a16"}]
    )
    g = graph(tmp_path / "model.int8.onnx")
    assert zero_point_type(g, dequantizer_of(g, HEAD, 0)) == "UINT16"
    assert zero_point_type(g, dequantizer_of(g, HEAD, 1)) == "INT8"  # weights stay int8
    assert zero_point_type(g, dequantizer_of(g, GEMM, 0)) == "UINT8"
    details = report.stages[1].details
    assert details["precision_map"] == {HEAD: "int8"}
    assert details["calibration"]["layer_settings"] == {HEAD: {"activations": "uint16"}}
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.02


def test_per_channel_rule_overrides_the_stage(tiny_checkpoint: Path, tmp_path: Path) -> None:
    quantize(
        tiny_checkpoint,
        tmp_path,
        per_channel=False,
        overrides=[{"match": "type:Gemm", "per_channel": True, "precision": "int8"}],
    )
    g = graph(tmp_path / "model.int8.onnx")
    assert scale(g, dequantizer_of(g, GEMM, 1)).size == 32  # one scale per hidden unit
    assert scale(g, dequantizer_of(g, CONV, 1)).size == 1


def test_a_rules_calibration_method_reaches_the_quantizer(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The rule's method changes that layer's activation scale and no other."""
    stage = {"calibration": {"method": "minmax", "percentile": 99.0}}
    quantize(tiny_checkpoint, tmp_path / "minmax", **stage)
    quantize(
        tiny_checkpoint,
        tmp_path / "rule",
        **stage,
        overrides=[{"match": "classifier.1", "precision": "int8", "calibration": "percentile"}],
    )
    plain = graph(tmp_path / "minmax" / "model.int8.onnx")
    ruled = graph(tmp_path / "rule" / "model.int8.onnx")
    before, after = (scale(x, dequantizer_of(x, GEMM, 0)) for x in (plain, ruled))
    assert after < before  # the 99th percentile clips the largest activations
    assert scale(plain, dequantizer_of(plain, CONV, 0)) == scale(
        ruled, dequantizer_of(ruled, CONV, 0)
    )


DIGITS = {
    "factory": "modelquant.examples.digits.model:build",
    "checkpoint": str(PACKAGE_DIR / "examples" / "digits" / "cnn.safetensors"),
}


@pytest.mark.parametrize(
    "calibration", [{"method": "percentile", "percentile": 99.9}, {"method": "entropy"}]
)
def test_calibration_methods_give_different_scales(
    tmp_path: Path, calibration: dict[str, object]
) -> None:
    """The digits CNN's ReLU activations are skewed (a long right tail): a histogram method must
    clip them below min-max. quantize_static runs entropy with 128 bins, where its threshold search
    has one candidate (the full range), so entropy gave min-max's scales to the last digit."""
    method = str(calibration["method"])
    for name, settings in (("minmax", {}), (method, calibration)):
        run_recipe(
            Path("unused"),
            tmp_path / name,
            model=DIGITS,
            stages=[{"export": {}}, {"quantize": {"calibration": {**settings, "samples": 128}}}],
            evaluate=EVAL,
        )
    a = graph(tmp_path / "minmax" / "model.int8.onnx")
    b = graph(tmp_path / method / "model.int8.onnx")
    head = "/classifier/classifier.3/Gemm"
    minmax, other = (scale(x, dequantizer_of(x, head, 0)) for x in (a, b))
    assert other < minmax * 0.95


def test_dynamic_mode_refuses_activation_rules(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match="int8 \\(dynamic mode\\) layers, which scheme .int8_dynamic. does not take"
    ):
        quantize(
            tiny_checkpoint,
            tmp_path,
            mode="dynamic",
            overrides=[{"match": "type:Gemm", "precision": "w8a16"}],
        )


def test_a_rule_with_settings_but_float_precision_is_refused() -> None:
    from pydantic import ValidationError

    from modelquant.stages.quantize import QuantizeConfig

    with pytest.raises(ValidationError, match="add `precision: int8`"):
        QuantizeConfig.model_validate({"overrides": [{"match": "type:Gemm", "per_channel": False}]})
    QuantizeConfig.model_validate(
        {"overrides": [{"match": "type:Gemm", "precision": "int8", "per_channel": False}]}
    )


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_rule_settings_a_scheme_ignores_are_refused(
    tiny_checkpoint: Path, tmp_path: Path, precision: str
) -> None:
    with pytest.raises(UserError, match=f"symmetric on {precision} layers"):
        quantize(
            tiny_checkpoint,
            tmp_path,
            overrides=[{"match": "classifier.3", "precision": precision, "symmetric": True}],
        )


def test_a_rule_like_no_layer_names_the_layers_with_weights(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"layers with weights: features\.0, classifier\.1, "):
        quantize(tiny_checkpoint, tmp_path, overrides=[{"match": "nope"}])
