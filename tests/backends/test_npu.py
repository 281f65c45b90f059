"""The emulated Qualcomm HTP: sessions, agreement with the CPU EP, and refused nodes named early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime_qnn", reason="install modelquant[npu] (onnxruntime-qnn)")

from modelquant.backends import get_backend, npu  # noqa: E402
from modelquant.backends.parity import output_scale, parity  # noqa: E402
from modelquant.backends.qnn_quant import fix_batch, qnn_variant  # noqa: E402
from tests.backends.conftest import CALIBRATION_BATCH, BatchReader  # noqa: E402

pytestmark = pytest.mark.npu
BATCH = CALIBRATION_BATCH


def _predict(session: Any, x: np.ndarray) -> np.ndarray:
    """First output over x in batches of BATCH, the last one padded and trimmed."""
    outputs = []
    for start in range(0, len(x), BATCH):
        chunk = x[start : start + BATCH]
        n = len(chunk)
        if n < BATCH:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], BATCH - n, axis=0)])
        outputs.append(session.run(None, {"input": chunk})[0][:n])
    return np.concatenate(outputs)


def _single_op_model(path: Path, op_type: str) -> Path:
    """x -> Relu -> <op_type> -> Relu -> y on a static [4, 16] float tensor."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="before"),
        helper.make_node(op_type, ["a"], ["b"], name="op"),
        helper.make_node("Relu", ["b"], ["y"], name="after"),
    ]
    graph = helper.make_graph(
        nodes,
        op_type,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _celu_model(path: Path) -> Path:
    """Conv -> Celu -> Flatten -> Gemm at batch 8: the QNN EP has no Celu."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(10, 256)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Celu", ["c"], ["a"], name="celu"),
        helper.make_node("Flatten", ["a"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "celu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH, 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [BATCH, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(digits_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = tmp_path_factory.mktemp("npu")
    fixed = fix_batch(digits_fp32, out / "fp32_b8.onnx", BATCH)
    qoperator = out / "qoperator.onnx"
    quantize_static(
        str(fixed),
        str(qoperator),
        BatchReader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return {
        "fp32": fixed,
        "qdq": qnn_variant(digits_fp32, out / "qdq_u8.onnx", BatchReader(), batch_size=BATCH),
        "qoperator": qoperator,
        "celu": _celu_model(out / "celu.onnx"),
    }


def test_htp_is_available_with_versions() -> None:
    backend = get_backend("npu")
    ok, reason = backend.available()
    assert ok, reason
    assert backend.emulated and backend.execution_provider == "QNNExecutionProvider"
    versions = backend.versions()
    assert {"onnxruntime", "onnxruntime-qnn"} <= set(versions)
    assert backend.available() == (True, "")  # registering the plugin twice is harmless


@pytest.mark.parametrize("kind", ["fp32", "qdq"])
def test_model_runs_on_htp_and_agrees_with_cpu(models: dict[str, Path], kind: str) -> None:
    from modelquant.data import digits

    path = models[kind]
    assert npu.unsupported_nodes(path) == []
    test = digits.load("test")
    x = test.inputs["input"]
    session = npu.NpuBackend().session(path, threads=1)
    assert session.get_providers()[0] == "QNNExecutionProvider"
    on_htp = _predict(session, x)
    on_cpu = _predict(get_backend("cpu").session(path, threads=1), x)
    figures = parity(on_cpu, on_htp, output_scale(path))
    assert figures["samples"] == len(x) == 450
    assert figures["top1_agreement"] >= 0.98
    assert np.mean(on_htp.argmax(1) == test.labels) > 0.8  # the tiny CNN really learned digits
    if kind == "fp32":
        assert figures["quant_step"] is None
        assert figures["max_abs_diff"] < 1e-4
    else:
        assert figures["quant_step"] is not None and figures["quant_step"] > 0
        assert figures["beyond_one_step"] <= 0.01
        assert figures["max_steps"] <= 3


def test_free_batch_is_fixed_for_the_htp(digits_fp32: Path) -> None:
    session = npu.NpuBackend().session(digits_fp32, threads=1, batch_size=4)
    assert session.get_inputs()[0].shape == [4, 1, 8, 8]
    assert session.run(None, {"input": np.zeros((4, 1, 8, 8), np.float32)})[0].shape == (4, 10)


def test_refused_op_is_named_before_evaluation(models: dict[str, Path]) -> None:
    placement = npu.check_placement(models["celu"])
    assert placement.method == "assignment"
    assert placement.refused == [("celu", "Celu")]
    assert "Celu" in placement.reasons["celu"]
    with pytest.raises(npu.UnsupportedNodes) as caught:
        npu.NpuBackend().session(models["celu"], threads=1)
    assert caught.value.nodes == [("celu", "Celu")]
    assert "celu (Celu)" in str(caught.value)


def test_qoperator_model_is_refused_with_its_qgemm_nodes(models: dict[str, Path]) -> None:
    # QOperator graphs make onnxruntime's NHWC layout pass fail even with CPU fallback allowed,
    # so the names come from the QNN EP's validation log.
    placement = npu.check_placement(models["qoperator"])
    assert placement.method == "validation log"
    refused = set(placement.refused)
    assert {op for _, op in refused} >= {"QGemm"}
    assert sum(op == "QGemm" for _, op in refused) == 2
    with pytest.raises(npu.UnsupportedNodes) as caught:
        npu.NpuBackend().session(models["qoperator"], threads=1)
    assert set(caught.value.nodes) == refused


def test_other_dynamic_dims_are_reported(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    placement = npu.check_placement(tmp_path / "dyn.onnx", batch_size=2)
    assert placement.refused == [("relu", "Relu")]
    assert placement.reasons["relu"] == "Cannot get shape"


def test_graph_the_htp_cannot_compile_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    # The QNN EP validates Round in FP32, then the HTP fails to finalize the graph
    # (QNN_COMMON_ERROR_MEM_ALLOC): no node can be named, so saying "[]" would be a lie.
    path = _single_op_model(tmp_path / "round.onnx", "Round")
    with pytest.raises(npu.HtpCompileError, match="Failed to finalize QNN graph"):
        npu.unsupported_nodes(path)
    with pytest.raises(npu.HtpCompileError, match="could not compile"):
        npu.NpuBackend().session(path, threads=1)
