"""Numerical parity of two backends' outputs, measured in the output's quantization steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Two dequantized outputs lie on the same grid, so they differ by whole steps; this slack only
# absorbs float rounding of "exactly one step".
STEP_SLACK = 1e-3


def output_scale(path: Path | str, output: str | None = None) -> float | None:
    """The scale of the DequantizeLinear that produces graph output `output` (default: the
    first), or None when that output does not come straight from a per-tensor DequantizeLinear
    with a constant scale (FP32 models, per-channel scales, ops after the DQ)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    name = output or graph.output[0].name
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear" or len(producer.input) < 2:
        return None
    scale_name = producer.input[1]
    scale: np.ndarray | None = None
    for tensor in graph.initializer:
        if tensor.name == scale_name:
            scale = numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and scale_name in node.output:
            scale = numpy_helper.to_array(node.attribute[0].t)
    if scale is None or scale.size != 1:
        return None
    return float(scale.reshape(()))


def parity(
    cpu_outputs: np.ndarray, npu_outputs: np.ndarray, quant_step: float | None
) -> dict[str, Any]:
    """How far two backends' outputs for the same inputs are apart.

    Returns samples, max_abs_diff, mean_abs_diff, and where `quant_step` (the output's
    DequantizeLinear scale) is given: quant_step, max_steps (largest difference in steps) and
    beyond_one_step (share of output values more than one step apart); for outputs with a class
    axis last: top1_agreement (share of samples whose argmax agrees).
    """
    a = np.asarray(cpu_outputs, dtype=np.float64)
    b = np.asarray(npu_outputs, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    result: dict[str, Any] = {
        "samples": int(a.shape[0]) if a.ndim else 1,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "quant_step": quant_step,
        "max_steps": None,
        "beyond_one_step": None,
        "top1_agreement": None,
    }
    if quant_step is not None and quant_step > 0 and diff.size:
        result["max_steps"] = float(diff.max() / quant_step)
        result["beyond_one_step"] = float(np.mean(diff > quant_step * (1 + STEP_SLACK)))
    if a.ndim >= 2 and a.shape[-1] > 1:
        agree = np.argmax(a, axis=-1) == np.argmax(b, axis=-1)
        result["top1_agreement"] = float(np.mean(agree))
    return result
