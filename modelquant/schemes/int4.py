"""The int4 scheme: weight-only block quantization of MatMul weights into onnxruntime's
MatMulNBits (and of embedding Gathers into GatherBlockQuantized) through its
`MatMulNBitsQuantizer`; a Gemm with a constant weight is rewritten into MatMul (+ Add) first."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from modelquant.errors import StageError, UserError
from modelquant.schemes import PHASE_WEIGHTS, QuantPlan, SchemeConfig, register_scheme
from modelquant.schemes.calibration import CalibrationConfig, calibration_reader

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext

TAKES = "MatMul or Gemm with a constant 2-D weight (and Gather with constant data, int4.gather)"
"""What int4 can convert, as error messages say it."""

_QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized")


class Int4Config(SchemeConfig):
    """Weight-only INT4 (or INT8) blocks: each run of `block_size` weights along the reduction
    axis of a MatMul shares one fp32 scale (and, asymmetric, a zero point); activations stay
    float."""

    bits: Literal[4, 8] = Field(4, description="Bits per weight (MatMulNBits takes 4 or 8).")
    block_size: int = Field(
        64,
        description="Weights per scale along K, a power of two >= 16. 64 with symmetric scales "
        "costs 4 + 32/64 = 4.5 bits per weight (0.14x of FP32); onnxruntime's default 128 "
        "costs 4.25 but pads every K below 128 to a whole block.",
    )
    symmetric: bool | None = Field(
        None,
        description="Symmetric blocks (no zero points). Default: true, except hqq, which is "
        "asymmetric only.",
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        0,
        description="MatMulNBits' compute type: 0 unset (the kernel's choice), 1 fp32, 2 fp16, "
        "3 bf16, 4 int8 activations (the fast path on x86 CPUs with VNNI).",
    )
    algorithm: Literal["rtn", "hqq", "gptq"] = Field(
        "rtn",
        description="rtn: round to nearest per block (onnxruntime's C++ blockwise quantizer, "
        "DefaultWeightOnlyQuantConfig); hqq: half-quadratic optimized scales and float zero "
        "points (HQQWeightOnlyQuantConfig, no calibration data); gptq: error-compensating "
        "rounding from calibration activations (GPTQWeightOnlyQuantConfig, reads "
        "data.calibration, 4 bits).",
    )
    gather: bool = Field(
        False,
        description="Also quantize Gathers with constant data (embeddings) into "
        "GatherBlockQuantized (rtn, 4 bits; the model is converted to opset 21).",
    )
    samples: int | None = Field(
        None,
        gt=0,
        description="gptq: calibration samples (default: data.calibration.samples or 256).",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two >= 16 (got {value})")
        return value

    @model_validator(mode="after")
    def _algorithm_takes_these(self) -> Int4Config:
        if self.algorithm == "hqq" and self.symmetric:
            raise ValueError("algorithm hqq is asymmetric only (float zero points): drop symmetric")
        if self.algorithm == "gptq" and self.bits != 4:
            raise ValueError("algorithm gptq writes 4-bit weights only: use bits: 4")
        if self.gather and (self.algorithm != "rtn" or self.bits != 4):
            raise ValueError("gather: onnxruntime quantizes Gathers with algorithm rtn, bits 4")
        if self.samples is not None and self.algorithm != "gptq":
            raise ValueError("samples: only algorithm gptq reads calibration data")
        return self

    @property
    def is_symmetric(self) -> bool:
        return self.symmetric if self.symmetric is not None else self.algorithm != "hqq"


# ---------------------------------------------------------------- what int4 can take


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _float_weight(name: str, inits: dict[str, Any]) -> bool:
    """A float initializer of rank 2 (or higher with leading 1s: MatMulNBits squeezes them)."""
    from onnx import TensorProto

    tensor = inits.get(name)
    if tensor is None or tensor.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return False
    dims = list(tensor.dims)
    return len(dims) >= 2 and all(d == 1 for d in dims[:-2])


def int4_form(node: Any, inits: dict[str, Any], gather: bool) -> str | None:
    """How int4 takes this node ("matmul", "gemm", "gather") or None when it cannot."""
    if node.op_type == "MatMul" and len(node.input) == 2:
        return "matmul" if _float_weight(node.input[1], inits) else None
    if node.op_type == "Gemm":
        a = _attrs(node)
        plain = a.get("transA", 0) == 0 and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0
        weight = node.input[1]
        two_d = weight in inits and len(inits[weight].dims) == 2
        return "gemm" if plain and two_d and _float_weight(weight, inits) else None
    if node.op_type == "Gather" and gather:
        return "gather" if node.input[0] in inits and _float_weight(node.input[0], inits) else None
    return None


def _gemm_to_matmul(model: Any, names: set[str]) -> dict[str, str]:
    """Rewrite each named Gemm (constant B, no transA, alpha = beta = 1) into MatMul
    '<name>_MatMul' with B transposed where transB was set, plus Add '<name>_Add' of its bias: the
    same float arithmetic, in the form MatMulNBits takes. Returns Gemm name -> MatMul name."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    renamed: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        weight = node.input[1]
        if _attrs(node).get("transB", 0):
            array = np.ascontiguousarray(numpy_helper.to_array(inits[weight]).T)
            weight = _fresh(f"{weight}_transposed", taken)
            graph.initializer.append(numpy_helper.from_array(array, weight))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = _fresh(f"{node.output[0]}_matmul", taken) if has_bias else node.output[0]
        matmul = f"{node.name}_MatMul"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=matmul))
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_Add"
                )
            )
        renamed[node.name] = matmul
    graph.ClearField("node")
    graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return renamed


def _fresh(name: str, taken: set[str]) -> str:
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _drop_unused_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(keep)


def _fold_biases(model: Any, adds: set[str]) -> int:
    """Move the bias of each Add we wrote after a MatMul into the MatMulNBits it now follows
    (its optional `bias` input): one node per layer, and no Add for a later Q/DQ pass to
    quantize. Returns how many were folded."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    folded = []
    for add in graph.node:
        if add.name not in adds:
            continue
        made_by = producer.get(add.input[0])
        bias = inits.get(add.input[1])
        if made_by is None or made_by.op_type != "MatMulNBits" or bias is None:
            continue
        n_out = next(a.i for a in made_by.attribute if a.name == "N")
        if numpy_helper.to_array(bias).size != n_out or readers.get(add.input[0], 0) != 1:
            continue
        if len(bias.dims) != 1:
            array = numpy_helper.to_array(bias).reshape(-1)
            bias = numpy_helper.from_array(array, f"{bias.name}_flat")
            graph.initializer.append(bias)
        inputs = list(made_by.input) + [""] * (5 - len(made_by.input))
        del made_by.input[:]
        made_by.input.extend([*inputs[:5], bias.name])
        made_by.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    _drop_unused_initializers(model)
    return len(folded)


def _tensor_bytes(tensor: Any) -> int:
    from onnx import numpy_helper

    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return int(numpy_helper.to_array(tensor).nbytes)


_PAYLOAD_INPUTS = {"MatMulNBits": (1, 2, 3), "GatherBlockQuantized": (0, 2, 3)}
"""Inputs of a quantized node that hold its weight: data, scales, zero points."""


def _payload_after(model: Any, names: set[str]) -> int:
    """Bytes of the weights of the quantized nodes named `names`."""
    inits = {t.name: t for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        for i in _PAYLOAD_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in inits:
                total += _tensor_bytes(inits[node.input[i]])
    return total


def applied(node: Any, model: Any, weights: set[str]) -> bool:
    """The node (or the MatMul it was rewritten into) became MatMulNBits or GatherBlockQuantized,
    which onnxruntime's quantizer names '<node>_Q<bits>'."""
    pattern = re.compile(re.escape(node.name) + r"(?:_MatMul)?_Q\d+")
    return any(n.op_type in _QUANTIZED_OPS and pattern.fullmatch(n.name) for n in model.graph.node)


# ---------------------------------------------------------------- the handler


def _quantizer_module() -> Any:
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import,
    which would leave a handler on the root logger for the rest of the run: undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    return matmul_nbits_quantizer


@register_scheme("int4", precision="int4", config=Int4Config, phase=PHASE_WEIGHTS, applied=applied)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Int4Config], ctx: StageContext
) -> dict[str, Any]:
    import onnx

    cfg = plan.config
    model = onnx.load(str(source))
    inits = {t.name: t for t in model.graph.initializer}
    forms = {n.name: f for n in model.graph.node if (f := int4_form(n, inits, cfg.gather))}
    if plan.only is not None:
        cannot = [n for n in plan.only if n not in forms]
        if cannot:
            ops = {n.name: n.op_type for n in model.graph.node}
            listed = ", ".join(f"{n} ({ops.get(n, '?')})" for n in cannot[:8])
            more = " ..." if len(cannot) > 8 else ""
            raise UserError(
                f"int4 cannot take {listed}{more}: it converts {TAKES}; give these layers "
                "another precision"
            )
        chosen = [n for n in plan.only if n not in plan.kept_float]
    else:
        if not forms:
            raise UserError(
                f"precision int4 found no layer to convert in this model: it converts {TAKES}"
            )
        chosen = [n for n in forms if n not in plan.kept_float]
    chosen_set = set(chosen)
    before = sum(
        _tensor_bytes(inits[_weight_of(node, forms[node.name])])
        for node in model.graph.node
        if node.name in chosen_set
    )
    gemms = {n for n in chosen if forms[n] == "gemm"}
    renamed = _gemm_to_matmul(model, gemms)
    targets = {renamed.get(n, n) for n in chosen}
    _name_unnamed(model)
    op_types = ("MatMul", "Gather") if cfg.gather else ("MatMul",)
    exclude = sorted(
        n.name for n in model.graph.node if n.op_type in op_types and n.name not in targets
    )
    if cfg.gather and any(forms[n] == "gather" for n in chosen):
        model = _to_opset(model, 21)
    if targets:
        model = _run_quantizer(model, sorted(targets), exclude, op_types, source, cfg, ctx)
    folded = _fold_biases(model, {f"{n}_Add" for n in gemms})
    made = {n: _converted(n, renamed, model) for n in chosen}
    missed = sorted(n for n, q in made.items() if q is None)
    if missed:
        raise StageError(
            "quantize", f"onnxruntime's int4 quantizer left {', '.join(missed[:8])} in float"
        )
    _save(model, out)
    after = _payload_after(model, {q for q in made.values() if q is not None})
    return {
        "bits": cfg.bits,
        "block_size": cfg.block_size,
        "symmetric": cfg.is_symmetric,
        "algorithm": cfg.algorithm,
        "accuracy_level": cfg.accuracy_level,
        "nodes_converted": len(chosen),
        "converted": sorted(chosen),
        "gemm_rewritten": len(gemms),
        "biases_folded": folded,
        "payload_bytes": {
            "before": before,
            "after": after,
            "ratio": round(after / before, 4) if before else None,
        },
    }


def _weight_of(node: Any, form: str) -> str:
    return str(node.input[0] if form == "gather" else node.input[1])


def _name_unnamed(model: Any) -> None:
    """Exclusions go by node name: an unnamed MatMul or Gather could not be kept out."""
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name and node.op_type in ("MatMul", "Gather"):
            node.name = _fresh(f"{node.op_type}_{i}", taken)


def _converted(name: str, renamed: dict[str, str], model: Any) -> str | None:
    """The name of the quantized node that `name` (or its MatMul rewrite) became, if any."""
    pattern = re.compile(re.escape(renamed.get(name, name)) + r"_Q\d+")
    return next(
        (
            n.name
            for n in model.graph.node
            if n.op_type in _QUANTIZED_OPS and pattern.fullmatch(n.name)
        ),
        None,
    )


def _to_opset(model: Any, version: int) -> Any:
    """GatherBlockQuantized stores INT4 tensors, which need opset 21 (IR 10): convert the model
    properly rather than relabel it as onnxruntime's quantizer would."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= version:
        return model
    return version_converter.convert_version(model, version)


def _run_quantizer(
    model: Any,
    targets: list[str],
    exclude: list[str],
    op_types: tuple[str, ...],
    source: Path,
    cfg: Int4Config,
    ctx: StageContext,
) -> Any:
    nbits = _quantizer_module()
    level = cfg.accuracy_level or None
    algo: Any
    if cfg.algorithm == "rtn":
        algo = nbits.DefaultWeightOnlyQuantConfig(
            block_size=cfg.block_size,
            is_symmetric=cfg.is_symmetric,
            accuracy_level=level,
            op_types_to_quantize=op_types,
            bits=cfg.bits,
        )
    elif cfg.algorithm == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(
            block_size=cfg.block_size, bits=cfg.bits, op_types_to_quantize=op_types
        )
    else:
        _check_gptq_blocks(model, targets, cfg)
        feeds = _calibration_feeds(model, source, cfg, ctx)
        algo = nbits.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=feeds, op_types_to_quantize=op_types
        )
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=cfg.bits,
        block_size=cfg.block_size,
        is_symmetric=cfg.is_symmetric,
        accuracy_level=level,
        nodes_to_exclude=exclude,
        nodes_to_include=targets,
        algo_config=algo,
    )
    with warnings.catch_warnings():
        # HQQ hands read-only numpy weights to torch, which warns once; the result is right.
        warnings.simplefilter("ignore", UserWarning)
        quantizer.process()
    result = quantizer.model.model
    if cfg.algorithm == "hqq" and cfg.accuracy_level:
        _set_accuracy_level(result, cfg.accuracy_level)  # HQQ's quantizer writes none
    return result


def _set_accuracy_level(model: Any, level: int) -> None:
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            node.ClearField("attribute")
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])


def _check_gptq_blocks(model: Any, targets: list[str], cfg: Int4Config) -> None:
    """onnxruntime's GPTQ (a Neural Compressor port) packs asymmetric zero points wrongly when a
    column has an odd number of blocks and fails with a reshape error: say so up front."""
    if cfg.is_symmetric:
        return
    inits = {t.name: t for t in model.graph.initializer}
    odd = []
    for node in model.graph.node:
        if node.name in targets and node.op_type == "MatMul":
            k = inits[node.input[1]].dims[-2]
            if -(-k // cfg.block_size) % 2:
                odd.append(f"{node.name} (K={k})")
    if odd:
        raise UserError(
            f"algorithm gptq with symmetric: false needs an even number of {cfg.block_size}-"
            f"weight blocks along K, which {', '.join(odd[:4])} lacks; use symmetric: true or "
            "another block_size"
        )


def _calibration_feeds(
    model: Any, source: Path, cfg: Int4Config, ctx: StageContext
) -> list[dict[str, Any]]:
    """The recipe's calibration batches as GPTQ reads them (a list of input feeds)."""
    reader = calibration_reader(source, CalibrationConfig(samples=cfg.samples), ctx)
    feeds = []
    while (batch := reader.get_next()) is not None:
        feeds.append(batch)
    return feeds


def _save(model: Any, out: Path) -> None:
    import onnx

    big = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit
    onnx.save_model(
        model,
        str(out),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        location=f"{out.name}.data",
    )
