"""The `quantize` stage: layer rules resolved on the graph that is quantized, the registered
scheme picked by `precision` (and `mode`) run on it, and every rule's outcome verified after."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelquant.errors import StageError, UserError
from modelquant.layer_rules import rule_matches
from modelquant.schemes import (
    QuantPlan,
    Scheme,
    check_precision,
    float_precisions,
    quiet_quantizer,
    scheme_for,
)
from modelquant.schemes.calibration import (
    DEFAULT_CALIBRATION_SAMPLES,
    CalibrationConfig,
    calibration_reader,
)
from modelquant.schemes.int8_static import Int8StaticConfig
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.state import ModelState

__all__ = ["DEFAULT_CALIBRATION_SAMPLES", "CalibrationConfig", "Quantize", "QuantizeConfig"]


class OverrideRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(
        description="Layer rule: an ONNX node name, a torch module path, 're:<regex>' or "
        "'type:<OpType>'."
    )
    precision: str = Field(
        "fp32", description="Precision for matched layers: fp32 (kept in float) or the stage's."
    )

    _registered = field_validator("precision")(check_precision)


class NpuVariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activations: Literal["uint16", "uint8"] = Field(
        "uint16", description="Activation type of the NPU variant (uint16: closer to FP32)."
    )
    weights: Literal["uint8", "int8"] = Field("uint8", description="Weight type of the variant.")
    batch_size: int = Field(1, gt=0, description="The variant's fixed batch size (static shapes).")
    per_channel: bool = Field(False, description="Per-channel weight scales in the variant.")


class QuantizeConfig(Int8StaticConfig, StageConfig):
    """The stage's settings: which scheme (precision, mode), the schemes' own settings (inherited
    from their config classes, flat, as recipes write them), pre-processing, layer rules and the
    NPU variant."""

    precision: str = Field(
        "int8", description="Target precision: a registered one (int8; fp32 keeps float)."
    )
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: calibrated activation ranges; dynamic: ranges at run time."
    )
    preprocess: bool = Field(
        True, description="Run onnxruntime's quant_pre_process (graph optimization) first."
    )
    overrides: list[OverrideRule] = Field(
        default_factory=list,
        description="Per-layer precision rules, first match wins, resolved on the graph that is "
        "quantized (after pre-processing).",
    )
    npu: NpuVariantConfig = Field(
        default_factory=NpuVariantConfig,
        description="The NPU variant, made when evaluate.backends lists npu (QNN QDQ flavour).",
    )

    _registered = field_validator("precision")(check_precision)

    @model_validator(mode="after")
    def _scheme_takes_its_settings(self) -> QuantizeConfig:
        scheme = scheme_for(self.precision, self.mode)
        unused = sorted((self.model_fields_set & SCHEME_KEYS) - set(scheme.config.model_fields))
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not a setting of scheme '{scheme.name}' "
                f"(it takes: {', '.join(scheme.config.model_fields) or 'nothing'})"
            )
        return self

    def scheme(self) -> Scheme[Any]:
        """The registered scheme these settings pick."""
        return scheme_for(self.precision, self.mode)

    def scheme_config(self) -> Any:
        """The picked scheme's config, from the flat settings it declares."""
        cls = self.scheme().config
        return cls.model_validate({k: getattr(self, k) for k in cls.model_fields})


STAGE_KEYS = frozenset({"precision", "mode", "preprocess", "overrides", "npu"})
SCHEME_KEYS = frozenset(QuantizeConfig.model_fields) - STAGE_KEYS


# ---------------------------------------------------------------- layer rules on a graph

_TORCH_SCOPE = re.compile(r"/(?:[^/]+/)*([^/]+)/([A-Za-z]+)(?:_\d+)?")


def _layer_names(node: Any, initializers: set[str]) -> list[str]:
    """Names a rule can match: the ONNX node name and the torch module path of the node, from
    its weights ("classifier.2.weight" -> "classifier.2") or from the TorchScript node name
    ("/features/features.0/Conv" -> "features.0", for weights renamed by BatchNorm folding)."""
    names = [node.name]
    for inp in node.input:
        if inp in initializers and "." in inp and ":" not in inp:
            names.append(inp.rsplit(".", 1)[0])
    scope = _TORCH_SCOPE.fullmatch(node.name)
    if scope and scope.group(2) == node.op_type:
        names.append(scope.group(1))
    return list(dict.fromkeys(names))


def match_rule(rule: str, node: Any, initializers: set[str]) -> bool:
    """Whether a layer rule picks this ONNX node (by node name, torch module path or op type)."""
    return rule_matches(rule, _layer_names(node, initializers), node.op_type)


def resolve_rules(model_path: Path, rules: list[OverrideRule], graph: str) -> dict[str, str]:
    """Node name -> precision on this graph, first matching rule wins. A rule that matches no
    node is a UserError naming the graph's closest layer names."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    chosen: dict[str, str] = {}
    hits = [0] * len(rules)
    for node in model.graph.node:
        for i, rule in enumerate(rules):
            if match_rule(rule.match, node, initializers):
                hits[i] += 1
                chosen[node.name] = rule.precision
                break
    for rule, n in zip(rules, hits, strict=True):
        if n == 0:
            raise UserError(
                f"quantize override '{rule.match}' matches no layer of the {graph} "
                f"({_nearest(rule.match, model, initializers)})"
            )
    unnamed = [n for n in chosen if not n]
    if unnamed:
        raise UserError(f"quantize overrides match unnamed nodes of the {graph}; name them")
    return chosen


def _nearest(rule: str, model: Any, initializers: set[str]) -> str:
    if rule.startswith("type:"):
        pool = sorted({n.op_type for n in model.graph.node})
        close = difflib.get_close_matches(rule[5:], pool, n=5, cutoff=0.3)
        return "closest op types: " + ", ".join(f"type:{c}" for c in close or pool[:8])
    pool = sorted({name for n in model.graph.node for name in _layer_names(n, initializers)})
    close = difflib.get_close_matches(rule.removeprefix("re:").lstrip("/"), pool, n=5, cutoff=0.3)
    return "closest layer names: " + ", ".join(close or pool[:8])


# ---------------------------------------------------------------- verification afterwards

_QUANTIZED_OPS = ("QLinear", "QGemm", "QAttention", "DynamicQuantize")


def _is_quantized_op(op_type: str) -> bool:
    return op_type.startswith(_QUANTIZED_OPS) or op_type.endswith("Integer")


def verify_precisions(
    source: Path, out: Path, chosen: dict[str, str], kept_float: set[str]
) -> None:
    """Check the quantized graph against the rules: a node kept in float is still there, not
    an integer op, and reads no dequantized weight; a node a rule asked to quantize (one with
    weights) became an integer op or reads a dequantized weight. A miss is a StageError."""
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    dst = onnx.load(str(out), load_external_data=False)
    weights = {t.name for t in src.graph.initializer}
    src_nodes = {n.name: n for n in src.graph.node}
    dst_nodes = {n.name: n for n in dst.graph.node}
    producer = {o: n for n in dst.graph.node for o in n.output}

    def dequantized(node: Any, index: int) -> bool:
        if index >= len(node.input):
            return False
        made_by = producer.get(node.input[index])
        return made_by is not None and made_by.op_type == "DequantizeLinear"

    for name, precision in chosen.items():
        before = src_nodes[name]
        weight_inputs = [i for i, x in enumerate(before.input) if i > 0 and x in weights]
        # quantize_dynamic rewrites a Gemm into '<name>_MatMul' + '<name>_Add' first.
        after = dst_nodes.get(name) or dst_nodes.get(f"{name}_MatMul")
        quant = dst_nodes.get(f"{name}_quant") or dst_nodes.get(f"{name}_MatMul_quant")
        if name in kept_float:
            if after is None or _is_quantized_op(after.op_type) or quant is not None:
                raise StageError(
                    "quantize", f"node '{name}' was to stay in float but was quantized"
                )
            if any(dequantized(after, i) for i in weight_inputs):
                raise StageError(
                    "quantize", f"node '{name}' was to stay in float but reads a dequantized weight"
                )
        elif weight_inputs:
            if quant is not None and _is_quantized_op(quant.op_type):
                continue
            if after is None or not any(dequantized(after, i) for i in weight_inputs):
                raise StageError(
                    "quantize", f"node '{name}' was to be quantized to {precision} but is not"
                )


# ---------------------------------------------------------------- the stage


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """onnxruntime's pre-processing drops temp files in the working directory; keep them here."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def split_rules(chosen: dict[str, str], precision: str) -> list[str]:
    """The node names kept in float; a rule asking for a third precision is a UserError."""
    floats = float_precisions()
    other = sorted({p for p in chosen.values() if p not in floats and p != precision})
    if other:
        raise UserError(
            f"quantize overrides ask for {', '.join(other)} inside a {precision} model; a layer "
            f"rule may keep layers in float ({', '.join(sorted(floats))}) or at {precision}, "
            "mixing other precisions in one model is not supported yet"
        )
    if precision in floats:
        return sorted(chosen)
    return sorted(n for n, p in chosen.items() if p in floats)


@register_stage("quantize")
class Quantize(Stage):
    """Quantize the ONNX model with onnxruntime.quantization (a registered scheme: int8 static
    or dynamic)."""

    Config = QuantizeConfig
    needs = "onnx"
    produces = "onnx"
    data_roles: ClassVar[tuple[str, ...]] = ("calibration",)
    uses_targets = True  # the NPU variant is made when the targets include npu
    config: QuantizeConfig

    def requires(self, targets: tuple[str, ...]) -> dict[str, str]:
        # The variant is only worth making where the HTP can run it: refuse early, naming the extra.
        if "npu" in targets and self.config.mode == "static":
            return {"onnxruntime_qnn": "evaluate.backends lists npu: the NPU variant"}
        return {}

    def artifact_name(self) -> str:
        return f"model.{self.config.precision}.onnx"

    def variant_name(self, backend: str) -> str:
        return f"model.{self.config.precision}.{backend}.onnx"

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        from modelquant.models import onnx_file

        assert state.onnx_path is not None
        cfg = self.config
        scheme = cfg.scheme()
        out = ctx.work_dir / "model.onnx"
        ctx.details.update(precision=cfg.precision, mode=cfg.mode, scheme=scheme.name)
        try:
            with quiet_quantizer():
                source = (
                    self._preprocess(state.onnx_path, ctx) if cfg.preprocess else state.onnx_path
                )
                chosen = resolve_rules(source, cfg.overrides, "graph being quantized")
                kept = split_rules(chosen, cfg.precision)
                plan = QuantPlan(config=cfg.scheme_config(), kept_float=tuple(kept))
                ctx.details.update(scheme.quantize(source, out, plan, ctx))
        except (UserError, StageError):
            raise
        except Exception as exc:
            raise StageError("quantize", f"onnxruntime.quantization failed: {exc}") from exc
        onnx_file.check(out)
        verify_precisions(source, out, chosen, set(kept))
        ctx.details["kept_float"] = kept
        ctx.details["qdq_nodes"] = _count_ops(out, ("QuantizeLinear", "DequantizeLinear"))
        variants = dict(state.variants)
        if "npu" in ctx.targets and scheme.name == "int8_static":
            variants["npu"] = self._npu_variant(state.onnx_path, ctx)
        return state.replace(onnx_path=out, variants=variants)

    def _npu_variant(self, source: Path, ctx: StageContext) -> Path:
        """The QNN flavour: fixed batch, QNN pre-processing and QDQ config (get_qnn_qdq_config),
        with the layer rules resolved on the QNN-prepared graph."""
        from modelquant.backends.qnn_quant import qnn_prepare, qnn_quantize
        from modelquant.models import onnx_file

        cfg = self.config
        npu = cfg.npu
        out = ctx.work_dir / "model.npu.onnx"
        with tempfile.TemporaryDirectory(prefix="mq-npu-") as tmp:
            try:
                with quiet_quantizer():
                    prepared = qnn_prepare(source, Path(tmp), npu.batch_size)
                    chosen = resolve_rules(prepared, cfg.overrides, "NPU variant's graph")
                    kept = split_rules(chosen, cfg.precision)
                    reader = calibration_reader(
                        prepared, cfg.calibration, ctx, batch_size=npu.batch_size
                    )
                    qnn_quantize(
                        prepared,
                        out,
                        reader,
                        activations=npu.activations,
                        weights=npu.weights,
                        per_channel=npu.per_channel,
                        calibration=cfg.calibration.method,
                        percentile=cfg.calibration.percentile,
                        nodes_to_exclude=kept or None,
                    )
            except (UserError, StageError):
                raise
            except Exception as exc:
                raise StageError("quantize", f"QNN variant quantization failed: {exc}") from exc
            onnx_file.check(out)
            verify_precisions(prepared, out, chosen, set(kept))
        ctx.details["npu_variant"] = {
            "activations": npu.activations,
            "weights": npu.weights,
            "batch_size": npu.batch_size,
            "per_channel": npu.per_channel,
            "qdq_nodes": _count_ops(out, ("QuantizeLinear", "DequantizeLinear")),
            "kept_float": kept,
        }
        return out

    def _preprocess(self, source: Path, ctx: StageContext) -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        target = (ctx.work_dir / "preprocessed.onnx").resolve()
        source = source.resolve()  # the working directory changes below
        with tempfile.TemporaryDirectory(prefix="mq-pre-") as tmp, _inside(Path(tmp)):
            try:
                # Symbolic shape inference is for transformer graphs and fails on some exports.
                quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
            except Exception as exc:
                ctx.details["preprocess"] = f"skipped: {str(exc).splitlines()[0][:200]}"
                return source
        ctx.details["preprocess"] = "applied"
        return target


def _count_ops(path: Path, ops: tuple[str, ...]) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in ops)
