"""Calibration streams its batches: the calibrator holds `stream_batches` at a time, and the
ranges it folds are those of the whole set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelquant.data import Dataset
from modelquant.schemes.calibration import (
    CalibrationConfig,
    CalibrationReader,
    activation_ranges,
)


def relu_model(path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def dataset(rows: int) -> Dataset:
    x = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    x[rows - 1, 2] = 50.0  # the maximum sits in the very last batch
    return Dataset({"x": x}, np.zeros(rows, dtype=np.int64))


def test_chunks_cover_every_batch_once() -> None:
    reader = CalibrationReader(dataset(40), 4, ["x"])
    sizes = []
    for chunk in reader.chunks(3):
        batches = list(iter(chunk.get_next, None))
        sizes.append(len(batches))
    assert sizes == [3, 3, 3, 1]
    assert len(list(iter(reader.get_next, None))) == 10  # rewound for the next user


def test_streamed_ranges_equal_the_whole_sets(tmp_path: Path) -> None:
    model = relu_model(tmp_path / "relu.onnx")
    reader = CalibrationReader(dataset(40), 4, ["x"])
    streamed = activation_ranges(model, reader, CalibrationConfig(stream_batches=1), tmp_path / "a")
    whole = activation_ranges(model, reader, CalibrationConfig(stream_batches=100), tmp_path / "b")
    assert streamed["y"] == whole["y"]
    assert streamed["y"][1] == 50.0  # the last batch was folded in, not dropped
