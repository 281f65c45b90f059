"""The int8_static scheme: calibrated activation ranges, QDQ or QOperator form (onnxruntime's
`quantize_static`), ranges cached by content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelquant.schemes import QuantPlan, register_scheme
from modelquant.schemes.calibration import (
    CalibrationConfig,
    calibration_method,
    calibration_reader,
    ranges_key,
)
from modelquant.schemes.int8_dynamic import Int8DynamicConfig, qtype

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext


class Int8StaticConfig(Int8DynamicConfig):
    """Static INT8: the dynamic scheme's weight settings plus activations and calibration."""

    format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="QDQ (Quantize/DequantizeLinear pairs) or QOperator (QLinearConv, ...)."
    )
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation type (uint8 is the fast path on x86 CPUs)."
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


@register_scheme("int8_static", precision="int8", mode="static", config=Int8StaticConfig)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Int8StaticConfig], ctx: StageContext
) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, quantize_static

    cfg = plan.config
    reader = calibration_reader(source, cfg.calibration, ctx)
    extra: dict[str, Any] = {"CalibTensorRangeSymmetric": cfg.calibration.symmetric}
    if cfg.calibration.method == "percentile":
        extra["CalibPercentile"] = cfg.calibration.percentile
    cache = ctx.cache_dir / "calibration" / f"{ranges_key(source, reader, cfg.calibration)}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    hit = cache.is_file()
    target = cache if hit else cache.with_name(f".{cache.name}.tmp")
    quantize_static(
        str(source),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        activation_type=qtype(cfg.activations),
        weight_type=qtype(cfg.weights),
        nodes_to_exclude=list(plan.kept_float),
        calibrate_method=calibration_method(cfg.calibration.method),
        extra_options=extra,
        calibration_cache_path=str(target),
    )
    if not hit:
        os.replace(target, cache)
    calibration: dict[str, Any] = {
        "method": cfg.calibration.method,
        "samples": reader.samples,
        "batch_size": reader.batch_size,
        "cache": "reused" if hit else "computed",
        "cache_file": str(cache.relative_to(ctx.cache_dir.parent)),
    }
    if cfg.calibration.method == "percentile":
        calibration["percentile"] = cfg.calibration.percentile
    return {
        "format": cfg.format,
        "activations": cfg.activations,
        "weights": cfg.weights,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "calibration": calibration,
    }
