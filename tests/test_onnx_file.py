"""ONNX files on disk: sizes, hashes and copies include external data; parameter counting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelquant.models import onnx_file


def _model(weights: np.ndarray) -> onnx.ModelProto:
    w = numpy_helper.from_array(weights, "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_is_sized_hashed_and_copied(tmp_path: Path) -> None:
    weights = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    src = tmp_path / "a" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(
        _model(weights),
        str(src),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    assert onnx_file.external_files(src) == [src.parent / "m.onnx.data"]
    assert onnx_file.size_bytes(src) > 64 * 64 * 4
    dst = onnx_file.copy(src, tmp_path / "b" / "copy.onnx")
    assert (tmp_path / "b" / "copy.onnx.data").is_file()
    onnx_file.check(dst)
    loaded = numpy_helper.to_array(onnx.load(str(dst)).graph.initializer[0])
    np.testing.assert_array_equal(loaded, weights)
    before = onnx_file.content_hash(src)
    (src.parent / "m.onnx.data").write_bytes(b"\0" * (64 * 64 * 4))
    assert onnx_file.content_hash(src) != before  # the side file is part of the hash


def test_param_counts_see_zeros(tmp_path: Path) -> None:
    weights = np.ones((64, 64), dtype=np.float32)
    weights[:, :16] = 0
    path = tmp_path / "m.onnx"
    onnx.save_model(_model(weights), str(path))
    assert onnx_file.param_counts(path) == (64 * 64, 64 * 48)


def test_param_counts_agree_across_quantization_formats(tmp_path: Path) -> None:
    """QDQ, QOperator (QLinearConv, QGemm) and dynamic (ConvInteger, MatMulInteger) INT8 files of
    one model hold the same weights: their counts must match the float model's."""
    import logging
    import warnings

    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    from tests.tiny_models import build

    model = build().eval()
    with torch.no_grad():
        model.classifier[1].weight[:8] = 0  # 8 of 16 rows pruned: 8 x 64 zeros
    fp32 = tmp_path / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(fp32),
            input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter(
                [{"input": rng.random((4, 1, 8, 8), dtype=np.float32)} for _ in range(2)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    files = {fmt: tmp_path / f"{fmt}.onnx" for fmt in ("qdq", "qoperator", "dynamic")}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice
    try:
        for fmt in ("qdq", "qoperator"):
            quantize_static(
                str(fp32),
                str(files[fmt]),
                Reader(),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                per_channel=True,
            )
        quantize_dynamic(str(fp32), str(files["dynamic"]), per_channel=True)
    finally:
        root.setLevel(level)
    ops = {fmt: {n.op_type for n in onnx.load(str(f)).graph.node} for fmt, f in files.items()}
    assert {"QLinearConv", "QGemm"} <= ops["qoperator"]
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= ops["dynamic"]
    params, nonzero = onnx_file.param_counts(fp32)
    assert params == sum(p.numel() for p in model.parameters())
    assert nonzero == params - 8 * 64
    for fmt, path in files.items():
        q_params, q_nonzero = onnx_file.param_counts(path)
        assert q_params == params, fmt
        assert q_nonzero <= nonzero, fmt  # the pruned zeros stay zero (at the zero point)
