"""The `quantize` stage: static (QDQ, QOperator) and dynamic INT8 via onnxruntime.quantization."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelquant.errors import StageError, UserError
from modelquant.layer_rules import rule_matches
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.state import ModelState

if TYPE_CHECKING:
    from modelquant.data import Dataset

DEFAULT_CALIBRATION_SAMPLES = 256


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="How activation ranges are chosen from calibration data."
    )
    percentile: float = Field(
        99.999, gt=0, le=100, description="Percentile kept by the 'percentile' method."
    )
    symmetric: bool = Field(False, description="Force ranges symmetric around zero.")
    samples: int | None = Field(
        None, gt=0, description="Calibration samples (default: data.calibration.samples or 256)."
    )


class OverrideRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field(
        description="Layer rule: an exact layer/node name, 're:<regex>' or 'type:<OpType>'."
    )
    precision: Literal["fp32"] = Field("fp32", description="Precision for matched layers.")


class NpuVariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activations: Literal["uint16", "uint8"] = Field(
        "uint16", description="Activation type of the NPU variant (uint16: closer to FP32)."
    )
    weights: Literal["uint8", "int8"] = Field("uint8", description="Weight type of the variant.")
    batch_size: int = Field(1, gt=0, description="The variant's fixed batch size (static shapes).")
    per_channel: bool = Field(False, description="Per-channel weight scales in the variant.")


class QuantizeConfig(StageConfig):
    precision: Literal["int8"] = Field("int8", description="Target precision.")
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: calibrated activation ranges; dynamic: ranges at run time."
    )
    format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="QDQ (Quantize/DequantizeLinear pairs) or QOperator (QLinearConv, ...)."
    )
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation type (uint8 is the fast path on x86 CPUs)."
    )
    weights: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    reduce_range: bool = Field(
        False, description="7-bit weights, for x86 CPUs without VNNI (avoids saturation)."
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    preprocess: bool = Field(
        True, description="Run onnxruntime's quant_pre_process (graph optimization) first."
    )
    overrides: list[OverrideRule] = Field(
        default_factory=list, description="Per-layer precision rules, first match wins."
    )
    npu: NpuVariantConfig = Field(
        default_factory=NpuVariantConfig,
        description="The NPU variant, made when evaluate.backends lists npu (QNN QDQ flavour).",
    )


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


class _Reader:
    """An onnxruntime CalibrationDataReader over equal-shaped batches of a Dataset."""

    def __init__(self, data: Dataset, batch_size: int, names: list[str]) -> None:
        self._batches = [
            {n: b[n] for n in names} for b, _ in data.batches(batch_size, drop_last=True)
        ]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def _layer_names(node: Any, initializers: set[str]) -> list[str]:
    """Names a rule can match: the ONNX node name and the torch module path of its weights."""
    names = [node.name]
    for inp in node.input:
        if inp in initializers and "." in inp:
            names.append(inp.rsplit(".", 1)[0])  # "classifier.2.weight" -> "classifier.2"
    return names


def match_rule(rule: str, node: Any, initializers: set[str]) -> bool:
    """Whether a layer rule picks this ONNX node (by node name, torch module path or op type)."""
    return rule_matches(rule, _layer_names(node, initializers), node.op_type)


def resolve_overrides(model_path: Path, rules: list[OverrideRule]) -> dict[str, str]:
    """Node name -> precision, from the rules; a rule matching nothing is a user error."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    chosen: dict[str, str] = {}
    hits = [0] * len(rules)
    for node in model.graph.node:
        for i, rule in enumerate(rules):
            if match_rule(rule.match, node, initializers):
                hits[i] += 1
                chosen.setdefault(node.name, rule.precision)
                break
    for rule, n in zip(rules, hits, strict=True):
        if n == 0:
            raise UserError(f"quantize override '{rule.match}' matches no layer of the model")
    return chosen


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """onnxruntime's pre-processing drops temp files in the working directory; keep them here."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@register_stage("quantize")
class Quantize(Stage):
    """Quantize the ONNX model to INT8 with onnxruntime.quantization (static or dynamic)."""

    Config = QuantizeConfig
    needs = "onnx"
    produces = "onnx"
    data_roles: ClassVar[tuple[str, ...]] = ("calibration",)
    config: QuantizeConfig

    def artifact_name(self) -> str:
        return f"model.{self.config.precision}.onnx"

    def variant_name(self, backend: str) -> str:
        return f"model.{self.config.precision}.{backend}.onnx"

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        from modelquant.models import onnx_file

        assert state.onnx_path is not None
        cfg = self.config
        source = state.onnx_path
        out = ctx.work_dir / "model.onnx"
        overrides = resolve_overrides(source, cfg.overrides)
        excluded = sorted(n for n, p in overrides.items() if p == "fp32")
        ctx.details.update(
            precision=cfg.precision,
            mode=cfg.mode,
            format=cfg.format if cfg.mode == "static" else "qoperator",
            activations=cfg.activations,
            weights=cfg.weights,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            kept_float=excluded,
        )
        # onnxruntime.quantization logs advice through the root logger at WARNING; keep it quiet.
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        # Its histogram calibrators print progress to stdout, which must stay clean for --json.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                source = self._preprocess(source, ctx) if cfg.preprocess else source
                if cfg.mode == "dynamic":
                    self._dynamic(source, out, excluded)
                else:
                    self._static(source, out, excluded, ctx)
        except (UserError, StageError):
            raise
        except Exception as exc:
            raise StageError("quantize", f"onnxruntime.quantization failed: {exc}") from exc
        finally:
            quiet.setLevel(level)
        onnx_file.check(out)
        ctx.details["qdq_nodes"] = _count_ops(out, ("QuantizeLinear", "DequantizeLinear"))
        variants = dict(state.variants)
        if "npu" in ctx.recipe.evaluate.backends and cfg.mode == "static":
            variants["npu"] = self._npu_variant(state.onnx_path, excluded, ctx)
        return state.replace(onnx_path=out, variants=variants)

    def _npu_variant(self, source: Path, excluded: list[str], ctx: StageContext) -> Path:
        """The QNN flavour: fixed batch, QNN pre-processing and QDQ config (get_qnn_qdq_config)."""
        from modelquant.backends.qnn_quant import qnn_variant
        from modelquant.extras import install_hint, require
        from modelquant.models import onnx_file

        # The variant is only worth making where the HTP can run it: fail early, naming the extra.
        require("onnxruntime_qnn", "evaluate.backends lists npu: the NPU variant")
        cfg = self.config
        npu = cfg.npu
        samples = cfg.calibration.samples or DEFAULT_CALIBRATION_SAMPLES
        data = ctx.data("calibration").take(samples)
        names = list(onnx_file.input_names(source))
        out = ctx.work_dir / "model.npu.onnx"
        try:
            qnn_variant(
                source,
                out,
                _Reader(data, npu.batch_size, names),
                activations=npu.activations,
                weights=npu.weights,
                batch_size=npu.batch_size,
                per_channel=npu.per_channel,
                calibration=cfg.calibration.method,
                percentile=cfg.calibration.percentile,
                nodes_to_exclude=excluded or None,
            )
        except ImportError as exc:
            raise UserError(
                f"the npu variant cannot import {exc.name or exc}; "
                f"{install_hint('onnxruntime_qnn')}"
            ) from None
        except Exception as exc:
            raise StageError("quantize", f"QNN variant quantization failed: {exc}") from exc
        onnx_file.check(out)
        ctx.details["npu_variant"] = {
            "activations": npu.activations,
            "weights": npu.weights,
            "batch_size": npu.batch_size,
            "per_channel": npu.per_channel,
            "qdq_nodes": _count_ops(out, ("QuantizeLinear", "DequantizeLinear")),
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

    def _dynamic(self, source: Path, out: Path, excluded: list[str]) -> None:
        from onnxruntime.quantization import quantize_dynamic

        cfg = self.config
        quantize_dynamic(
            str(source),
            str(out),
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            weight_type=_qtype(cfg.weights),
            nodes_to_exclude=excluded,
        )

    def _static(self, source: Path, out: Path, excluded: list[str], ctx: StageContext) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        from modelquant.models import onnx_file

        cfg = self.config
        spec = ctx.recipe.data.calibration or ctx.recipe.data.train
        if spec is None:
            raise UserError("static quantization needs data.calibration (or data.train)")
        samples = cfg.calibration.samples or spec.samples or DEFAULT_CALIBRATION_SAMPLES
        data = ctx.data("calibration").take(samples)
        batch = min(spec.batch_size, len(data))
        names = list(onnx_file.input_names(source))
        missing = [n for n in names if n not in data.inputs]
        if missing:
            raise UserError(f"calibration data has no input(s) {missing} that the model takes")
        reader = _Reader(data, batch, names)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[cfg.calibration.method]
        extra: dict[str, Any] = {"CalibTensorRangeSymmetric": cfg.calibration.symmetric}
        if cfg.calibration.method == "percentile":
            extra["CalibPercentile"] = cfg.calibration.percentile
        # Ranges depend on the model, the data and the calibration settings, nothing else.
        key = hashlib.sha256(
            json.dumps(
                {
                    "model": onnx_file.content_hash(source),
                    "data": spec.model_dump(mode="json"),
                    "samples": len(reader) * batch,
                    "batch": batch,
                    "calibration": cfg.calibration.model_dump(mode="json"),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        cache = ctx.cache_dir / "calibration" / f"{key}.json"
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
            activation_type=_qtype(cfg.activations),
            weight_type=_qtype(cfg.weights),
            nodes_to_exclude=excluded,
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=str(target),
        )
        if not hit:
            os.replace(target, cache)
        ctx.details["calibration"] = {
            "method": cfg.calibration.method,
            "samples": len(reader) * batch,
            "batch_size": batch,
            "cache": "reused" if hit else "computed",
            "cache_file": str(cache.relative_to(ctx.out_dir)),
        }
        if cfg.calibration.method == "percentile":
            ctx.details["calibration"]["percentile"] = cfg.calibration.percentile


def _count_ops(path: Path, ops: tuple[str, ...]) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type in ops)
