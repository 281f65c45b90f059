"""The int8_static scheme: calibrated activation ranges, QDQ or QOperator form (onnxruntime's
`quantize_static`), ranges cached by content."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from modelquant.schemes import QuantPlan, register_scheme
from modelquant.schemes.calibration import (
    CalibrationConfig,
    CalibrationReader,
    activation_ranges,
    calibration_method,
    calibration_reader,
    compute_ranges,
)
from modelquant.schemes.int8_dynamic import Int8DynamicConfig, qtype

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext


COMPUTE_OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Gather",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
)
"""The op types static int8 quantizes by default: the compute ops that hold weights (Conv, Gemm,
MatMul, and Gather for embedding tables) and the ops the CPU EP folds into their integer kernels
or runs on their int8 output (Relu and Clip become the output range; pooling runs in int8).
Elementwise ops (Add, Mul, Div, Erf, Softmax, LayerNormalization, ...) stay float: wrapped in
Q/DQ pairs one by one they have no integer kernel to run in, and only cost time. On the digits
CNN this set is as fast as every op; on a BatchNorm + GELU MLP exported at opset 17 every op
was 0.65x of FP32 at batch 1, this set with GELU as one op 0.82x (benchmarks/auto_mode.py)."""


class Int8StaticConfig(Int8DynamicConfig):
    """Static INT8: the dynamic scheme's weight settings plus activations and calibration."""

    format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="QDQ (Quantize/DequantizeLinear pairs) or QOperator (QLinearConv, ...)."
    )
    activations: Literal["uint8", "int8", "uint16", "int16"] = Field(
        "uint8",
        description="Activation type (uint8 is the fast path on x86 CPUs; 16-bit types are "
        "closer to float and run as simulated Q/DQ on the CPU).",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    op_types: list[str] | Literal["all"] | None = Field(
        None,
        description="Op types to quantize (default: the compute ops and what fuses with them: "
        f"{', '.join(COMPUTE_OP_TYPES)}; 'all': every type onnxruntime can). A transformer "
        "wants [MatMul, Gather]: its Add, LayerNormalization, Softmax and the attention mask's "
        "Where carry outliers that 8-bit ranges ruin.",
    )
    matmul_weights_only: bool = Field(
        False,
        description="format qoperator only: quantize only MatMuls whose second input is a "
        "weight (onnxruntime's MatMulConstBOnly, which its QDQ quantizer does not read; in QDQ, "
        "keep attention's activation x activation MatMuls float with an fp32 rule).",
    )
    quantize_outputs: bool = Field(
        True,
        description="Q/DQ the outputs of the quantized ops too. false: their outputs stay float, "
        "so the CPU EP fuses DQ -> MatMul into MatMulIntegerToFloat (onnxruntime's "
        "OpTypesToExcludeOutputQuantization). Their inputs are still Q/DQ'd, and onnxruntime "
        "rewires every reader of a quantized tensor (a residual Add too) to its 8-bit copy.",
    )

    @model_validator(mode="after")
    def _const_b_needs_qoperator(self) -> Int8StaticConfig:
        if self.matmul_weights_only and self.format == "qdq":
            raise ValueError(
                "matmul_weights_only is onnxruntime's MatMulConstBOnly, which only format "
                "qoperator reads; in QDQ every MatMul of op_types is quantized (keep attention's "
                "MatMuls float with an fp32 rule, or remove matmul_weights_only)"
            )
        return self


@register_scheme(
    "int8_static",
    precision="int8",
    mode="static",
    config=Int8StaticConfig,
    layer_keys=frozenset({"per_channel", "symmetric", "calibration", "activations"}),
)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Int8StaticConfig], ctx: StageContext
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, quantize_static

    cfg = plan.config
    reader = calibration_reader(source, cfg.calibration, ctx)
    extra: dict[str, Any] = {}
    overrides = layer_overrides(source, plan, reader, ctx)
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    if cfg.matmul_weights_only:
        extra["MatMulConstBOnly"] = True
    op_types = quantized_op_types(cfg, _op_types_of(source, [*plan.layers, *(plan.only or ())]))
    if not cfg.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = (
            list(cfg.op_types) if isinstance(cfg.op_types, list) else ["Conv", "MatMul", "Gemm"]
        )
    cache, hit = compute_ranges(source, reader, cfg.calibration, ctx.cache_dir)
    quantize_static(
        str(source),
        str(out),
        None,  # the ranges come from the cache file compute_ranges wrote
        quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        activation_type=qtype(cfg.activations),
        weight_type=qtype(cfg.weights),
        nodes_to_exclude=list(plan.kept_float),
        nodes_to_quantize=list(plan.only) if plan.only is not None else None,
        calibrate_method=calibration_method(cfg.calibration.method),
        op_types_to_quantize=op_types,
        extra_options=extra,
        calibration_cache_path=str(cache),
    )
    calibration: dict[str, Any] = {
        "method": cfg.calibration.method,
        "samples": reader.samples,
        "batch_size": reader.batch_size,
        "cache": "reused" if hit else "computed",
        "cache_file": str(cache.relative_to(ctx.cache_dir.parent)),
    }
    if cfg.calibration.method == "percentile":
        calibration["percentile"] = cfg.calibration.percentile
    if cfg.calibration.method != "minmax":
        calibration["bins"] = cfg.calibration.histogram_bins()
    said_layers = {
        name: {k: v for k, v in vars(layer).items() if v is not None and k != "precision"}
        for name, layer in plan.layers.items()
    }
    if any(said_layers.values()):
        calibration["layer_settings"] = {k: v for k, v in said_layers.items() if v}
    return {
        "format": cfg.format,
        "activations": cfg.activations,
        "weights": cfg.weights,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "op_types": op_types or "all",
        **({"matmul_weights_only": True} if cfg.matmul_weights_only else {}),
        **({"quantize_outputs": False} if not cfg.quantize_outputs else {}),
        "calibration": calibration,
    }


def quantized_op_types(
    cfg: Int8StaticConfig, ruled: frozenset[str] | set[str] = frozenset()
) -> list[str] | None:
    """onnxruntime's op_types_to_quantize for these settings (None: every type it can), plus the
    op types of nodes a layer rule gives int8 (`ruled`): a rule says otherwise."""
    if cfg.op_types == "all":
        return None
    chosen = list(cfg.op_types) if cfg.op_types else list(COMPUTE_OP_TYPES)
    return chosen + sorted(ruled - set(chosen))


def _op_types_of(source: Path, names: list[str]) -> set[str]:
    import onnx

    if not names:
        return set()
    wanted = set(names)
    graph = onnx.load(str(source), load_external_data=False).graph
    return {n.op_type for n in graph.node if n.name in wanted}


_BITS = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16}

SHARED_PARAMS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "AveragePool", "Slice"}
)
"""Ops whose output onnxruntime's QDQ quantizer gives its input's scale and type
(`quantize_output_same_as_input`): a setting for the output only reaches it through the input."""


def _shared_chain(tensor: str, producer: dict[str, Any]) -> list[str]:
    """The tensor and, up through ops that pass their input's Q/DQ parameters on, the tensors
    whose parameters it takes."""
    chain = [tensor]
    node = producer.get(tensor)
    while node is not None and node.op_type in SHARED_PARAMS and node.input:
        chain.append(node.input[0])
        node = producer.get(node.input[0])
    return chain


def _weight_axis(node: Any) -> int:
    """The output-channel axis of a node's weight, for a per-channel scale."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return 0  # Conv: (out, in, kh, kw)


def layer_overrides(
    source: Path, plan: QuantPlan[Int8StaticConfig], reader: CalibrationReader, ctx: StageContext
) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime's TensorQuantOverrides for the layer rules' settings: a node's input
    activation takes the rule's type, symmetry and ranges from the rule's calibration method;
    its weight takes a per-channel axis or one scale. Where two rules claim one tensor, the wider
    activation type wins.

    One tensor has one Q/DQ pair, owned by its producer: 16-bit activations for a node are the
    producer's output in 16 bits (and, through ops that pass their input's parameters on,
    `SHARED_PARAMS`, the output of the layer before those), so that producer loses its fused
    int8 kernel on CPUs and runs as simulated float. onnxruntime's `convert` (8-bit for the
    producer, re-quantized to 16 bits for this node) would keep the kernel but not the precision:
    the values are rounded to 8 bits first."""
    import numpy as np
    import onnx

    if not any(
        v is not None
        for layer in plan.layers.values()
        for k, v in vars(layer).items()
        if k != "precision"
    ):
        return {}
    cfg = plan.config
    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    out: dict[str, dict[str, Any]] = {}
    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    for name, layer in plan.layers.items():
        node = nodes[name]
        acts = [
            t for a in node.input[:1] if a and a not in weights for t in _shared_chain(a, producer)
        ]
        for tensor in acts:
            entry = out.setdefault(tensor, {})
            if layer.activations is not None:
                was = entry.get("_type")
                if was is None or _BITS[layer.activations] > _BITS[was]:
                    entry["_type"] = layer.activations
            if layer.symmetric is not None:
                entry["symmetric"] = layer.symmetric
            if layer.calibration is not None and layer.calibration != cfg.calibration.method:
                method = cfg.calibration.model_copy(update={"method": layer.calibration})
                if layer.calibration not in ranges:
                    ranges[layer.calibration] = activation_ranges(
                        source, reader, method, ctx.cache_dir
                    )
                low, high = ranges[layer.calibration].get(tensor, (None, None))
                if low is not None and high is not None:
                    entry["rmin"] = np.array(low, dtype=np.float32)
                    entry["rmax"] = np.array(high, dtype=np.float32)
        if layer.per_channel is not None and len(node.input) > 1 and node.input[1] in weights:
            w = node.input[1]
            out[w] = (
                {"axis": _weight_axis(node)}
                if layer.per_channel
                else {"quant_type": qtype(cfg.weights)}
            )
    overrides: dict[str, list[dict[str, Any]]] = {}
    for tensor, entry in out.items():
        kind = entry.pop("_type", None)
        if kind is not None:
            entry["quant_type"] = qtype(kind)
        if entry:
            overrides[tensor] = [entry]
    return overrides
