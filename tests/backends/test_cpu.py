"""The CPU backend's sessions: idle pool threads sleep, so alternated sessions share cores."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from modelquant.backends.cpu import CpuBackend


def test_sessions_do_not_spin(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    for threads in (None, 2):
        options = CpuBackend().session(path, threads).get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
