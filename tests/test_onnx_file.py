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
