"""The `quantize` stage: layer rules resolved on the graph that is quantized, the registered
scheme picked by `precision` (and `mode`) run on it, and every rule's outcome verified after."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelquant.errors import StageError, UserError
from modelquant.layer_rules import rule_matches
from modelquant.schemes import (
    LayerSettings,
    QuantPlan,
    Scheme,
    SchemeConfig,
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
from modelquant.schemes.fp8 import Fp8Config
from modelquant.schemes.fp16 import Fp16Config
from modelquant.schemes.int4 import Int4Config
from modelquant.schemes.int8_static import Int8StaticConfig
from modelquant.stages.auto import AutoConfig
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.stages.fallback import FallbackConfig
from modelquant.state import ModelState

if TYPE_CHECKING:
    from modelquant.data import Dataset
    from modelquant.tasks import Task

__all__ = ["DEFAULT_CALIBRATION_SAMPLES", "CalibrationConfig", "Quantize", "QuantizeConfig"]


PRECISION_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "w8a16": ("int8", {"activations": "uint16"}),
}
"""Rule precisions that name a registered precision with settings: w8a16 is int8 weights with
16-bit activations (the first step of accuracy-aware fallback, before float)."""


class OverrideRule(BaseModel):
    """One rule of the precision map: which layers, and what they get."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(
        description="Layer rule: an ONNX node name, a torch module path, 're:<regex>' or "
        "'type:<OpType>'."
    )
    precision: str = Field(
        "fp32",
        description="Precision for matched layers: any registered one (fp32 keeps float), or "
        "w8a16 (int8 weights, 16-bit activations).",
    )
    per_channel: bool | None = Field(None, description="Per-channel weight scales (int8).")
    symmetric: bool | None = Field(None, description="Symmetric activation ranges (int8).")
    calibration: Literal["minmax", "percentile", "entropy"] | None = Field(
        None, description="Calibration method for these layers' activations (static int8)."
    )
    activations: Literal["uint8", "int8", "uint16", "int16"] | None = Field(
        None, description="Activation type for these layers (static int8 QDQ)."
    )

    @field_validator("precision")
    @classmethod
    def _registered(cls, value: str) -> str:
        return value if value in PRECISION_ALIASES else check_precision(value)

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        from modelquant.layer_rules import check_rule

        return check_rule(value)

    @model_validator(mode="after")
    def _settings_need_a_quantized_precision(self) -> OverrideRule:
        if self.precision in float_precisions():
            idle = sorted(self.model_fields_set - {"match", "precision"})
            if idle:
                raise ValueError(
                    f"rule '{self.match}' sets {', '.join(idle)} but keeps its layers in "
                    f"{self.precision} (a rule's default precision), where they do nothing; add "
                    "`precision: int8` (or the precision these layers should get)"
                )
        return self

    def settings(self) -> LayerSettings:
        """The rule as the scheme handlers read it, aliases expanded."""
        precision, implied = PRECISION_ALIASES.get(self.precision, (self.precision, {}))
        return LayerSettings(
            precision=precision,
            per_channel=self.per_channel,
            symmetric=self.symmetric,
            calibration=self.calibration,
            activations=self.activations or implied.get("activations"),
        )


class NpuVariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activations: Literal["uint16", "uint8"] = Field(
        "uint16", description="Activation type of the NPU variant (uint16: closer to FP32)."
    )
    weights: Literal["uint8", "int8"] = Field("uint8", description="Weight type of the variant.")
    batch_size: int = Field(1, gt=0, description="The variant's fixed batch size (static shapes).")
    per_channel: bool = Field(False, description="Per-channel weight scales in the variant.")


DYNAMIC_PRECISIONS = ("int8", "fp16", "fp32")
"""Precisions a dynamic-mode quantize stage applies without calibration data."""


class QuantizeConfig(Int8StaticConfig, FallbackConfig, StageConfig):
    """The stage's settings: which scheme (precision, mode), the schemes' own settings (inherited
    from their config classes, flat, as recipes write them), pre-processing, layer rules and the
    NPU variant."""

    precision: str = Field(
        "int8", description="Target precision: a registered one (int8, fp8; fp32 keeps float)."
    )
    mode: Literal["static", "dynamic", "auto"] | None = Field(
        None,
        description="static: calibrated activation ranges; dynamic: ranges at run time; auto: "
        "build a few int8 schemes (static QDQ and QOperator, dynamic, per-channel or per-tensor, "
        "uint8/int8 activations, the op set), score each on data.validation, time each against "
        "the float model at evaluate.batch_sizes, keep the fastest within the accuracy budget. "
        "Default: auto for precision int8 when the stage pins no scheme setting (format, "
        "activations, calibration, op_types, ..., accuracy_budget or an int8 layer rule), "
        "else static.",
    )
    auto: AutoConfig = Field(
        default_factory=AutoConfig,
        description="How mode auto searches (its candidates, timed runs).",
    )
    preprocess: bool = Field(
        True, description="Run onnxruntime's quant_pre_process (graph optimization) first."
    )
    overrides: list[OverrideRule] = Field(
        default_factory=list,
        description="Per-layer precision rules, first match wins, resolved on the graph that is "
        "quantized (after pre-processing).",
    )
    int4: Int4Config = Field(
        default_factory=Int4Config,
        description="Settings of precision int4 (weight-only MatMulNBits), for the stage or rules.",
    )
    fp16: Fp16Config = Field(
        default_factory=Fp16Config,
        description="Settings of precision fp16 (onnxruntime's float16 converter), for the stage "
        "or rules.",
    )
    npu: NpuVariantConfig = Field(
        default_factory=NpuVariantConfig,
        description="The NPU variant, made when evaluate.backends lists npu (QNN QDQ flavour).",
    )
    fp8: Fp8Config = Field(
        default_factory=Fp8Config,
        description="Settings of precision fp8 (E4M3FN Q/DQ), for the stage or its fp8 rules.",
    )

    _registered = field_validator("precision")(check_precision)

    @model_validator(mode="after")
    def _scheme_takes_its_settings(self) -> QuantizeConfig:
        if self.mode is None:
            # Set without marking it as the recipe's: `model_fields_set` stays what was written.
            object.__setattr__(self, "mode", "auto" if self._may_search() else "static")
        if self.mode == "auto":
            self._check_auto()
        elif "auto" in self.model_fields_set:
            raise ValueError("auto: settings of mode auto; set `mode: auto` or drop them")
        scheme = self.scheme()
        flat = self.model_fields_set & SCHEME_KEYS
        if scheme.precision in SECTION_KEYS and flat:
            raise ValueError(
                f"{', '.join(sorted(flat))}: not a setting of precision {scheme.precision}; its "
                f"settings go under `{scheme.precision}:` "
                f"({', '.join(scheme.config.model_fields)})"
            )
        unused = sorted(flat - set(scheme.config.model_fields))
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not a setting of scheme '{scheme.name}' "
                f"(it takes: {', '.join(scheme.config.model_fields) or 'nothing'})"
            )
        sixteen = {"uint16", "int16"}
        wants_16 = self.activations in sixteen or any(
            rule.settings().activations in sixteen for rule in self.overrides
        )
        if wants_16 and self.format != "qdq":
            raise ValueError(
                "16-bit activations (activations: uint16/int16, or a w8a16 rule) exist only as "
                "Q/DQ pairs; set `format: qdq`"
            )
        fallback_keys = self.model_fields_set & {"fallback", "max_rounds"}
        if self.accuracy_budget is None and fallback_keys:
            raise ValueError(
                f"{', '.join(sorted(fallback_keys))} without accuracy_budget does nothing; set "
                "`accuracy_budget: 0.005` (the largest drop allowed on data.validation)"
            )
        if self.accuracy_budget is not None and scheme.name != "int8_static":
            raise ValueError(
                f"accuracy_budget works with static int8 (precision: int8, mode: static), whose "
                f"Q/DQ layers the fallback ranks and moves; scheme '{scheme.name}' has no "
                "fallback yet: drop accuracy_budget, or use layer rules"
            )
        asked = {self.precision} | {rule.settings().precision for rule in self.overrides}
        idle = sorted((self.model_fields_set & SECTION_KEYS) - asked)
        if idle:
            raise ValueError(
                f"{', '.join(idle)}: settings of a precision that neither `precision` nor any "
                "override rule asks for"
            )
        return self

    def _may_search(self) -> bool:
        """Whether `mode: auto` is the default: precision int8, and nothing in the stage pins one
        scheme (a scheme setting, a fallback budget, an int8 rule or a rule's int8 settings)."""
        if self.precision != "int8":
            return False
        pinned = self.model_fields_set & (SCHEME_KEYS | set(FallbackConfig.model_fields))
        ruled = any(
            r.settings().precision == "int8" or r.model_fields_set - {"match", "precision"}
            for r in self.overrides
        )
        return not pinned and not ruled

    def _check_auto(self) -> None:
        if self.precision != "int8":
            raise ValueError(
                f"mode auto searches int8 schemes; precision {self.precision} has none to choose "
                "from: set `precision: int8`, or drop `mode: auto`"
            )
        fallback_keys = sorted(self.model_fields_set & {"fallback", "max_rounds"})
        if fallback_keys:
            raise ValueError(
                f"{', '.join(fallback_keys)}: fallback rounds run on one pinned scheme; with mode "
                "auto, accuracy_budget is the budget candidates must meet. Set `mode: static` "
                "for fallback rounds"
            )
        int8_rules = [r.match for r in self.overrides if r.settings().precision == "int8"]
        if int8_rules:
            raise ValueError(
                f"mode auto chooses the int8 scheme itself; the int8 rule(s) {int8_rules} pin "
                "static settings: set `mode: static`, or keep those layers in fp32/fp16"
            )

    @property
    def searches(self) -> bool:
        """`mode: auto`: the stage chooses its scheme by measuring candidates."""
        return self.mode == "auto"

    def scheme(self, precision: str | None = None) -> Scheme[Any]:
        """The registered scheme these settings pick (for `precision`, default the stage's);
        `mode: auto` checks its settings as static int8, the fixed default among its candidates."""
        return scheme_for(precision or self.precision, "static" if self.searches else self.mode)

    def candidate(self, settings: dict[str, Any]) -> QuantizeConfig:
        """One auto candidate: these settings with `settings` (mode, scheme settings), validated."""
        drop = SCHEME_KEYS | {"mode", "auto", "accuracy_budget"}
        doc = {k: v for k, v in self.model_dump(exclude_unset=True).items() if k not in drop}
        return QuantizeConfig.model_validate({**doc, **settings})

    def pinned(self) -> dict[str, Any]:
        """The scheme settings the recipe gives (with `mode: auto`, every candidate takes them)."""
        return {k: getattr(self, k) for k in sorted(self.model_fields_set & SCHEME_KEYS)}

    def scheme_config(self, scheme: Scheme[Any] | None = None) -> Any:
        """A scheme's config: its own section of the stage (`fp8: {...}`) where the stage has one,
        else the flat settings it declares (int8)."""
        scheme = scheme or self.scheme()
        section = getattr(self, scheme.precision, None)
        if isinstance(section, SchemeConfig):
            return section
        cls = scheme.config
        return cls.model_validate({k: getattr(self, k) for k in cls.model_fields})


SECTION_KEYS = frozenset(
    name
    for name, field in QuantizeConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, SchemeConfig)
)
"""Precisions whose settings live in their own section of the stage (`fp8: {...}`): the fields
that hold a scheme's config."""
STAGE_KEYS = (
    frozenset({"precision", "mode", "auto", "preprocess", "overrides", "npu"})
    | SECTION_KEYS
    | frozenset(FallbackConfig.model_fields)
)
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


def resolve_rules(
    model_path: Path, rules: list[OverrideRule], graph: str
) -> dict[str, LayerSettings]:
    """Node name -> what its rule asks, on this graph, first matching rule wins. A rule that
    matches no node is a UserError naming the graph's closest layer names."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    chosen: dict[str, LayerSettings] = {}
    hits = [0] * len(rules)
    for node in model.graph.node:
        for i, rule in enumerate(rules):
            if match_rule(rule.match, node, initializers):
                hits[i] += 1
                chosen[node.name] = rule.settings()
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
    if close:
        return "closest layer names: " + ", ".join(close)
    # Nothing alike: name the layers with weights (what rules are usually about), not Relu nodes.
    weighted = [
        _layer_names(n, initializers)[-1]
        for n in model.graph.node
        if any(i in initializers for i in n.input[1:])
    ]
    return "layers with weights: " + ", ".join(list(dict.fromkeys(weighted))[:8] or pool[:8])


# ---------------------------------------------------------------- verification afterwards

_QUANTIZED_OPS = ("QLinear", "QGemm", "QAttention", "DynamicQuantize")


def _is_quantized_op(op_type: str) -> bool:
    return op_type.startswith(_QUANTIZED_OPS) or op_type.endswith("Integer")


def verify_precisions(
    source: Path, out: Path, chosen: dict[str, LayerSettings], kept_float: set[str], mode: str
) -> None:
    """Check the quantized graph against the rules: a node kept in float is still there, not
    an integer op, and reads no dequantized weight; a node a rule asked to quantize (one with
    weights) got its precision, as its scheme sees it (`Scheme.applied`), or by default became an
    integer op or reads a dequantized weight. A miss is a StageError."""
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

    for name, layer in chosen.items():
        precision = layer.precision
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
        elif (applied := scheme_for(precision, mode).applied) is not None:
            if not applied(before, dst, weights):
                raise StageError(
                    "quantize", f"node '{name}' was to be quantized to {precision} but is not"
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


@dataclass(frozen=True)
class Pass:
    """One scheme's run over the graph in a precision map."""

    scheme: Scheme[Any]
    plan: QuantPlan[Any]


def plan_passes(
    cfg: QuantizeConfig, chosen: dict[str, LayerSettings], node_names: list[str]
) -> tuple[list[Pass], list[str]]:
    """The passes that realise a precision map, in phase order, and the node names kept in float.

    The stage's own scheme quantizes every node it can except those a rule gave to another
    precision; each other precision a rule names is one pass of its scheme over exactly the nodes
    given to it. Two passes of the same phase would quantize one another's output (two Q/DQ
    insertions), so a map may name one Q/DQ scheme besides the stage's only if the stage keeps
    float."""
    floats = float_precisions()
    kept = sorted(n for n, layer in chosen.items() if layer.precision in floats)
    by_scheme: dict[str, list[str]] = {}
    schemes: dict[str, Scheme[Any]] = {}
    for name in node_names:
        layer = chosen.get(name)
        if layer is None or layer.precision in floats:
            continue
        scheme = cfg.scheme(layer.precision)
        schemes[scheme.name] = scheme
        by_scheme.setdefault(scheme.name, []).append(name)
    main = cfg.scheme()
    passes: list[Pass] = []
    if not main.keeps_float:
        others = sorted(n for s, names in by_scheme.items() if s != main.name for n in names)
        layers = {n: chosen[n] for n in by_scheme.get(main.name, [])}
        plan = QuantPlan(cfg.scheme_config(main), kept_float=tuple(sorted({*kept, *others})))
        passes.append(Pass(main, replace(plan, layers=layers)))
    for name, nodes in by_scheme.items():
        if name == main.name:
            continue
        scheme = schemes[name]
        plan = QuantPlan(
            cfg.scheme_config(scheme),
            only=tuple(nodes),
            layers={n: chosen[n] for n in nodes},
        )
        passes.append(Pass(scheme, plan))
    for step in passes:
        step.scheme.check_layers(step.plan.layers)
    passes.sort(key=lambda p: p.scheme.phase)
    phases = [p.scheme.phase for p in passes]
    clash = sorted({p.scheme.precision for p in passes if phases.count(p.scheme.phase) > 1})
    if clash:
        raise UserError(
            f"quantize overrides mix {' and '.join(clash)}, two precisions that each insert their "
            "own Q/DQ pairs, in one model; keep one of them for these layers (fp32, fp16 and int4 "
            "rules mix with either)"
        )
    return passes, kept


@dataclass(frozen=True)
class Validation:
    """The float model scored once on data.validation, for the stage's choices (fallback rounds,
    auto candidates): its outputs give its own metric and are what embeddings are scored against
    (its cosine to itself is 1)."""

    data: Dataset
    task: Task
    reference: Any
    float_metric: float

    @classmethod
    def of(cls, source: Path, ctx: StageContext) -> Validation:
        from modelquant.backends import get_backend
        from modelquant.evaluator import model_outputs
        from modelquant.tasks import get_task

        data = ctx.data("validation")
        task = get_task(ctx.task)
        outputs = model_outputs(source, data, get_backend("cpu"), task=task)
        reference = outputs if task.needs_reference else None
        return cls(data, task, reference, task.score(outputs, data.labels, reference))

    def score(self, path: Path) -> float:
        """A quantized model's metric on the same data, against the same reference."""
        from modelquant.evaluator import score

        return score(path, self.data, task=self.task, reference=self.reference)


NPU_SCHEME = "int8_static"
"""The scheme whose result gets a QNN-flavoured NPU variant."""


@register_stage("quantize")
class Quantize(Stage):
    """Quantize the ONNX model with onnxruntime.quantization (a registered scheme: int8 static
    or dynamic, fp8)."""

    Config = QuantizeConfig
    needs = "onnx"
    produces = "onnx"
    data_roles: ClassVar[tuple[str, ...]] = ("calibration",)
    uses_targets = True  # the NPU variant is made when the targets include npu
    config: QuantizeConfig

    def requires(self, targets: tuple[str, ...]) -> dict[str, str]:
        # The variant is only worth making where the HTP can run it: refuse early, naming the extra.
        if "npu" in targets and self.config.scheme().name == NPU_SCHEME:
            return {"onnxruntime_qnn": "evaluate.backends lists npu: the NPU variant"}
        return {}

    def artifact_name(self) -> str:
        return f"model.{self.config.precision}.onnx"

    def variant_name(self, backend: str) -> str:
        return f"model.{self.config.precision}.{backend}.onnx"

    def reads(self) -> tuple[str, ...]:
        cfg = self.config
        # Dynamic int8 (and float) computes no ranges ahead: no calibration data to ask for.
        calibrates = cfg.mode == "static" or any(
            p not in DYNAMIC_PRECISIONS
            for p in [cfg.precision, *(r.precision for r in cfg.overrides)]
        )
        roles = self.data_roles if calibrates or cfg.searches else ()
        # Fallback rounds and auto candidates score on the validation data: its contents are in
        # the key.
        if cfg.accuracy_budget is not None or cfg.searches:
            return (*roles, "validation")
        return roles

    def searches(self) -> bool:
        return self.config.searches

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        assert state.onnx_path is not None
        cfg = self.config
        scheme = cfg.scheme()
        out = ctx.work_dir / "model.onnx"
        ctx.details.update(precision=cfg.precision, mode=cfg.mode, scheme=scheme.name)
        with quiet_quantizer():
            source = self._preprocess(state.onnx_path, ctx) if cfg.preprocess else state.onnx_path
            chosen = resolve_rules(source, cfg.overrides, "graph being quantized")
        if cfg.searches:
            said, final, kept = self._auto(state.onnx_path, source, chosen, out, ctx)
        elif cfg.accuracy_budget is None:
            said, final, kept = self._quantize_map(source, chosen, out, ctx)
        else:
            said, final, kept = self._fallback(source, chosen, out, ctx)
        ctx.details.update(said)
        ctx.details["kept_float"] = kept
        ctx.details["precision_map"] = _precision_map(final)
        ctx.details["qdq_nodes"] = _count_ops(out, ("QuantizeLinear", "DequantizeLinear"))
        variants = dict(state.variants)
        if "npu" in ctx.targets and scheme.name == NPU_SCHEME:
            moved = _moved_to_float(source, final, chosen)
            variants["npu"] = self._npu_variant(state.onnx_path, ctx, moved)
        elif "npu" in ctx.targets:
            ctx.details["npu_variant"] = (
                f"not made: the NPU variant is a QNN int8 QDQ model, and precision "
                f"{cfg.precision} has no QNN form"
            )
        return state.replace(onnx_path=out, variants=variants)

    def _quantize_map(
        self,
        source: Path,
        chosen: dict[str, LayerSettings],
        out: Path,
        ctx: StageContext,
        cfg: QuantizeConfig | None = None,
    ) -> tuple[dict[str, Any], dict[str, LayerSettings], list[str]]:
        """Quantize `source` under one precision map into `out`, checked and verified; what the
        schemes said, the map and the nodes kept in float. `cfg`: other settings than the
        stage's (an auto candidate)."""
        from modelquant.models import onnx_file

        cfg = cfg or self.config
        try:
            with quiet_quantizer():
                passes, kept = plan_passes(cfg, chosen, _node_names(source))
                said = self._run_passes(source, out, passes, ctx)
        except (UserError, StageError):
            raise
        except Exception as exc:
            raise StageError("quantize", f"onnxruntime.quantization failed: {exc}") from exc
        onnx_file.check(out)
        verify_precisions(source, out, chosen, set(kept), str(cfg.mode))
        return said, chosen, kept

    def _auto(
        self,
        float_path: Path,
        source: Path,
        chosen: dict[str, LayerSettings],
        out: Path,
        ctx: StageContext,
    ) -> tuple[dict[str, Any], dict[str, LayerSettings], list[str]]:
        """`mode: auto`: each candidate quantized, scored on the validation data and timed
        against the float model (`float_path`, the stage's input) at the run's batch sizes; the
        winner (`auto.choose`) is kept, and every candidate goes to the report."""
        from modelquant.backends.bench import feeds_from
        from modelquant.models import onnx_file
        from modelquant.report.rows import fmt_metric
        from modelquant.stages import auto

        cfg = self.config
        if cfg.accuracy_budget is not None:
            budget, budget_from = cfg.accuracy_budget, "quantize.accuracy_budget"
        elif ctx.budget is not None:
            budget, budget_from = ctx.budget.drop, ctx.budget.source
        else:
            budget, budget_from = auto.DEFAULT_BUDGET, "default (no gate names one)"
        validation = Validation.of(source, ctx)
        task, float_metric = validation.task, validation.float_metric
        float_size = onnx_file.size_bytes(float_path)
        candidates: list[auto.Candidate] = []
        results: dict[str, tuple[dict[str, Any], dict[str, LayerSettings], list[str]]] = {}
        failures: list[Exception] = []
        for name, settings in auto.candidate_settings(cfg.auto.candidates, cfg.pinned()):
            shown = {
                k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                for k, v in settings.items()
            }
            c = auto.Candidate(name, shown)
            candidates.append(c)
            target = ctx.work_dir / f"candidate.{name}.onnx"
            try:
                results[name] = self._quantize_map(
                    source, chosen, target, ctx, cfg.candidate(settings)
                )
            except (UserError, StageError, ValueError) as exc:  # a scheme this graph defeats
                failures.append(exc)
                c.error = str(exc).splitlines()[0][:300]
                ctx.log(f"quantize auto: {name} failed: {c.error}")
                continue
            c.path = target
            c.metric = validation.score(target)
            c.drop = float_metric - c.metric
            c.size_ratio = onnx_file.size_bytes(target) / float_size
            ctx.log(
                f"quantize auto: {name} validation {fmt_metric(task.metric.name, c.metric)} "
                f"(drop {c.drop * 100:.2f} pt), size {c.size_ratio:.3f}x"
            )
        float_ms: dict[str, float] = {}
        untimed = auto.time_candidates(
            float_path,
            candidates,
            ctx.timing.batch_sizes,
            ctx.timing.threads,
            feeds_from(validation.data),
            cfg.auto,
            ctx.timing.block,
            float_ms,
        )
        try:
            winner, reason = auto.choose(candidates, budget)
        except ValueError:
            # Bad input that defeats every scheme alike (an int4 rule on a Conv) is the user's.
            user = next((e for e in failures if isinstance(e, UserError)), None)
            if user is not None and len(failures) == len(candidates):
                raise user from None
            errors = "; ".join(f"{c.name}: {c.error}" for c in candidates)
            raise StageError(
                "quantize", f"mode auto: no candidate could be built ({errors})"
            ) from None
        assert winner.path is not None
        ctx.log(f"quantize auto: kept {winner.name}: {reason}")
        onnx_file.copy(winner.path, out)
        for c in candidates:
            if c.path is not None:
                onnx_file.remove(c.path)
        said, final, kept = results[winner.name]
        winner_cfg = cfg.candidate(winner.settings)
        said = {
            **said,
            "scheme": winner_cfg.scheme().name,
            "auto": {
                "budget": budget,
                "budget_from": budget_from,
                "metric": task.metric.name,
                "float_metric": float_metric,
                "batch_sizes": list(ctx.timing.batch_sizes),
                "threads": ctx.timing.threads,
                "cpu_flags": list(ctx.timing.cpu_flags),
                "float_latency_ms": float_ms,
                "untimed": untimed,
                "candidates": [c.details(budget) for c in candidates],
                "winner": winner.name,
                "winner_mode": winner_cfg.mode,
                "reason": reason,
                "fixed_default": auto.FIXED_DEFAULT,
            },
        }
        return said, final, kept

    def _fallback(
        self, source: Path, chosen: dict[str, LayerSettings], out: Path, ctx: StageContext
    ) -> tuple[dict[str, Any], dict[str, LayerSettings], list[str]]:
        """Quantize, score on the validation data, and return the worst layers to higher
        precision round by round (`fallback.schedule`) until the drop is within the budget; the
        best round is kept either way, and its verdict goes to the report as a gate."""
        from modelquant.models import onnx_file
        from modelquant.report.rows import fmt_metric
        from modelquant.stages.fallback import Outcome, Round, schedule, trimmed

        cfg = self.config
        budget = cfg.accuracy_budget
        assert budget is not None
        validation = Validation.of(source, ctx)
        task, float_metric = validation.task, validation.float_metric
        outcome = Outcome(budget=budget, float_metric=float_metric)
        results: dict[int, tuple[dict[str, Any], dict[str, LayerSettings], list[str]]] = {}

        def attempt(index: int, moved: dict[str, str]) -> Round:
            target = ctx.work_dir / f"round{index}.onnx"
            results[index] = self._quantize_map(source, _promote(chosen, moved), target, ctx)
            metric = validation.score(target)
            done = Round(
                index, moved, metric, float_metric - metric, onnx_file.size_bytes(target), target
            )
            outcome.rounds.append(done)
            ctx.log(
                f"quantize round {index}: {len(moved)} layer(s) in higher precision, "
                f"validation {fmt_metric(task.metric.name, metric)} "
                f"(drop {(float_metric - metric) * 100:.2f} pt, "
                f"budget {budget * 100:.2f} pt)"
            )
            return done

        first = attempt(0, {})
        ranking: list[dict[str, Any]] = []
        if cfg.fallback == "off":
            outcome.missed_because = "fallback is off"
        elif not outcome.within(first):
            ranking = self._rank(source, chosen, ctx)
            ranked = [r["node"] for r in ranking]
            w8a16 = cfg.format == "qdq" and cfg.activations not in ("uint16", "int16")
            plans = schedule(ranked, cfg.max_rounds, cfg.fallback, w8a16)
            if not plans:
                outcome.missed_because = "no quantized layer left to move"
            for index, moved in enumerate(plans, start=1):
                if outcome.within(attempt(index, moved)):
                    # One more round, if left: the same map without its 16-bit layers.
                    fewer = trimmed(moved)
                    if fewer is not None and index < cfg.max_rounds:
                        attempt(index + 1, fewer)
                    break
        best = outcome.best
        onnx_file.copy(best.path, out)
        for r in outcome.rounds:
            onnx_file.remove(r.path)
        said, final, kept = results[best.index]
        said = {
            **said,
            "fallback": outcome.details(ranking, task.metric.name),
            "gate": outcome.gate(task.metric.name),
        }
        return said, final, kept

    def _rank(
        self, source: Path, chosen: dict[str, LayerSettings], ctx: StageContext
    ) -> list[dict[str, Any]]:
        """The layers the fallback may move, worst first, by their own quantization error
        (`modelquant.sensitivity.rank_layers`); layers a rule keeps in float are not candidates."""
        from modelquant.sensitivity import rank_layers

        floats = float_precisions()
        # `source` is already pre-processed (node names must stay those of `chosen`), and the
        # analysis quantizes without a budget (no fallback inside the ranking).
        settings = self.config.model_copy(update={"preprocess": False, "accuracy_budget": None})
        ranked = rank_layers(source, settings, ctx)
        return [
            {
                "node": r.node,
                "layer": r.layer,
                "op_type": r.op_type,
                "activation_sqnr_db": r.activation_sqnr_db,
                "weight_sqnr_db": r.weight_sqnr_db,
            }
            for r in ranked
            if not (r.node in chosen and chosen[r.node].precision in floats)
        ]

    def _run_passes(
        self, source: Path, out: Path, passes: list[Pass], ctx: StageContext
    ) -> dict[str, Any]:
        """Each pass reads the previous one's graph; what the schemes report (under its
        precision for a scheme a rule picked)."""
        from modelquant.models import onnx_file

        said: dict[str, Any] = {}
        if not passes:  # everything kept in float
            onnx_file.copy(source, out)
            return said
        current = source
        for i, step in enumerate(passes):
            last = i == len(passes) - 1
            target = out if last else out.with_name(f"{out.stem}.pass{i}.{step.scheme.name}.onnx")
            reported = step.scheme.quantize(current, target, step.plan, ctx)
            if step.plan.only is None:
                said.update(reported)
            else:
                said.setdefault("rule_schemes", {})[step.scheme.precision] = {
                    "scheme": step.scheme.name,
                    "nodes": len(step.plan.only),
                    **reported,
                }
            if current != source:
                onnx_file.remove(current)
            current = target
        return said

    def _npu_variant(self, source: Path, ctx: StageContext, moved: list[str] | None = None) -> Path:
        """The QNN flavour: fixed batch, QNN pre-processing and QDQ config (get_qnn_qdq_config),
        with the layer rules resolved on the QNN-prepared graph, plus the layers the fallback
        moved to float (`moved`: their names, matched there too; the variant's activations are
        16-bit already, so w8a16 moves have nothing to add)."""
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
                    missed = []
                    for name in moved or []:
                        try:
                            extra = resolve_rules(
                                prepared, [OverrideRule(match=name)], "NPU variant's graph"
                            )
                        except UserError:
                            missed.append(name)
                            continue
                        chosen = {**extra, **chosen}  # the recipe's own rules come first
                    kept = _npu_kept(cfg, chosen)
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
            verify_precisions(prepared, out, chosen, set(kept), "static")
        ctx.details["npu_variant"] = {
            "activations": npu.activations,
            "weights": npu.weights,
            "batch_size": npu.batch_size,
            "per_channel": npu.per_channel,
            "qdq_nodes": _count_ops(out, ("QuantizeLinear", "DequantizeLinear")),
            "kept_float": kept,
        }
        if missed:
            ctx.details["npu_variant"]["fallback_not_applied"] = missed
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


def _moved_to_float(
    source: Path, final: dict[str, LayerSettings], rules: dict[str, LayerSettings]
) -> list[str]:
    """Names (torch module path where known, else node name) of the layers the fallback moved to
    float: in `final`, float, and not so by the recipe's own rules."""
    import onnx

    floats = float_precisions()
    moved = {n for n, layer in final.items() if layer.precision in floats and n not in rules}
    if not moved:
        return []
    model = onnx.load(str(source), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return [_layer_names(node, initializers)[-1] for node in model.graph.node if node.name in moved]


def _npu_kept(cfg: QuantizeConfig, chosen: dict[str, LayerSettings]) -> list[str]:
    """The NPU variant is one QNN QDQ pass: rules may keep layers in float or at the stage's
    precision; any other precision has no QNN form here."""
    floats = float_precisions()
    other = sorted({layer.precision for layer in chosen.values()} - floats - {cfg.precision})
    if other:
        raise UserError(
            f"quantize overrides ask for {', '.join(other)}, which the NPU variant cannot hold "
            f"(it keeps layers in float or at {cfg.precision}); drop npu from evaluate.backends "
            "or those rules"
        )
    return sorted(n for n, layer in chosen.items() if layer.precision in floats)


def _promote(chosen: dict[str, LayerSettings], moved: dict[str, str]) -> dict[str, LayerSettings]:
    """The map with fallback's moves applied: a moved layer keeps its rule's other settings
    (per-channel, calibration) and takes 16-bit activations ('w8a16') or float ('fp32')."""
    result = dict(chosen)
    for name, to in moved.items():
        rule = chosen.get(name)
        if to == "fp32":
            result[name] = LayerSettings(precision="fp32")
        elif rule is None:
            result[name] = LayerSettings(precision="int8", activations="uint16")
        else:
            result[name] = replace(rule, precision="int8", activations="uint16")
    return result


def _node_names(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]


def _precision_map(chosen: dict[str, LayerSettings]) -> dict[str, str]:
    """Node -> precision for every node a rule matched (the report's view of the map); nodes no
    rule matched have the stage's precision."""
    return {name: layer.precision for name, layer in sorted(chosen.items())}


def _count_ops(path: Path, ops: tuple[str, ...]) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in ops)
