"""The float 'scheme' fp32: the model (or a layer rule's nodes) kept in float, untouched."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelquant.schemes import QuantPlan, SchemeConfig, register_scheme

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext


class Fp32Config(SchemeConfig):
    """No settings: float stays float."""


@register_scheme("fp32", precision="fp32", config=Fp32Config, keeps_float=True)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Fp32Config], ctx: StageContext
) -> dict[str, Any]:
    from modelquant.models import onnx_file

    onnx_file.copy(source, out)
    return {}
