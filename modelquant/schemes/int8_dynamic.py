"""The int8_dynamic scheme: int8 weights, activation ranges computed at run time
(onnxruntime's `quantize_dynamic`, QOperator form: ConvInteger, MatMulInteger, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelquant.schemes import QuantPlan, SchemeConfig, register_scheme

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext


class Int8DynamicConfig(SchemeConfig):
    weights: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    reduce_range: bool = Field(
        False, description="7-bit weights, for x86 CPUs without VNNI (avoids saturation)."
    )


def qtype(name: str) -> Any:
    """onnxruntime's QuantType for a type name of the recipe."""
    from onnxruntime.quantization import QuantType

    return {
        "uint8": QuantType.QUInt8,
        "int8": QuantType.QInt8,
        "uint16": QuantType.QUInt16,
        "int16": QuantType.QInt16,
    }[name]


def dynamic_names(nodes: tuple[str, ...]) -> list[str]:
    """Names to exclude so that these nodes stay float: `quantize_dynamic` first rewrites each
    Gemm into MatMul '<name>_MatMul' + Add '<name>_Add' and only then reads its exclusions, so
    the Gemm's own name alone would be silently ignored."""
    return [n for name in nodes for n in (name, f"{name}_MatMul")]


@register_scheme("int8_dynamic", precision="int8", mode="dynamic", config=Int8DynamicConfig)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Int8DynamicConfig], ctx: StageContext
) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    cfg = plan.config
    quantize_dynamic(
        str(source),
        str(out),
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        weight_type=qtype(cfg.weights),
        nodes_to_exclude=dynamic_names(plan.kept_float),
        nodes_to_quantize=dynamic_names(plan.only) if plan.only is not None else None,
    )
    return {
        "format": "qoperator",
        "weights": cfg.weights,
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
    }
