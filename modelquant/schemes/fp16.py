"""The fp16 scheme: float tensors to float16 through onnxruntime's converter
(`onnxruntime.transformers.float16.convert_float_to_float16`), the whole model or only the nodes
a layer rule names; every other node goes into its node block list and stays as it was."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelquant.errors import UserError
from modelquant.schemes import PHASE_CAST, QuantPlan, SchemeConfig, register_scheme

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext

NOTE = (
    "fp16 is the GPUs' format: onnxruntime's CPU EP has few float16 kernels and runs the rest "
    "in float32 behind Casts it inserts, so on a CPU fp16 is usually no faster than fp32 and "
    "often slower; what it gives there is half-size weights"
)

_QUANTIZED_PREFIXES = ("QLinear", "QGemm", "QAttention", "DynamicQuantize")
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "MatMulNBits", "GatherBlockQuantized"}


class Fp16Config(SchemeConfig):
    """onnxruntime's float16 converter settings."""

    keep_io_types: bool = Field(
        True,
        description="Keep the model's float32 inputs and outputs (Casts at the edges); false "
        "makes callers feed and read float16.",
    )
    op_block_list: list[str] = Field(
        default_factory=list,
        description="Op types kept in float32, added to onnxruntime's own block list "
        "(float16.DEFAULT_OP_BLOCK_LIST: TopK, Range, Min, Max, ...).",
    )
    compute: Literal["float16", "float32"] = Field(
        "float16",
        description="float16: onnxruntime's converter runs the nodes in float16 (a GPU's "
        "format). float32: only their weights (float initializers of two or more dimensions) "
        "are stored as float16, each behind a Cast back to float32 that onnxruntime folds when "
        "it opens the model, so the nodes compute in float32 at float32 speed on a CPU and the "
        "file holds half the bytes of float32 weights.",
    )


def _is_quantized_op(op_type: str) -> bool:
    return (
        op_type in _QUANTIZED_OPS
        or op_type.startswith(_QUANTIZED_PREFIXES)
        or op_type.endswith("Integer")
    )


def _float16_tensors(model: Any) -> set[str]:
    from onnx import TensorProto

    graph = model.graph
    names = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT16}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            names.add(value.name)
    for node in graph.node:
        if node.op_type == "Cast" and any(
            a.name == "to" and a.i == TensorProto.FLOAT16 for a in node.attribute
        ):
            names.update(node.output)
    return names


def applied(node: Any, model: Any, weights: set[str]) -> bool:
    """The node is still there and reads float16: its weight initializers where it has any, else
    its first input; or (compute: float32) a weight stored as float16 behind a Cast."""
    after = next((n for n in model.graph.node if n.name == node.name), None)
    if after is None:
        return False
    halves = _float16_tensors(model)
    stored = _stored_halves(model)
    if any(x in stored for x in after.input):
        return True
    weight_inputs = [x for i, x in enumerate(after.input) if i > 0 and x in weights]
    if not weight_inputs:  # the converter keeps the initializer's name
        inits = {t.name for t in model.graph.initializer}
        weight_inputs = [x for i, x in enumerate(after.input) if i > 0 and x in inits]
    if weight_inputs:
        return all(x in halves for x in weight_inputs)
    return bool(after.input) and after.input[0] in halves


def _stored_halves(model: Any) -> set[str]:
    """Outputs of Casts to float32 whose input is a float16 initializer: weights stored as
    float16 for float32 compute."""
    from onnx import TensorProto

    halves = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    return {
        node.output[0]
        for node in model.graph.node
        if node.op_type == "Cast" and node.input and node.input[0] in halves
    }


def store_weights_half(model: Any, nodes: set[str]) -> list[str]:
    """Store the float32 weights (initializers of two or more dimensions) of `nodes` as float16
    through onnxruntime's tensor converter (values beyond float16's range are clamped), each
    behind a Cast back to float32 under the weight's own name, so every reader still sees
    float32. Returns the weights changed."""
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_tensor_float_to_float16

    inits = {t.name: t for t in model.graph.initializer}
    wanted = {
        x
        for node in model.graph.node
        if node.name in nodes
        for x in node.input
        if x in inits and inits[x].data_type == TensorProto.FLOAT and len(inits[x].dims) >= 2
    }
    casts = []
    for name in sorted(wanted):
        tensor = inits[name]
        convert_tensor_float_to_float16(tensor)  # in place
        tensor.name = f"{name}_fp16"
        casts.append(
            helper.make_node(
                "Cast", [tensor.name], [name], to=TensorProto.FLOAT, name=f"{name}_fp16_cast"
            )
        )
    kept = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + kept)  # the Casts read initializers only: first is in order
    return sorted(wanted)


@register_scheme("fp16", precision="fp16", config=Fp16Config, phase=PHASE_CAST, applied=applied)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Fp16Config], ctx: StageContext
) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    cfg = plan.config
    model = onnx.load(str(source))
    nodes = list(model.graph.node)
    op_block = set(DEFAULT_OP_BLOCK_LIST) | set(cfg.op_block_list)
    # Earlier passes' integer and Q/DQ nodes keep their float32 scales and outputs.
    op_block |= {n.op_type for n in nodes if _is_quantized_op(n.op_type)}
    if plan.only is not None:
        ops = {n.name: n.op_type for n in nodes}
        refused = [n for n in plan.only if ops.get(n) in op_block]
        if refused:
            listed = ", ".join(f"{n} ({ops[n]})" for n in refused[:8])
            raise UserError(
                f"fp16 cannot take {listed}: onnxruntime's float16 converter keeps these op "
                "types in float32; give these layers another precision"
            )
        wanted = set(plan.only) - set(plan.kept_float)
        blocked = sorted(n.name for n in nodes if n.name not in wanted)
    else:
        blocked = sorted(set(plan.kept_float))
    if cfg.compute == "float32":
        stored = store_weights_half(model, {n.name for n in nodes} - set(blocked))
        onnx.save_model(model, str(out))
        return {"compute": "float32", "weights_fp16": len(stored), "casts": len(stored)}
    unnamed = [n for n in nodes if not n.name]
    if unnamed and plan.only is not None:
        raise UserError("fp16 rules need named nodes to keep the others in float32; name them")
    # OnnxModel's wrapper of convert_float_to_float16 types the graph with symbolic shape
    # inference (which knows com.microsoft ops such as MatMulNBits), then removes the Cast pairs
    # the converter wraps around each blocked node where two blocked nodes meet, so those keep
    # reading float32 as before; the Casts it appends are then put in topological order.
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(
        use_symbolic_shape_infer=True,
        keep_io_types=cfg.keep_io_types,
        op_block_list=sorted(op_block),
        node_block_list=blocked,
    )
    wrapped.topological_sort()
    converted = wrapped.model
    onnx.save_model(converted, str(out))
    ctx.details["note"] = NOTE  # the stage's own notes, also when fp16 is only a rule's
    halves = _float16_tensors(converted)
    names = {n.name for n in nodes}
    in_fp16 = sorted(
        n.name
        for n in converted.graph.node
        if n.name in names
        and n.name not in blocked
        and n.op_type not in op_block
        and any(x in halves for x in n.input)
    )
    return {
        "keep_io_types": cfg.keep_io_types,
        "nodes_fp16": len(in_fp16),
        "nodes_kept": len(nodes) - len(in_fp16),
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
    }
