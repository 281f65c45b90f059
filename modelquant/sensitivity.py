"""Per-layer quantization sensitivity: how much each layer the quantize stage quantizes loses, as
signal-to-quantization-noise ratios measured with onnxruntime's `qdq_loss_debug`, and optionally
as the task metric with that layer alone quantized.

Independent of the CLI: `analyze()` gives the whole document (`sensitivity.json`, the `analyze`
stage's details), `rank_layers()` the layers worst first, for the quantize stage's
accuracy-aware fallback (their `node` names are exact matches for its layer rules).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelquant.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from modelquant.data import Dataset
    from modelquant.stages.base import StageContext
    from modelquant.stages.quantize import QuantizeConfig

SCHEMA_VERSION = 1
SENSITIVITY_FILE = "sensitivity.json"
DEFAULT_SAMPLES = 64
"""Calibration samples whose activations are compared: onnxruntime's debug tools keep every
saved tensor of every sample in memory, so the count is bounded."""

VARIANT = "only_this_layer_quantized"
VARIANT_REASON = (
    "each layer is scored quantized alone, all others float: the change is that layer's own "
    "effect, free of the error of the layers before it; the other variant (only this layer "
    "float, all others quantized) measures what one layer recovers in a quantized model, which "
    "is small and noisy when many layers each cost a little"
)

NO_VALIDATION = (
    "the per-layer accuracy is measured on data.validation, and the recipe has none (the "
    "evaluation data gates the result and is never tuned on); add one, e.g. "
    "data.validation: {source: digits, split: val}"
)

Progress = Callable[[int, int, str], None]
"""`progress(done, total, what)`: called before each per-layer step and once at the end."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerSensitivity(_Doc):
    """One quantized layer: what it loses, measured three ways."""

    rank: int = Field(description="Position worst first (1 = most sensitive).")
    layer: str = Field(description="The torch module path when known, else the ONNX node name.")
    node: str = Field(
        description="The ONNX node name on the graph quantized (an exact match for quantize "
        "overrides)."
    )
    match_names: list[str] = Field(
        description="Every name a quantize override can match this layer by (node name, torch "
        "module path)."
    )
    op_type: str = Field(description="The ONNX op type (Conv, Gemm, MatMul, ...).")
    activation: str | None = Field(
        description="The activation tensor measured: the layer's output if it is quantized, "
        "else its input (None: neither is)."
    )
    activation_sqnr_db: float | None = Field(
        description="Own error: SQNR (dB) of the float model's activation against its own "
        "Q/DQ round trip (the layer's scale and zero point), free of upstream error."
    )
    activation_sqnr_accumulated_db: float | None = Field(
        description="Accumulated error: SQNR (dB) of the float model's activation against the "
        "quantized model's (every layer before it quantized too; onnxruntime's xmodel_err)."
    )
    weight: str | None = Field(description="The weight initializer measured.")
    weight_sqnr_db: float | None = Field(
        description="SQNR (dB) of the float weight against its dequantized int weight."
    )
    metric: float | None = Field(
        None, description="With accuracy: the task metric with only this layer quantized."
    )
    metric_delta: float | None = Field(
        None, description="With accuracy: metric minus the float model's (negative: a loss)."
    )
    output_sqnr_db: float | None = Field(
        None,
        description="With accuracy: SQNR (dB) of the model's first output with only this layer "
        "quantized against the float model's (breaks ties between equal metric deltas).",
    )


class ActivationData(_Doc):
    """Which samples the SQNRs are measured on."""

    data: str = Field(description="The recipe data entry (calibration).")
    description: str = Field(description="The data set, as the data source names it.")
    samples: int = Field(description="Samples whose activations were compared.")
    batch_size: int = Field(description="Samples per run.")


class AccuracyData(_Doc):
    """How the per-layer metric was measured."""

    data: str = Field(description="The recipe data entry (validation; never the evaluation data).")
    description: str = Field(description="The data set, as the data source names it.")
    samples: int = Field(description="Samples scored.")
    metric: str = Field(description="The task metric (top1).")
    variant: Literal["only_this_layer_quantized"] = Field(
        description="Which one-layer models were scored."
    )
    variant_reason: str = Field(description="Why that variant.")
    baseline: float = Field(description="The float model's metric (the graph quantized).")
    quantized: float = Field(description="The metric with every layer quantized by the stage.")
    seconds: float = Field(description="Time spent on the per-layer models.")


class Sensitivity(_Doc):
    """sensitivity.json: per-layer sensitivity of one recipe's quantize stage."""

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this document's shape.")
    recipe: str | None = Field(None, description="The recipe's name (set by `modelquant analyze`).")
    model: str = Field(
        description="The model the quantize stage receives: its file in the output folder "
        "(`modelquant analyze`), or in the stage cache (the analyze stage)."
    )
    quantize: dict[str, Any] = Field(
        description="What the quantize stage reported for the fully quantized model (precision, "
        "format, activation and weight types, calibration)."
    )
    ranked_by: Literal["activation_sqnr_db", "metric_delta"] = Field(
        description="The sort key, worst first (ties: output_sqnr_db, then the SQNRs)."
    )
    activations: ActivationData
    accuracy: AccuracyData | None = Field(None, description="Present with accuracy.")
    kept_float: list[str] = Field(
        default_factory=list,
        description="Nodes with a weight matrix or kernel that the quantized model leaves in float "
        "(the recipe's rules keep them, or the scheme does not quantize them): not analysed.",
    )
    seconds: float = Field(description="Time the whole analysis took.")
    layers: list[LayerSensitivity] = Field(description="The quantized layers, worst first.")


def rank_layers(
    model_path: Path,
    quantize_config: QuantizeConfig,
    ctx: StageContext,
    accuracy: bool = False,
    *,
    samples: int = DEFAULT_SAMPLES,
    progress: Progress | None = None,
) -> list[LayerSensitivity]:
    """The layers the quantize stage quantizes in `model_path`, worst first."""
    return analyze(
        model_path, quantize_config, ctx, accuracy, samples=samples, progress=progress
    ).layers


def analyze(
    model_path: Path,
    quantize_config: QuantizeConfig,
    ctx: StageContext,
    accuracy: bool = False,
    *,
    samples: int = DEFAULT_SAMPLES,
    progress: Progress | None = None,
) -> Sensitivity:
    """Quantize `model_path` as the stage would (its own code and settings, on `ctx`'s data),
    measure every quantized layer's SQNRs on up to `samples` calibration samples and, with
    `accuracy`, the metric on `data.validation` with each layer alone quantized."""
    import time

    from modelquant.schemes import quiet_quantizer

    start = time.perf_counter()
    cfg = _analysable(quantize_config)
    if accuracy:
        _validation(ctx)  # refused before any work when the recipe has none
    say = progress or (lambda done, total, what: None)
    with tempfile.TemporaryDirectory(prefix="mq-analyze-") as tmp, quiet_quantizer():
        folder = Path(tmp)
        say(0, 1, "quantizing")
        graph, quantized, said = _quantize(model_path, cfg, ctx, folder / "full")
        layers, kept = _quantized_layers(graph, quantized)
        if not layers:
            raise UserError(
                f"the quantize stage ({cfg.precision}, {cfg.mode}) quantized no layer with "
                "weights in this model; nothing to analyse"
            )
        say(0, 1, "comparing activations")
        act_data = _activation_sqnrs(graph, quantized, cfg, ctx, samples, layers, folder)
        _weight_sqnrs(graph, quantized, layers)
        acc: AccuracyData | None = None
        if accuracy:
            acc = _per_layer_metric(graph, quantized, cfg, ctx, layers, folder, say)
    ranked = _ranked(layers, by_metric=accuracy)
    say(1, 1, "done")
    return Sensitivity(
        model=model_path.name,
        quantize=_settings(said),
        ranked_by="metric_delta" if accuracy else "activation_sqnr_db",
        activations=act_data,
        accuracy=acc,
        kept_float=kept,
        seconds=round(time.perf_counter() - start, 3),
        layers=ranked,
    )


# ---------------------------------------------------------------- the stage's own quantization


def _settings(said: dict[str, Any]) -> dict[str, Any]:
    """What the stage reported about the model analysed, less what says nothing about it (the
    precision map is in the layers; whether calibration ranges came from the cache)."""
    out = {k: v for k, v in said.items() if k not in ("kept_float", "precision_map")}
    if isinstance(out.get("calibration"), dict):
        out["calibration"] = {
            k: v for k, v in out["calibration"].items() if k not in ("cache", "cache_file")
        }
    return out


def _analysable(cfg: QuantizeConfig) -> QuantizeConfig:
    """The stage's settings in the form onnxruntime's debug tools read: Q/DQ pairs. QOperator
    has the same scales as QDQ (it fuses the pairs into QLinear ops), so it is analysed as QDQ;
    dynamic quantization computes ranges at run time and writes no Q/DQ pairs at all; mode auto is
    analysed as its fixed default, static QDQ. The accuracy budget is dropped: layers are measured
    as the plain quantization leaves them."""
    if cfg.mode == "dynamic":
        raise UserError(
            "analyze compares Q/DQ models, and the quantize stage's mode 'dynamic' writes integer "
            "ops with ranges computed at run time; set the quantize stage's mode: static to "
            "analyse it"
        )
    # The layers are measured as the budget-free quantization quantizes them: with the fallback on,
    # the stage would return the very layers being measured to float.
    update: dict[str, Any] = {"accuracy_budget": None}
    if cfg.mode == "auto":
        # The search's winner depends on timing; its fixed default, static QDQ, is what a layer
        # costs in accuracy (the Q/DQ candidates share its scales, dynamic has none to compare).
        update["mode"] = "static"
    if getattr(cfg, "format", "qdq") == "qoperator":
        update["format"] = "qdq"
    return cfg.model_copy(update=update)


def _quantize(
    source: Path, cfg: QuantizeConfig, ctx: StageContext, work: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """Run the quantize stage itself on `source` (no NPU variant): the graph it quantized (after
    its pre-processing), the quantized model and what the stage reported."""
    from modelquant.models import onnx_file
    from modelquant.stages.quantize import Quantize
    from modelquant.state import ModelState

    work.mkdir(parents=True, exist_ok=True)
    stage_ctx = dataclasses.replace(ctx, work_dir=work, details={}, targets=("cpu",))
    out = Quantize(cfg).run(ModelState(onnx_path=source), stage_ctx)
    assert out.onnx_path is not None
    graph = work / "preprocessed.onnx"
    if stage_ctx.details.get("preprocess") != "applied" or not graph.is_file():
        # onnxruntime's debug tools write temp files beside the models they read: never beside
        # the recipe's own file or a cache entry
        graph = onnx_file.copy(source, work / "graph.onnx")
    return graph, out.onnx_path, dict(stage_ctx.details)


@dataclasses.dataclass
class _Layer:
    node: str
    op_type: str
    names: list[str]
    weight: str | None
    activation: str | None
    index: int
    values: dict[str, float | None] = dataclasses.field(default_factory=dict)


_NORMALIZATIONS = frozenset(
    {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}
)
"""Layers whose parameter is a 1-D scale: a normalization that standardizes raw inputs can be
the most sensitive layer of all (its input's one Q/DQ scale spans every feature's range)."""
_TABLE_OPS = frozenset({"Gather"})
"""Layers whose weight is input 0 (an embedding table, indexed by input 1)."""


def _quantized_layers(graph: Path, quantized: Path) -> tuple[list[_Layer], list[str]]:
    """Nodes of the graph whose weight (input 1, a matrix or kernel, or a normalization's scale;
    input 0 of an embedding Gather) the quantized model reads through DequantizeLinear, in graph
    order; and the nodes with such a weight that stay float."""
    import onnx
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

    from modelquant.stages.quantize import _layer_names

    src = onnx.load(str(graph), load_external_data=False)
    dst = onnx.load(str(quantized), load_external_data=False)
    src_weights = {t.name: list(t.dims) for t in src.graph.initializer}
    dst_weights = {t.name for t in dst.graph.initializer}
    producer = {o: n for n in dst.graph.node for o in n.output}
    dst_nodes = {n.name: n for n in dst.graph.node}
    activation_qdq = {
        n.input[0].removesuffix(QUANT_INPUT_SUFFIX)
        for n in dst.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in dst_weights
    }
    layers: list[_Layer] = []
    kept: list[str] = []
    for index, node in enumerate(src.graph.node):
        at = 0 if node.op_type in _TABLE_OPS else 1
        rank = len(src_weights.get(node.input[at], ())) if len(node.input) > at else 0
        if rank < 2 and not (rank == 1 and node.op_type in _NORMALIZATIONS):
            continue  # no weight matrix, kernel or scale (a bias or constant is not a layer)
        after = dst_nodes.get(node.name)
        made = (
            producer.get(after.input[at]) if after is not None and len(after.input) > at else None
        )
        if after is None or made is None or made.op_type != "DequantizeLinear":
            kept.append(node.name)
            continue
        out = after.output[0].removesuffix(QUANT_INPUT_SUFFIX)
        inp = after.input[0]
        for suffix in (DEQUANT_OUTPUT_SUFFIX + "_1", DEQUANT_OUTPUT_SUFFIX):
            inp = inp.removesuffix(suffix)
        activation = out if out in activation_qdq else inp if inp in activation_qdq else None
        layers.append(
            _Layer(
                node=node.name,
                op_type=node.op_type,
                names=_layer_names(node, set(src_weights)),
                weight=node.input[at],
                activation=activation,
                index=index,
            )
        )
    return layers, kept


# ---------------------------------------------------------------- SQNR through qdq_loss_debug


class _Reader:
    """An onnxruntime CalibrationDataReader over fixed batches (made once per use)."""

    @staticmethod
    def over(batches: list[dict[str, Any]]) -> Any:
        from onnxruntime.quantization.calibrate import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict[str, Any] | None:
                return next(self._it, None)

        return Reader()


def _own_round_trip_model(graph: Path, quantized: Path, target: Path) -> None:
    """The float graph plus, beside each activation the quantized model quantizes, a
    QuantizeLinear/DequantizeLinear branch with the quantized model's own scale and zero point,
    named as onnxruntime's quantizer names them (`<t>_DequantizeLinear_Output`).

    `create_activation_matching` on this model pairs each float activation with its own round
    trip: each layer's own error. onnxruntime's qdq_err on the quantized model compares tensors
    that already carry the upstream error, and where the quantizer removed a Relu (folded into
    the Q/DQ range) it compares the Relu's input with its clipped output."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

    model = onnx.load(str(graph))
    dst = onnx.load(str(quantized))
    dst_inits = {t.name: t for t in dst.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in dst.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    present = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    copied: set[str] = set()
    done: set[str] = set()
    for q in dst.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in dst_inits:
            continue
        tensor = q.input[0].removesuffix(QUANT_INPUT_SUFFIX)
        dq = next(
            (c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None
        )
        if tensor not in present or tensor in done or dq is None:
            continue
        done.add(tensor)
        params = []
        for name in [*q.input[1:], *dq.input[1:]]:
            own = f"mq_own/{name}"
            if name and name not in copied and name in dst_inits:
                init = onnx.TensorProto()
                init.CopyFrom(dst_inits[name])
                init.name = own
                model.graph.initializer.append(init)
                copied.add(name)
            params.append(own if name else "")
        q_out = f"mq_own/{tensor}_QuantizeLinear_Output"
        branch_q = helper.make_node(
            "QuantizeLinear",
            [tensor, *params[: len(q.input) - 1]],
            [q_out],
            name=f"mq_own/{q.name}",
            domain=q.domain,
        )
        branch_q.attribute.extend(q.attribute)
        branch_dq = helper.make_node(
            "DequantizeLinear",
            [q_out, *params[len(q.input) - 1 :]],
            [tensor + DEQUANT_OUTPUT_SUFFIX],
            name=f"mq_own/{dq.name}",
            domain=dq.domain,
        )
        branch_dq.attribute.extend(dq.attribute)
        model.graph.node.extend([branch_q, branch_dq])
    # The quantizer may raise the opset (per-channel axes, 16-bit types): take its imports.
    del model.opset_import[:]
    model.opset_import.extend(dst.opset_import)
    model.ir_version = max(model.ir_version, dst.ir_version)
    onnx.save(model, str(target))


def _activation_sqnrs(
    graph: Path,
    quantized: Path,
    cfg: QuantizeConfig,
    ctx: StageContext,
    samples: int,
    layers: list[_Layer],
    folder: Path,
) -> ActivationData:
    """Own and accumulated activation SQNR of every layer, on the first `samples` samples of
    the calibration data the stage calibrates on."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    from modelquant.schemes.calibration import (
        DEFAULT_CALIBRATION_SAMPLES,
        CalibrationConfig,
        calibration_reader,
    )

    calibration = getattr(cfg, "calibration", None)
    spec = ctx.data_spec("calibration")
    stage_samples = (
        (calibration.samples if calibration is not None else None)
        or (spec.samples if spec is not None else None)
        or DEFAULT_CALIBRATION_SAMPLES
    )
    reader = calibration_reader(graph, CalibrationConfig(samples=min(samples, stage_samples)), ctx)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    own_model = folder / "own.onnx"
    _own_round_trip_model(graph, quantized, own_model)
    debug.modify_model_output_intermediate_tensors(str(own_model), str(folder / "own.aug.onnx"))
    debug.modify_model_output_intermediate_tensors(str(quantized), str(folder / "qdq.aug.onnx"))
    own_acts = debug.collect_activations(str(folder / "own.aug.onnx"), _Reader.over(batches))
    qdq_acts = debug.collect_activations(str(folder / "qdq.aug.onnx"), _Reader.over(batches))
    own = debug.create_activation_matching(own_acts, own_acts)
    cross = debug.create_activation_matching(qdq_acts, own_acts)
    sqnr = debug.compute_signal_to_quantization_noice_ratio
    for layer in layers:
        name = layer.activation
        mine = own.get(name) if name else None
        theirs = cross.get(name) if name else None
        layer.values["activation_sqnr_db"] = (
            sqnr(mine["pre_qdq"], mine["post_qdq"]) if mine else None
        )
        layer.values["activation_sqnr_accumulated_db"] = (
            sqnr(theirs["float"], theirs["post_qdq"]) if theirs and "float" in theirs else None
        )
    return ActivationData(
        data="calibration",
        description=ctx.data("calibration").take(reader.samples).description,
        samples=reader.samples,
        batch_size=reader.batch_size,
    )


def _weight_sqnrs(graph: Path, quantized: Path, layers: list[_Layer]) -> None:
    from onnxruntime.quantization import qdq_loss_debug as debug

    matched = debug.create_weight_matching(str(graph), str(quantized))
    for layer in layers:
        pair = matched.get(layer.weight or "")
        layer.values["weight_sqnr_db"] = (
            debug.compute_signal_to_quantization_noice_ratio(pair["float"], pair["dequantized"])
            if pair
            else None
        )


# ---------------------------------------------------------------- the metric, one layer at a time


def _validation(ctx: StageContext) -> Dataset:
    """data.validation, never the evaluation data that gates the result."""
    spec = ctx.data_spec("validation")
    if spec is None or spec == ctx.data_spec("evaluation"):
        raise UserError(NO_VALIDATION)
    data = ctx.data("validation")
    if data.labels is None:
        raise UserError("data.validation has no labels; the per-layer accuracy needs them")
    return data


def _outputs(path: Path, data: Dataset, batch_size: int) -> np.ndarray:
    from modelquant.backends import get_backend
    from modelquant.evaluator import model_outputs

    return model_outputs(path, data, get_backend("cpu"), batch_size=batch_size)


def _per_layer_metric(
    graph: Path,
    quantized: Path,
    cfg: QuantizeConfig,
    ctx: StageContext,
    layers: list[_Layer],
    folder: Path,
    say: Progress,
) -> AccuracyData:
    """Top-1 with each layer alone quantized by the stage (its rules: that node at the precision
    the recipe gives it, every other node fp32; first match wins), on the graph the stage
    quantized, so no pre-processing runs again. Outputs are scored as `evaluator.score` does."""
    import time

    from onnxruntime.quantization import qdq_loss_debug as debug

    from modelquant import metrics
    from modelquant.stages.quantize import OverrideRule, resolve_rules

    start = time.perf_counter()
    data = _validation(ctx)
    spec = ctx.data_spec("validation")
    batch_size = spec.batch_size if spec is not None else 32
    assert data.labels is not None
    labels = data.labels
    reference = _outputs(graph, data, batch_size)
    baseline = metrics.top1(reference, labels[: len(reference)])
    full = _outputs(quantized, data, batch_size)
    chosen = resolve_rules(graph, cfg.overrides, "graph being quantized")
    total = len(layers)
    for i, layer in enumerate(layers):
        say(i, total, f"layer {i + 1}/{total}: {layer.node}")
        asked = chosen.get(layer.node)
        own = (
            OverrideRule(match=layer.node, **vars(asked))
            if asked is not None
            else OverrideRule(match=layer.node, precision=cfg.precision)
        )
        one = cfg.model_copy(
            update={
                "preprocess": False,
                "overrides": [own, OverrideRule(match="re:.*", precision="fp32")],
            }
        )
        _, path, _ = _quantize(graph, one, ctx, folder / f"layer{i}")
        out = _outputs(path, data, batch_size)
        value = metrics.top1(out, labels[: len(out)])
        layer.values["metric"] = value
        layer.values["metric_delta"] = value - baseline
        layer.values["output_sqnr_db"] = debug.compute_signal_to_quantization_noice_ratio(
            reference, out
        )
    return AccuracyData(
        data="validation",
        description=data.description,
        samples=len(data),
        metric="top1",
        variant=VARIANT,
        variant_reason=VARIANT_REASON,
        baseline=baseline,
        quantized=metrics.top1(full, labels[: len(full)]),
        seconds=round(time.perf_counter() - start, 3),
    )


# ---------------------------------------------------------------- ranking


def _ranked(layers: list[_Layer], by_metric: bool) -> list[LayerSensitivity]:
    """Worst first: by the metric delta (with accuracy), then by the output SQNR with that layer
    alone quantized, then by the layer's own activation SQNR, then its weight SQNR; a missing
    value sorts last. Graph order breaks the remaining ties."""
    inf = float("inf")

    def value(layer: _Layer, key: str) -> float:
        v = layer.values.get(key)
        return inf if v is None else v

    def key(layer: _Layer) -> tuple[float, ...]:
        own = (value(layer, "activation_sqnr_db"), value(layer, "weight_sqnr_db"), layer.index)
        if by_metric:
            return (value(layer, "metric_delta"), value(layer, "output_sqnr_db"), *own)
        return own

    return [
        LayerSensitivity(
            rank=rank,
            layer=layer.names[1] if len(layer.names) > 1 else layer.node,
            node=layer.node,
            match_names=layer.names,
            op_type=layer.op_type,
            activation=layer.activation,
            weight=layer.weight,
            **layer.values,
        )
        for rank, layer in enumerate(sorted(layers, key=key), 1)
    ]


def sensitivity_json_schema() -> dict[str, Any]:
    """The JSON Schema of sensitivity.json (docs/sensitivity.md describes it)."""
    return Sensitivity.model_json_schema()


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render(doc: Sensitivity, console: Any) -> None:
    """The per-layer table, worst first, and where its figures come from (rich)."""
    from rich.markup import escape
    from rich.table import Table

    acc = doc.accuracy
    key = "metric delta" if doc.ranked_by == "metric_delta" else "own activation SQNR"
    table = Table(
        title=f"per-layer sensitivity, worst first (by {key})",
        title_justify="left",
    )
    columns = [
        "#",
        "layer",
        "op",
        "node",
        "act SQNR own dB",
        "act SQNR accum. dB",
        "weight SQNR dB",
    ]
    if acc is not None:
        columns += [f"{acc.metric} alone", "delta", "output SQNR dB"]
    for col in columns:
        right = col.endswith(("dB", "#", "delta"))
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    for layer in doc.layers:
        row = [
            str(layer.rank),
            escape(layer.layer),
            layer.op_type,
            escape(layer.node),
            _db(layer.activation_sqnr_db),
            _db(layer.activation_sqnr_accumulated_db),
            _db(layer.weight_sqnr_db),
        ]
        if acc is not None:
            metric, delta = layer.metric, layer.metric_delta
            row += [
                "n/a" if metric is None else f"{metric:.2%}",
                "n/a" if delta is None else f"{delta * 100:+.2f} pt",
                _db(layer.output_sqnr_db),
            ]
        table.add_row(*row)
    console.print(table)
    act = doc.activations
    lines = [
        f"SQNR on {act.samples} calibration samples ({act.description}); own: the float "
        "activation against its own Q/DQ round trip; accum.: against the quantized model's, "
        "every earlier layer quantized too"
    ]
    if acc is not None:
        lines.append(
            f"{acc.metric} on {acc.samples} validation samples ({acc.description}) with only "
            f"this layer quantized, all others float: float {acc.baseline:.2%}, every layer "
            f"quantized {acc.quantized:.2%}"
        )
    if doc.kept_float:
        lines.append(f"kept in float, not analysed: {', '.join(doc.kept_float)}")
    for line in lines:
        console.print(escape(line), style="dim", highlight=False)
