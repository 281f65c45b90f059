"""The NPU flavour of a model: fixed batch and QNN-compatible QDQ, checked on the CPU EP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from modelquant.backends.qnn_quant import fix_batch, qnn_variant
from tests.backends.conftest import BatchReader


def _input_shape(path: Path) -> list[Any]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def _output_shape(path: Path) -> list[Any]:
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_fix_batch_fixes_inputs_and_outputs(digits_fp32: Path, tmp_path: Path) -> None:
    assert _input_shape(digits_fp32)[0] == "batch"
    fixed = fix_batch(digits_fp32, tmp_path / "b4.onnx", 4)
    assert _input_shape(fixed) == [4, 1, 8, 8]
    assert _output_shape(fixed) == [4, 10]
    with pytest.raises(ValueError, match="fixed to batch 4"):
        fix_batch(fixed, tmp_path / "b8.onnx", 8)


@pytest.mark.parametrize(
    ("activations", "weights", "zero_point_type"),
    [("uint8", "uint8", np.uint8), ("uint16", "uint8", np.uint16), ("uint8", "int8", np.uint8)],
)
def test_qnn_variant_is_static_qdq_that_keeps_accuracy(
    digits_fp32: Path, tmp_path: Path, activations: Any, weights: Any, zero_point_type: Any
) -> None:
    import onnxruntime as ort
    from onnx import numpy_helper

    from modelquant.data import digits

    out = qnn_variant(
        digits_fp32,
        tmp_path / "q.onnx",
        BatchReader(),
        activations=activations,
        weights=weights,
        batch_size=8,
        per_channel=True,
    )
    model = onnx.load(str(out))
    assert _input_shape(out) == [8, 1, 8, 8]
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not ops & {"QLinearConv", "QGemm", "MatMulInteger"}  # QDQ, never QOperator
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq_out = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert dq_out.op_type == "DequantizeLinear"
    assert inits[dq_out.input[2]].dtype == zero_point_type
    test = digits.load("test")
    x, y = test.inputs["input"][:448], test.labels[:448]
    fp32 = ort.InferenceSession(str(digits_fp32), providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    # The float simulation of the QDQ graph: the CPU EP's fused u8s8 kernels saturate on x86
    # without VNNI, which is not what this test is about.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quant = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    ref = fp32.run(None, {"input": x})[0].argmax(1)
    got = np.concatenate(
        [quant.run(None, {"input": x[i : i + 8]})[0] for i in range(0, 448, 8)]
    ).argmax(1)
    assert np.mean(got == ref) >= 0.97
    assert abs(np.mean(got == y) - np.mean(ref == y)) <= 0.03
