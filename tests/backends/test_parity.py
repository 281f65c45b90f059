"""Parity figures between two backends' outputs, and the output quantization step they use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelquant.backends.parity import output_scale, parity
from modelquant.backends.qnn_quant import qnn_variant


def test_parity_counts_steps_and_top1() -> None:
    cpu = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    npu = np.array([[0.0, 1.1, 0.5], [0.0, 0.3, 0.0]])  # row 0: one step off; row 1: 20 steps
    figures = parity(cpu, npu, quant_step=0.1)
    assert figures["samples"] == 2
    assert figures["max_abs_diff"] == pytest.approx(2.0)
    assert figures["max_steps"] == pytest.approx(20.0)
    assert figures["beyond_one_step"] == pytest.approx(2 / 6)  # one step exactly is not beyond
    assert figures["top1_agreement"] == 0.5


def test_parity_without_a_step_and_shape_mismatch() -> None:
    figures = parity(np.ones((4, 10)), np.ones((4, 10)), None)
    assert figures["max_abs_diff"] == 0.0 and figures["top1_agreement"] == 1.0
    assert figures["max_steps"] is None and figures["beyond_one_step"] is None
    with pytest.raises(ValueError, match="shape"):
        parity(np.ones((4, 10)), np.ones((4, 9)), None)


def test_output_scale_of_qdq_and_fp32(digits_fp32: Path, reader: object, tmp_path: Path) -> None:
    assert output_scale(digits_fp32) is None  # FP32: no DequantizeLinear feeds the output
    qdq = qnn_variant(digits_fp32, tmp_path / "q.onnx", reader, batch_size=8)
    step = output_scale(qdq)
    assert step is not None and 0 < step < 1
    assert output_scale(qdq, "output") == step
