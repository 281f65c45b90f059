"""The fp8 scheme: FLOAT8E4M3FN weights and activations as Q/DQ pairs through onnxruntime's
`quantize_static`, with scales computed here from calibration statistics and handed to it as
TensorQuantOverrides.

Why not onnxruntime's own FP8 scales: for float types it accepts only the Distribution calibrator,
whose scale is std(x) / std(E4M3 grid) with zero point 0, so anything beyond about 4.5 sigma
saturates (the digits CNN's weights and ReLU outputs do), and it ignores `rmin`/`rmax`/`symmetric`
overrides for float types; an explicit `scale` + `zero_point` override is the one way in.

Two onnxruntime graph rewrites assume Q/DQ clamps like uint8 and would drop every ReLU of an FP8
graph (the digits CNN then scores 35-50 %): the quantizer removes a ReLU before an asymmetric
Q (kept here with QDQKeepRemovableActivations), and the CPU EP's ReluQuantRewrite removes a ReLU
(its Clip rule throws) in front of any QuantizeLinear whose zero point is not int8/uint8. An FP8
zero point of 0 clamps nothing, so each ReLU/Clip that feeds an FP8 QuantizeLinear is moved
behind its Q/DQ pair, where no rule fuses it: relu(dq(q(x))) equals dq(q(relu(x))) exactly for a
zero point of 0.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from modelquant.errors import UserError
from modelquant.schemes import PHASE_QDQ, QuantPlan, SchemeConfig, register_scheme
from modelquant.schemes.calibration import (
    CalibrationConfig,
    CalibrationReader,
    calibration_reader,
    content_key,
)

if TYPE_CHECKING:
    import numpy as np

    from modelquant.stages.base import StageContext

E4M3_MAX = 448.0
"""The largest finite FLOAT8E4M3FN value: an absmax scale maps a tensor's largest |x| to it."""
OPSET = 19
"""FLOAT8 QuantizeLinear/DequantizeLinear exist from ONNX opset 19."""
HISTOGRAM_BINS = 2048
"""Bins of the |x| histograms the MSE and percentile scales are read from."""
MSE_CANDIDATES = 64
"""Scales tried by the MSE search, geometric from absmax / 4 to absmax (FP8's grid is the same in
every octave, so one octave below absmax covers every alignment; two allow clipping outliers)."""
SCALES_VERSION = 1
"""Bump when how scales are computed changes: it is part of the cached scales' key."""
FLOAT8E4M3FN = 17
"""onnx.TensorProto.FLOAT8E4M3FN (kept here so that reading it needs no onnx import)."""
FLOAT8_TYPES = frozenset({FLOAT8E4M3FN, 18, 19, 20})
"""onnx.TensorProto FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ."""
_REMOVABLE = ("Relu", "Clip")


class Fp8Config(SchemeConfig):
    """FP8 (E4M3FN) weights and activations, QDQ form, scales from calibration data."""

    scales: Literal["absmax", "mse", "percentile", "ort"] = Field(
        "absmax",
        description="How each tensor's scale is chosen: absmax (largest |x| maps to 448, nothing "
        "saturates), mse (the scale with the least squared FP8 error on the calibration "
        "histogram), percentile (that percentile of |x| maps to 448), or ort (onnxruntime's "
        "std-based choice, which saturates beyond ~4.5 sigma).",
    )
    percentile: float = Field(
        99.999, gt=0, le=100, description="Percentile of |x| mapped to 448 by scales: percentile."
    )
    per_channel: bool = Field(
        False, description="One scale per output channel of each weight (default: one per tensor)."
    )
    samples: int | None = Field(
        None, gt=0, description="Calibration samples (default: data.calibration.samples or 256)."
    )


# ---------------------------------------------------------------- FP8 arithmetic


def fake_quantize(x: np.ndarray, scale: np.ndarray | np.floating[Any] | float) -> np.ndarray:
    """x through E4M3FN and back at `scale` (saturating at +-448, like QuantizeLinear)."""
    import numpy as np
    import onnx

    f8 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN)
    q = np.clip(x / scale, -E4M3_MAX, E4M3_MAX).astype(f8).astype(np.float32)
    out: np.ndarray = q * scale
    return out


def _scale(absmax: float) -> float:
    """absmax / 448; a tensor that is all zeros gets 1 (any scale represents it)."""
    return absmax / E4M3_MAX if absmax > 0 else 1.0


def _mse_alphas() -> np.ndarray:
    import numpy as np

    return np.geomspace(0.25, 1.0, MSE_CANDIDATES)


def scale_from_histogram(
    counts: np.ndarray, edges: np.ndarray, absmax: float, method: str, percentile: float
) -> float:
    """The scale of one activation tensor from its histogram of |x|."""
    import numpy as np

    if method == "absmax" or absmax <= 0 or counts.sum() == 0:
        return _scale(absmax)
    if method == "percentile":
        share = np.cumsum(counts) / counts.sum()
        index = min(int(np.searchsorted(share, percentile / 100.0)) + 1, len(edges) - 1)
        return _scale(min(float(edges[index]), absmax))
    centers = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    weights = counts.astype(np.float64)
    best, best_err = _scale(absmax), np.inf
    for alpha in _mse_alphas()[::-1]:  # from absmax down: a tie keeps the larger scale
        scale = np.float32(absmax * alpha / E4M3_MAX)
        err = float(np.sum(weights * (centers - fake_quantize(centers, scale)) ** 2))
        if err < best_err:
            best, best_err = float(scale), err
    return best


def weight_scales(weight: np.ndarray, method: str, axis: int | None) -> np.ndarray:
    """A weight's scale (0-d) or per-channel scales along `axis`: absmax / 448, or with
    `method` mse the candidate with the least squared error (per channel)."""
    import numpy as np

    w = weight.astype(np.float32)
    rows = (
        np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    )
    absmax = np.abs(rows).max(axis=1).astype(np.float64)
    best = np.array([_scale(a) for a in absmax], dtype=np.float32)
    if method == "mse":
        best_err = np.full(len(rows), np.inf)
        for alpha in _mse_alphas()[::-1]:
            scale = np.where(absmax > 0, absmax * alpha / E4M3_MAX, 1.0).astype(np.float32)
            err = np.sum((rows - fake_quantize(rows, scale[:, None])) ** 2, axis=1)
            better = err < best_err
            best = np.where(better, scale, best)
            best_err = np.where(better, err, best_err)
    return best if axis is not None else best.reshape(())


# ---------------------------------------------------------------- calibration statistics


class _Batches:
    """A CalibrationDataReader over given batches."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _first_batch(reader: CalibrationReader) -> _Batches:
    reader.rewind()
    first = reader.get_next()
    reader.rewind()
    assert first is not None  # calibration_reader refuses empty data
    return _Batches([first])


def abs_histograms(
    model: Path, reader: CalibrationReader
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Tensor -> (counts, edges, absmax) of |x| over the calibration data, from onnxruntime's
    histogram calibrator fed one batch at a time (it merges histograms and drops the activations
    after each call, so memory stays one batch of activations plus the histograms)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from modelquant import progress

    with tempfile.TemporaryDirectory(prefix="mq-fp8-calib-") as tmp:
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": True, "num_bins": HISTOGRAM_BINS},
        )
        reader.rewind()
        with progress.task("calibrating (fp8)", total=len(reader), unit="batches") as bar:
            while (batch := reader.get_next()) is not None:
                calibrator.collect_data(_Batches([batch]))
                bar.advance()
        reader.rewind()
        histograms = calibrator.collector.histogram_dict
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name, (counts, edges, low, high) in histograms.items():
        absmax = max(abs(float(low)), abs(float(high)))
        if not np.isfinite(absmax):
            raise UserError(
                f"tensor '{name}' reached a non-finite value on the calibration data; FP8 "
                "scales need finite activations (check the model and calibration data)"
            )
        out[name] = (np.asarray(counts), np.asarray(edges), absmax)
    return out


def _scales_key(model: Path, reader: CalibrationReader, cfg: Fp8Config) -> str:
    """Key of the activation scales: how scales are chosen (onnxruntime's calibrator collects
    the statistics), with the model's bytes and the batches fed."""
    method: dict[str, Any] = {"scales": cfg.scales, "bins": HISTOGRAM_BINS}
    if cfg.scales == "percentile":
        method["percentile"] = cfg.percentile
    if cfg.scales == "mse":
        method["candidates"] = MSE_CANDIDATES
    return content_key(model, reader, {"fp8": method, "version": SCALES_VERSION})


def activation_scales(
    model: Path, reader: CalibrationReader, cfg: Fp8Config, cache_dir: Path
) -> tuple[dict[str, float], Path, bool]:
    """Tensor -> FP8 scale for every activation onnxruntime would calibrate, cached by content;
    also the cache file and whether it was reused."""
    cache = cache_dir / "calibration" / f"{_scales_key(model, reader, cfg)}.fp8.json"
    if cache.is_file():
        return {k: float(v) for k, v in json.loads(cache.read_text()).items()}, cache, True
    scales = {
        name: scale_from_histogram(counts, edges, absmax, cfg.scales, cfg.percentile)
        for name, (counts, edges, absmax) in abs_histograms(model, reader).items()
    }
    from modelquant.pipeline.artifacts import atomic_target

    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(cache) as tmp:  # Ctrl-C while saving leaves no partial file
        tmp.write_text(json.dumps(scales, sort_keys=True))
    return scales, cache, False


# ---------------------------------------------------------------- the graph


def _channel_axis(node: Any, rank: int) -> int | None:
    """The output-channel axis of a node's weight (input 1), None where it has none."""
    if rank < 2:
        return None
    if node.op_type == "Conv":
        return 0  # (out, in/groups, k...)
    if node.op_type == "ConvTranspose":
        return 1  # (in, out/groups, k...)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None


def _bias_input(node: Any, index: int) -> bool:
    """onnxruntime keeps the bias of an FP8 Conv/Gemm in float (a Cast), never as a weight."""
    return index == 2 and node.op_type in ("Conv", "ConvTranspose", "Gemm")


def weight_overrides(
    graph: Any, cfg: Fp8Config, per_channel_of: dict[str, bool]
) -> dict[str, list[dict[str, Any]]]:
    """TensorQuantOverrides (scale + zero point, and the axis when per channel) for every float
    initializer a node reads, biases aside: those onnxruntime quantizes take these scales, the
    rest are ignored. `per_channel_of`: node name -> a layer rule's per_channel."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    f8 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN)
    zero = np.array(0, dtype=f8)
    floats = {
        t.name: t
        for t in graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    method = "mse" if cfg.scales == "mse" else "absmax"
    out: dict[str, list[dict[str, Any]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if index == 0 or name not in floats or name in out or _bias_input(node, index):
                continue
            data = numpy_helper.to_array(floats[name])
            per_channel = per_channel_of.get(node.name, cfg.per_channel)
            axis = _channel_axis(node, data.ndim) if per_channel and index == 1 else None
            scales = weight_scales(data, method, axis)
            if axis is None:
                out[name] = [{"scale": np.asarray(scales, np.float32), "zero_point": zero}]
            else:
                out[name] = [
                    {"scale": np.asarray(s, np.float32), "zero_point": zero}
                    | ({"axis": axis} if i == 0 else {})
                    for i, s in enumerate(scales)
                ]
    return out


def raise_opset(source: Path, folder: Path) -> tuple[Path, int]:
    """`source`, or a copy converted to opset 19 (onnx.version_converter) when its opset is
    older; and the opset it had. A model the converter cannot raise is bad input."""
    import onnx

    imports = onnx.load(str(source), load_external_data=False).opset_import
    opset = next((o.version for o in imports if o.domain in ("", "ai.onnx")), 0)
    if opset >= OPSET:
        return source, opset
    try:
        converted = onnx.version_converter.convert_version(onnx.load(str(source)), OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises many types; all mean "cannot convert"
        raise UserError(
            f"fp8 needs ONNX opset {OPSET} or later and onnx.version_converter could not raise "
            f"this model from opset {opset} ({str(exc).splitlines()[0][:200]}); export it with "
            f"`export: {{opset: {OPSET}}}` or later"
        ) from exc
    target = folder / f"opset{OPSET}.onnx"
    onnx.save(converted, str(target))
    return target, opset


def move_activations_behind_fp8(path: Path) -> int:
    """Rewrite `path` so that each Relu/Clip feeding only an FP8 QuantizeLinear (whose output
    feeds only DequantizeLinears) runs after those DequantizeLinears instead: the same values
    (exactly, for Relu and a zero point of 0), and no onnxruntime rule can fuse it away.
    Returns how many were moved."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    zero_types = {t.name: t.data_type for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    moved = 0
    for act in [n for n in graph.node if n.op_type in _REMOVABLE]:
        consumers = _consumers(graph)
        users = consumers.get(act.output[0], [])
        if len(users) != 1 or act.output[0] in outputs:
            continue
        q = users[0]
        if (
            q.op_type != "QuantizeLinear"
            or len(q.input) < 3
            or zero_types.get(q.input[2]) not in FLOAT8_TYPES
            or q.output[0] in outputs
        ):
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        q.input[0] = act.input[0]
        graph.node.remove(act)
        for i, dq in enumerate(dqs):
            copy = onnx.NodeProto()
            copy.CopyFrom(act)
            if i:
                copy.name = f"{act.name}_{i}"
            before = f"{dq.output[0]}_before_{act.op_type}"
            copy.input[0] = before
            copy.output[0] = dq.output[0]  # consumers and graph outputs keep their names
            dq.output[0] = before
            position = next(k for k, n in enumerate(graph.node) if before in n.output)
            graph.node.insert(position + 1, copy)
        moved += 1
    if moved:
        onnx.save(model, str(path))
    return moved


def _consumers(graph: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def float8_initializers(path: Path) -> int:
    """How many FLOAT8 initializers the ONNX file at `path` holds (0: not an FP8 model)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(1 for t in graph.initializer if t.data_type in FLOAT8_TYPES)


def applied(node: Any, model: Any, weights: set[str]) -> bool:
    """A node got fp8 when each weight it read (an initializer input after the first, biases
    aside) is now produced by a DequantizeLinear of a FLOAT8E4M3FN tensor; nodes without
    weights have nothing to check."""
    wanted = [
        name
        for i, name in enumerate(node.input)
        if i > 0 and name in weights and not _bias_input(node, i)
    ]
    if not wanted:
        return True
    after = next((n for n in model.graph.node if n.name == node.name), None)
    if after is None:
        return False
    producer = {o: n for n in model.graph.node for o in n.output}
    types = {t.name: t.data_type for t in model.graph.initializer}
    for i in range(1, len(node.input)):
        if node.input[i] not in wanted or i >= len(after.input):
            continue
        dq = producer.get(after.input[i])
        if dq is None or dq.op_type != "DequantizeLinear":
            return False
        if types.get(dq.input[0]) != FLOAT8E4M3FN:
            return False
    return True


# ---------------------------------------------------------------- the handler


@register_scheme(
    "fp8",
    precision="fp8",
    config=Fp8Config,
    phase=PHASE_QDQ,
    applied=applied,
    layer_keys=frozenset({"per_channel"}),
)
def quantize(
    source: Path, out: Path, plan: QuantPlan[Fp8Config], ctx: StageContext
) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    cfg = plan.config
    per_channel_of = {n: s.per_channel for n, s in plan.layers.items() if s.per_channel is not None}
    if per_channel_of and cfg.scales == "ort":
        raise UserError(
            "quantize overrides set per_channel for fp8 layers, which fp8.scales: ort cannot "
            "honour; use another fp8.scales or drop per_channel from those rules"
        )
    calibration: dict[str, Any] = {"scales": cfg.scales}
    if cfg.scales == "percentile":
        calibration["percentile"] = cfg.percentile
    with tempfile.TemporaryDirectory(prefix="mq-fp8-") as tmp:
        model, opset = raise_opset(source, Path(tmp))
        raised = model != source
        reader = calibration_reader(model, CalibrationConfig(samples=cfg.samples), ctx)
        calibration.update(samples=reader.samples, batch_size=reader.batch_size)
        extra: dict[str, Any] = {"QDQKeepRemovableActivations": True}
        ort_reader: Any = reader
        if cfg.scales != "ort":
            scales, cache, hit = activation_scales(model, reader, cfg, ctx.cache_dir)
            zero = np.array(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(FLOAT8E4M3FN))
            overrides = {
                name: [{"scale": np.asarray(s, np.float32), "zero_point": zero}]
                for name, s in scales.items()
            }
            overrides.update(weight_overrides(onnx.load(str(model)).graph, cfg, per_channel_of))
            extra["TensorQuantOverrides"] = overrides
            # Every tensor onnxruntime calibrates has its scale above; its own (required)
            # Distribution pass only has to run, so it gets one batch.
            ort_reader = _first_batch(reader)
            calibration.update(
                cache="reused" if hit else "computed",
                cache_file=str(cache.relative_to(ctx.cache_dir.parent)),
            )
        quantize_static(
            str(model),
            str(out),
            ort_reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QFLOAT8E4M3FN,
            weight_type=QuantType.QFLOAT8E4M3FN,
            per_channel=cfg.per_channel,
            nodes_to_exclude=list(plan.kept_float),
            nodes_to_quantize=list(plan.only) if plan.only is not None else None,
            calibrate_method=CalibrationMethod.Distribution,
            extra_options=extra,
        )
    moved = move_activations_behind_fp8(out)
    details: dict[str, Any] = {
        "format": "qdq",
        "activations": "float8e4m3fn",
        "weights": "float8e4m3fn",
        "per_channel": cfg.per_channel,
        "calibration": calibration,
        "opset": {"from": opset, "to": OPSET} if raised else opset,
        "activations_moved": moved,
    }
    if per_channel_of:
        calibration["layer_settings"] = {n: {"per_channel": v} for n, v in per_channel_of.items()}
    return details
