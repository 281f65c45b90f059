"""The NPU flavour of a model: batch fixed, QNN pre-processing, QDQ quantization the HTP accepts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from modelquant.schemes import quiet_quantizer

Activations = Literal["uint8", "uint16"]
Weights = Literal["uint8", "int8"]
Calibration = Literal["minmax", "percentile", "entropy", "distribution"]


def fix_batch(src: Path | str, dst: Path | str, batch_size: int) -> Path:
    """Copy of `src` with axis 0 of every graph input fixed to `batch_size` (named or unnamed
    dims; a named dim is fixed everywhere it appears) and the output shapes inferred again."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    from modelquant.models.onnx_file import graph_inputs

    model = onnx.load(str(src))
    for value in graph_inputs(model.graph):
        if not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        if dims[0].HasField("dim_param"):
            make_dim_param_fixed(model.graph, dims[0].dim_param, batch_size)
        elif not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
            dims[0].Clear()
            dims[0].dim_value = batch_size
        elif dims[0].dim_value != batch_size:
            raise ValueError(
                f"input '{value.name}' of {src} is fixed to batch {dims[0].dim_value}, "
                f"not {batch_size}"
            )
    fix_output_shapes(model)
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst


def qnn_prepare(fp32_path: Path | str, folder: Path, batch_size: int = 1) -> Path:
    """The graph the HTP variant is quantized from, written into `folder`: batch fixed to
    `batch_size` (the HTP needs static shapes), then `qnn_preprocess_model` (fuses Erf->Gelu,
    ReduceL2->LpNormalization where it finds them, so node names can change)."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    fixed = fix_batch(fp32_path, Path(folder) / "fixed.onnx", batch_size)
    prepared = Path(folder) / "prepared.onnx"
    with quiet_quantizer():
        return prepared if qnn_preprocess_model(str(fixed), str(prepared)) else fixed


def qnn_quantize(
    source: Path | str,
    out_path: Path | str,
    reader: Any,
    activations: Activations = "uint8",
    weights: Weights = "uint8",
    per_channel: bool = False,
    calibration: Calibration = "minmax",
    percentile: float = 99.999,
    nodes_to_exclude: list[str] | None = None,
) -> Path:
    """QDQ-quantize a graph from `qnn_prepare` for the HTP (`get_qnn_qdq_config`: the type
    overrides QNN needs) and write it to `out_path`. `nodes_to_exclude` are node names of
    `source`. uint16 activations use com.microsoft Q/DQ (below opset 21); int8 weights are
    symmetric. `reader` yields {input name: array} with the batch `source` is fixed to."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from modelquant.schemes.calibration import calibration_method

    act_type = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}[activations]
    weight_type = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[weights]
    method = calibration_method(calibration)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_quantizer():
        config = get_qnn_qdq_config(
            str(source),
            reader,
            calibrate_method=method,
            activation_type=act_type,
            weight_type=weight_type,
            per_channel=per_channel,
            nodes_to_exclude=nodes_to_exclude,
        )
        if calibration == "percentile":
            config.extra_options["CalibPercentile"] = percentile
        quantize(str(source), str(out_path), config)
    return out_path


def qnn_variant(
    fp32_path: Path | str,
    out_path: Path | str,
    reader: Any,
    activations: Activations = "uint8",
    weights: Weights = "uint8",
    batch_size: int = 1,
    per_channel: bool = False,
    calibration: Calibration = "minmax",
    percentile: float = 99.999,
    nodes_to_exclude: list[str] | None = None,
) -> Path:
    """Quantize an FP32 ONNX model for the HTP and write it to `out_path`: `qnn_prepare` then
    `qnn_quantize`. `nodes_to_exclude` must name nodes of the prepared graph (the quantize
    stage resolves its layer rules there); `reader` yields batches of exactly `batch_size`."""
    with tempfile.TemporaryDirectory(prefix="mq-qnn-") as tmp:
        source = qnn_prepare(fp32_path, Path(tmp), batch_size)
        return qnn_quantize(
            source,
            out_path,
            reader,
            activations=activations,
            weights=weights,
            per_channel=per_channel,
            calibration=calibration,
            percentile=percentile,
            nodes_to_exclude=nodes_to_exclude,
        )
