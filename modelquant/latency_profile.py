"""Latency explained per op: baseline and compressed profiled with onnxruntime's own profiler,
time by op type and by node as onnxruntime ran them (after its graph fusions), the known causes
of a slowdown named with their numbers, and one line of advice."""

from __future__ import annotations

import bisect
import json
import platform
import re
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

    from modelquant.data import Dataset

LATENCY_FILE = "latency.json"
SCHEMA_VERSION = 1
TOP_NODES = 10
MIN_SHARE = 0.05
"""A cause is named only when its ops take at least this share of the compressed run's kernel
time (below it, fixing the cause cannot change much)."""

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "MultiHeadAttention", "LSTM", "GRU"}
)
"""Ops whose Q/DQ pairs onnxruntime fuses into an integer kernel (QLinearConv, QGemm, ...)."""
PASS_THROUGH_OPS = frozenset(
    {
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Relu",
        "Clip",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Gather",
        "Slice",
        "Split",
        "Concat",
        "Resize",
        "Identity",
        "Pad",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
        "ArgMax",
        "Shape",
    }
)
"""Ops that move or select 8-bit values (or that onnxruntime folds away): Q/DQ around them cost
nothing worth naming. Every other op between a DequantizeLinear and a QuantizeLinear is an
elementwise or normalising op with no fast integer kernel (Erf, Div, Mul, Add, Softmax, ...)."""
CONV_RUNTIME_OPS = frozenset(
    {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"}
)
INT8_RUNTIME_OPS = frozenset(
    {
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "ConvInteger",
        "QAttention",
        "DynamicQuantizeLSTM",
    }
)
"""onnxruntime's 8-bit compute kernels: the ones VNNI speeds up."""
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
ARM_DOT_FLAGS = ("asimddp", "i8mm")

CONV_CHANNEL_ALIGN = 4
"""MLAS's direct 8-bit convolution kernel (`MlasConvSymPackWSize`, onnxruntime/core/mlas/lib/
convsym.cpp) takes a convolution only when its input channels are a multiple of 4 on x86
(`KernelInputChannelAlignment`); on Arm64 it wants at least 64. Any other QLinearConv runs as
im2col plus an 8-bit GEMM whose inner dimension is only C_in x kh x kw values (9 for a 3x3 kernel
on one channel), so it gains little over float and often loses; the float kernel has a direct
path for such first layers (NCHW input to NCHWc output)."""
ARM_CONV_MIN_CHANNELS = 64


CauseKind = Literal["qdq_unfused", "cast", "few_input_channels", "conv_integer", "no_vnni"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpTypeTime(_Doc):
    op_type: str = Field(description="The op type onnxruntime ran (after its fusions).")
    us: float = Field(description="Kernel microseconds per run (each node's median), summed.")
    share: float = Field(description="Share of the run's kernel time (0-1).")
    nodes: int = Field(description="Nodes of this op type in the optimized graph.")


class NodeTime(_Doc):
    node: str = Field(description="The node's name in onnxruntime's optimized graph.")
    op_type: str = Field(description="The op type onnxruntime ran.")
    us: float = Field(description="Median kernel microseconds per run.")
    share: float = Field(description="Share of the run's kernel time (0-1).")


class ModelProfile(_Doc):
    model: str = Field(description="The ONNX file profiled (name).")
    runs: int = Field(description="Profiled runs averaged (after the warm-up runs).")
    kernel_us: float = Field(description="Every node's median kernel microseconds per run, summed.")
    op_types: list[OpTypeTime] = Field(
        default_factory=list, description="Time per op type, most first."
    )
    top_nodes: list[NodeTime] = Field(
        default_factory=list, description="The nodes that took most time, most first."
    )

    def us(self, op_types: Collection[str]) -> float:
        """Kernel microseconds per run of these op types."""
        return sum(o.us for o in self.op_types if o.op_type in op_types)


class OpComparison(_Doc):
    op_type: str = Field(description="An op type either model ran.")
    baseline_us: float = Field(description="Baseline kernel microseconds per run (0: none).")
    compressed_us: float = Field(description="Compressed kernel microseconds per run (0: none).")
    compressed_share: float = Field(description="Share of the compressed run's kernel time.")


class Cause(_Doc):
    kind: CauseKind = Field(description="Which known cause of a slowdown this is.")
    text: str = Field(description="The cause in one sentence, with its numbers.")
    share: float = Field(description="Share of the compressed run's kernel time it concerns.")
    advice: str = Field(description="What to try about it (not measured).")
    nodes: list[str] = Field(default_factory=list, description="The nodes concerned (file names).")


class BatchLatency(_Doc):
    batch_size: int = Field(description="Samples per run.")
    speedup: float | None = Field(
        None, description="Baseline / compressed median latency, timed without the profiler."
    )
    speedup_ci95: tuple[float, float] | None = Field(
        None, description="95 % interval of the speedup (block bootstrap)."
    )
    baseline: ModelProfile | None = Field(None, description="The baseline's profile.")
    compressed: ModelProfile | None = Field(None, description="The compressed model's profile.")
    op_types: list[OpComparison] = Field(
        default_factory=list, description="Every op type of both profiles, compressed time first."
    )
    causes: list[Cause] = Field(
        default_factory=list,
        description="Known causes of the compressed model's time, biggest first.",
    )
    advice: str = Field("", description="One line: the speedup, the main cause, what to try.")
    skipped: str | None = Field(None, description="Why this batch size was not profiled.")

    @property
    def slower(self) -> bool:
        return self.speedup is not None and self.speedup < 1


class LatencyProfile(_Doc):
    schema_version: int = Field(SCHEMA_VERSION, description="Version of this document's shape.")
    recipe: str = Field("", description="The recipe's name.")
    baseline: str = Field(description="The baseline ONNX file (name).")
    compressed: str = Field(description="The compressed ONNX file (name).")
    label: str = Field(
        "the compressed model", description="What the advice calls the compressed model (INT8)."
    )
    backend: Literal["cpu"] = Field("cpu", description="Where both were profiled.")
    threads: int | None = Field(None, description="Intra-op threads of the profiled sessions.")
    cpu_flags: list[str] = Field(
        default_factory=list, description="The CPU's instruction-set flags that decide INT8 speed."
    )
    batches: list[BatchLatency] = Field(
        default_factory=list, description="One entry per batch size profiled."
    )
    advice: str = Field("", description="The advice line of the slowest batch size.")
    note: str = Field(
        "Times are onnxruntime's profiler's kernel times (microsecond resolution, its own cost "
        "per node included, so many small nodes weigh more than in an unprofiled run); the "
        "speedup is timed without the profiler.",
        description="How to read the numbers.",
    )

    def worst(self) -> BatchLatency | None:
        """The profiled batch size with the lowest speedup (None: none was profiled)."""
        ran = [b for b in self.batches if b.compressed is not None]
        timed = [b for b in ran if b.speedup is not None]
        if timed:
            return min(timed, key=lambda b: b.speedup or 0.0)
        return ran[0] if ran else None


# --- profiling ---------------------------------------------------------------------------------


class NotProfiled(Exception):
    """A model could not be profiled at a batch size (a fixed batch); the message says why."""


@dataclass
class _RawProfile:
    """Per node: op type and median kernel microseconds per run over the kept runs (medians: the
    machine is shared, and one preempted run must not make a node look slow); `order` is the
    nodes in execution order."""

    runs: int
    nodes: dict[str, tuple[str, float]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def _parse(events: list[dict[str, Any]], warmup: int) -> _RawProfile:
    """Node kernel times of the runs after the first `warmup` ones (the profile covers every run
    since the session opened), as each node's median per run."""
    import numpy as np

    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup:]
    starts = [start for start, _ in runs]
    raw = _RawProfile(runs=len(runs))
    per_run: dict[str, np.ndarray] = {}
    ops: dict[str, str] = {}
    first_run: list[tuple[int, str]] = []
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > runs[i][1]:
            continue  # a warm-up run
        node = name.removesuffix("_kernel_time")
        if node not in per_run:
            per_run[node] = np.zeros(len(runs))
        per_run[node][i] += float(e["dur"])
        ops[node] = str(e.get("args", {}).get("op_name", "?"))
        if i == 0:
            first_run.append((e["ts"], node))
    raw.nodes = {node: (ops[node], float(np.median(us))) for node, us in per_run.items()}
    raw.order = [node for _, node in sorted(first_run)]
    return raw


def _summarize(model: str, raw: _RawProfile, top: int = TOP_NODES) -> ModelProfile:
    total = sum(us for _, us in raw.nodes.values())
    per_op: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    for op, us in raw.nodes.values():
        per_op[op] += us
        count[op] += 1

    def share(us: float) -> float:
        return us / total if total > 0 else 0.0

    op_types = [
        OpTypeTime(op_type=op, us=us, share=share(us), nodes=count[op])
        for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])
    ]
    nodes = sorted(raw.nodes.items(), key=lambda kv: -kv[1][1])[:top]
    top_nodes = [
        NodeTime(node=name, op_type=op, us=us, share=share(us)) for name, (op, us) in nodes
    ]
    return ModelProfile(
        model=model, runs=raw.runs, kernel_us=total, op_types=op_types, top_nodes=top_nodes
    )


def profile_model(
    path: Path,
    feeds: Callable[[Any, int], dict[str, np.ndarray]],
    batch_size: int,
    threads: int | None,
    *,
    warmup: int = 3,
    runs: int = 20,
    max_seconds: float = 0.25,
) -> tuple[ModelProfile, _RawProfile]:
    """Profile `path` on the CPU EP with the timed sessions' options: `warmup` runs, then up to
    `runs` profiled runs (at least 2) or until `max_seconds` have passed. The profiler's file
    goes into a temporary folder, removed after reading."""
    import onnxruntime as ort

    from modelquant.backends.bench import fixed_batch
    from modelquant.backends.cpu import CpuBackend, session_options

    with tempfile.TemporaryDirectory(prefix="modelquant-profile-") as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(
            str(path), options, providers=[CpuBackend.execution_provider]
        )
        fixed = fixed_batch(session)
        if fixed is not None and fixed != batch_size:
            session.end_profiling()
            raise NotProfiled(f"{path.name} is fixed to batch {fixed}")
        feed = feeds(session, batch_size)
        for _ in range(warmup):
            session.run(None, feed)
        done, start = 0, time.perf_counter()
        while done < runs and (done < 2 or time.perf_counter() - start < max_seconds):
            session.run(None, feed)
            done += 1
        profile_file = Path(session.end_profiling())
        events = json.loads(profile_file.read_text())
    raw = _parse(events, warmup)
    return _summarize(path.name, raw), raw


# --- what the compressed file's graph says ------------------------------------------------------


@dataclass
class Conv:
    """A quantized convolution of the file: its name, input channels per group, kernel size."""

    name: str
    channels: int
    kernel: int
    group: int
    op_type: str


@dataclass
class GraphFacts:
    """What the compressed file holds that explains latency."""

    wrapped: dict[str, str] = field(default_factory=dict)
    """Node name -> op type of every op (not a compute op, not a pass-through) that sits between
    a DequantizeLinear and a QuantizeLinear."""
    convs: list[Conv] = field(default_factory=list)
    """Every convolution, in graph order (quantized or not: `op_type` says)."""
    quantized_convs: set[str] = field(default_factory=set)
    conv_integer: list[str] = field(default_factory=list)
    float16: bool = False


def _initializer_dims(model: Any) -> dict[str, list[int]]:
    return {init.name: list(init.dims) for init in model.graph.initializer}


def _reach(start: list[Any], step: Callable[[Any], list[Any]], stop: str) -> set[int]:
    """Ids of the nodes reached from `start` (not included) through `step`, not going past a
    node of op type `stop` (nor into it)."""
    seen: set[int] = set()
    todo = [n for s in start for n in step(s)]
    while todo:
        node = todo.pop()
        if id(node) in seen or node.op_type == stop:
            continue
        seen.add(id(node))
        todo.extend(step(node))
    return seen


def graph_facts(path: Path) -> GraphFacts:
    """Read the compressed file's graph (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    dims = _initializer_dims(model)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    facts = GraphFacts()

    def from_dq(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def weight_dims(name: str) -> list[int] | None:
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            name = node.input[0]
        return dims.get(name)

    for node in graph.node:
        op = node.op_type
        if op in ("Conv", "QLinearConv", "ConvInteger"):
            w_index = 3 if op == "QLinearConv" else 1
            w = weight_dims(node.input[w_index]) if len(node.input) > w_index else None
            group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
            if w is not None and len(w) >= 3:
                kernel = 1
                for d in w[2:]:
                    kernel *= d
                facts.convs.append(Conv(node.name, w[1], kernel, group, op))
            if op != "Conv" or (node.input and from_dq(node.input[0])):
                facts.quantized_convs.add(node.name)
            if op == "ConvInteger":
                facts.conv_integer.append(node.name)
    # A float island: ops downstream of an activation's DequantizeLinear (not through a
    # QuantizeLinear) and upstream of a QuantizeLinear (not through a DequantizeLinear). The
    # quantizer wraps the ops it quantizes (Add, Mul) and leaves the others (Div, Erf) float
    # between two pairs; either way each value crosses Q/DQ at run time.
    after_dq = _reach(
        [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in dims],
        lambda n: [c for out in n.output for c in consumers[out]],
        stop="QuantizeLinear",
    )
    before_q = _reach(
        [n for n in graph.node if n.op_type == "QuantizeLinear"],
        lambda n: [producer[i] for i in n.input if i in producer],
        stop="DequantizeLinear",
    )
    for node in graph.node:
        op = node.op_type
        if op in QDQ_OPS or op in COMPUTE_OPS or op in PASS_THROUGH_OPS:
            continue
        if id(node) in after_dq and id(node) in before_q:
            facts.wrapped[node.name] = op
    float16 = onnx.TensorProto.FLOAT16
    facts.float16 = any(init.data_type == float16 for init in graph.initializer) or any(
        v.type.tensor_type.elem_type == float16 for v in [*graph.value_info, *graph.output]
    )
    return facts


# --- causes -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"_token_\d+$")


def file_node(runtime_name: str) -> str:
    """The file's node name behind a node onnxruntime renamed while fusing ("fused X",
    "X_token_3")."""
    return _TOKEN.sub("", runtime_name.removeprefix("fused "))


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _us(us: float) -> str:
    return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"


def _names(ops: Sequence[str]) -> str:
    return "/".join(sorted(set(ops)))


def _vnni(flags: Sequence[str]) -> bool:
    machine = platform.machine().lower()
    wanted = ARM_DOT_FLAGS if machine in ("aarch64", "arm64") else VNNI_FLAGS
    return any(f in flags for f in wanted)


def _qdq_cause(comp: ModelProfile, raw: _RawProfile, facts: GraphFacts) -> Cause | None:
    total = comp.kernel_us or 1.0
    qdq = comp.us(QDQ_OPS) / total
    wrapped_runtime: dict[str, float] = defaultdict(float)  # runtime op type -> us per run
    for name, (op, us) in raw.nodes.items():
        if file_node(name) in facts.wrapped and op not in QDQ_OPS:
            wrapped_runtime[op] += us
    around = sum(wrapped_runtime.values()) / total
    if not facts.wrapped:
        if qdq < 0.2:
            return None  # the input's Q and the output's DQ: unavoidable, and small
        text = f"{_pct(qdq)} of the time is QuantizeLinear/DequantizeLinear"
        return Cause(
            kind="qdq_unfused",
            text=text,
            share=qdq,
            advice="try mode: dynamic (one quantization per layer input, no Q/DQ pairs)",
        )
    share = qdq + around
    if share < MIN_SHARE:
        return None
    ops = _names(list(facts.wrapped.values()))
    ran_as = sorted(op for op in wrapped_runtime if op not in facts.wrapped.values())
    as_text = f"; run as {', '.join(ran_as)}" if ran_as else ""
    text = (
        f"{_pct(share)} of the time is QuantizeLinear/DequantizeLinear ({_pct(qdq)}) around "
        f"{ops} ({_pct(around)}{as_text}), which have no fast integer kernel"
    )
    if facts.convs:
        first = sorted(set(facts.wrapped.values()))[0]
        advice = (
            f"keep {ops} in float (overrides: [{{match: 'type:{first}', precision: fp32}}, ...])"
        )
    else:
        advice = "try mode: dynamic"
    return Cause(
        kind="qdq_unfused", text=text, share=share, advice=advice, nodes=sorted(facts.wrapped)
    )


def _cast_cause(base: ModelProfile, comp: ModelProfile, facts: GraphFacts) -> Cause | None:
    total = comp.kernel_us or 1.0
    us = comp.us({"Cast"})
    share = us / total
    if share < MIN_SHARE or us <= base.us({"Cast"}):
        return None
    casts = next((o.nodes for o in comp.op_types if o.op_type == "Cast"), 0)
    advice = (
        "on the CPU use int8 or keep float32: float16 runs as casts around float32 kernels here"
        if facts.float16
        else "find what inserts the casts (a precision change between layers)"
    )
    return Cause(
        kind="cast",
        text=f"{_pct(share)} of the time is Cast ({casts} node(s), {_us(us)} per run)",
        share=share,
        advice=advice,
    )


def _conv_times(raw: _RawProfile) -> list[tuple[str, str, float]]:
    """(runtime name, op type, us per run) of every convolution, in execution order."""
    return [
        (name, raw.nodes[name][0], raw.nodes[name][1])
        for name in raw.order
        if raw.nodes[name][0] in CONV_RUNTIME_OPS
    ]


def _few_channel_causes(
    base_raw: _RawProfile, comp: ModelProfile, comp_raw: _RawProfile, facts: GraphFacts
) -> list[Cause]:
    arm = platform.machine().lower() in ("aarch64", "arm64")
    total = comp.kernel_us or 1.0
    base_convs, comp_convs = _conv_times(base_raw), _conv_times(comp_raw)
    # Convolutions keep their graph order through quantization and fusion: the k-th of each
    # model's runs is the same layer when both ran as many.
    matched = len(base_convs) == len(comp_convs) == len(facts.convs)
    causes = []
    for k, conv in enumerate(facts.convs):
        if conv.name not in facts.quantized_convs or conv.group != 1:
            continue
        if conv.op_type == "ConvInteger":
            continue  # no MLAS 8-bit convolution kernel at all: the ConvInteger cause
        few = conv.channels < ARM_CONV_MIN_CHANNELS if arm else conv.channels % CONV_CHANNEL_ALIGN
        if not few:
            continue
        comp_us = next((us for n, _, us in comp_convs if file_node(n) == conv.name), None)
        if comp_us is None and matched:
            comp_us = comp_convs[k][2]
        if comp_us is None:
            continue
        share = comp_us / total
        want = "at least 64" if arm else f"a multiple of {CONV_CHANNEL_ALIGN}"
        text = (
            f"the convolution {conv.name} has {conv.channels} input channel(s) (the 8-bit "
            f"kernel wants {want}), so it runs as im2col + an 8-bit GEMM over "
            f"{conv.channels * conv.kernel} values: {_us(comp_us)} per run"
        )
        weight = f"{_pct(share)} of the time"
        if matched:
            base_us = base_convs[k][2]
            lost = (comp_us - base_us) / total
            if lost < MIN_SHARE:
                continue  # what float would win back is too small to be a cause
            text += f" vs {_us(base_us)} in float"
            weight += f", {_pct(lost)} lost"
        elif share < 2 * MIN_SHARE:
            continue  # not compared with float: named only when it weighs
        causes.append(
            Cause(
                kind="few_input_channels",
                text=f"{text} ({weight})",
                share=share,
                advice=(
                    "keep that convolution in float (overrides: "
                    f"[{{match: '{conv.name}', precision: fp32}}])"
                ),
                nodes=[conv.name],
            )
        )
    return causes


def _conv_integer_cause(base: ModelProfile, comp: ModelProfile, facts: GraphFacts) -> Cause | None:
    us = comp.us({"ConvInteger"})
    share = us / (comp.kernel_us or 1.0)
    if not facts.conv_integer or share < MIN_SHARE:
        return None
    float_us = base.us(CONV_RUNTIME_OPS)
    return Cause(
        kind="conv_integer",
        text=(
            f"{_pct(share)} of the time is ConvInteger (dynamic quantization of "
            f"{len(facts.conv_integer)} convolution(s)): {_us(us)} per run vs {_us(float_us)} "
            "for the float convolutions; onnxruntime has no fast kernel for it on the CPU"
        ),
        share=share,
        advice="try mode: static (QLinearConv has a fast 8-bit kernel)",
        nodes=list(facts.conv_integer),
    )


def _no_vnni_cause(comp: ModelProfile, flags: Sequence[str]) -> Cause | None:
    int8 = [o for o in comp.op_types if o.op_type in INT8_RUNTIME_OPS]
    if not int8 or _vnni(flags):
        return None
    share = sum(o.share for o in int8)
    arm = platform.machine().lower() in ("aarch64", "arm64")
    wanted = "asimddp or i8mm" if arm else "avx512_vnni or avx_vnni"
    return Cause(
        kind="no_vnni",
        text=(
            f"this CPU has no 8-bit dot-product instructions ({wanted}); its 8-bit kernels "
            f"({_names([o.op_type for o in int8])}, {_pct(share)} of the time) gain little "
            "over float"
        ),
        share=share,
        advice=f"run INT8 on a CPU with {wanted}, or keep float32 on this one",
    )


def causes_of(
    base: ModelProfile,
    base_raw: _RawProfile,
    comp: ModelProfile,
    comp_raw: _RawProfile,
    facts: GraphFacts,
    cpu_flags: Sequence[str],
) -> list[Cause]:
    """Every known cause found, biggest share first; the missing VNNI last (it is the machine,
    not the model)."""
    found = [
        _qdq_cause(comp, comp_raw, facts),
        _cast_cause(base, comp, facts),
        *_few_channel_causes(base_raw, comp, comp_raw, facts),
        _conv_integer_cause(base, comp, facts),
    ]
    causes = sorted((c for c in found if c is not None), key=lambda c: -c.share)
    machine = _no_vnni_cause(comp, cpu_flags)
    return causes + ([machine] if machine is not None else [])


def compare_ops(base: ModelProfile, comp: ModelProfile) -> list[OpComparison]:
    """Every op type of both profiles, the compressed model's costliest first."""
    b = {o.op_type: o.us for o in base.op_types}
    c = {o.op_type: o for o in comp.op_types}
    rows = [
        OpComparison(
            op_type=op,
            baseline_us=b.get(op, 0.0),
            compressed_us=c[op].us if op in c else 0.0,
            compressed_share=c[op].share if op in c else 0.0,
        )
        for op in dict.fromkeys([*c, *b])
    ]
    return sorted(rows, key=lambda r: (-r.compressed_us, -r.baseline_us))


# --- advice -------------------------------------------------------------------------------------


def _settings_text(settings: dict[str, Any], winner: dict[str, Any]) -> str:
    """A candidate's settings as a recipe would say them: its mode, then up to two settings that
    differ from the winner's."""
    parts = [f"mode: {settings['mode']}"] if "mode" in settings else []
    for key, value in settings.items():
        if key == "mode" or winner.get(key) == value or len(parts) >= 3:
            continue
        shown = str(value).lower() if isinstance(value, bool) else value
        if isinstance(value, list):
            shown = "[" + ", ".join(map(str, value)) + "]"
        parts.append(f"{key}: {shown}")
    return ", ".join(parts)


def candidate_advice(auto: Mapping[str, Any] | None, batch_size: int) -> str | None:
    """'try <settings> (candidate <name>), measured <x>x': the fastest candidate within the
    budget at this batch size that is not the one in hand, when it measured faster than the one
    in hand (same timing); None otherwise."""
    if not auto:
        return None
    bs = str(batch_size)
    candidates = [c for c in auto.get("candidates", []) if isinstance(c, dict)]
    winner_name = auto.get("winner")
    winner = next((c for c in candidates if c.get("name") == winner_name), None)
    others = [
        c
        for c in candidates
        if c.get("name") != winner_name
        and c.get("within_budget")
        and not c.get("error")
        and isinstance(c.get("speedup"), dict)
        and c["speedup"].get(bs) is not None
    ]
    if not others:
        return None
    best = max(others, key=lambda c: c["speedup"][bs])
    in_hand = (winner or {}).get("speedup", {}).get(bs) if winner else None
    if in_hand is not None and best["speedup"][bs] <= in_hand:
        return None
    settings = _settings_text(best.get("settings", {}), (winner or {}).get("settings", {}))
    said = f"{settings} (candidate {best['name']})" if settings else f"candidate {best['name']}"
    return f"try {said}, measured {best['speedup'][bs]:.2f}x"


def advice(batch: BatchLatency, label: str, auto: Mapping[str, Any] | None = None) -> str:
    """One line: '<label> is 0.70x at batch 1: <main cause>; try ..., measured 0.97x'."""
    bs = batch.batch_size
    if batch.speedup is None:
        head = f"{label} at batch {bs} (not timed)"
    else:
        head = f"{label} is {batch.speedup:.2f}x at batch {bs}"
    if batch.compressed is None:
        return f"{head}: not profiled ({batch.skipped or 'no profile'})"
    if batch.speedup is not None and batch.speedup >= 1:
        if not batch.causes:
            top = batch.compressed.op_types[:1]
            most = f"; most time in {top[0].op_type} ({_pct(top[0].share)})" if top else ""
            return f"{head}: not slower here{most}"
        cause = batch.causes[0]
        return f"{head}: not slower here, yet {cause.text}; {cause.advice}"
    if batch.causes:
        reason = batch.causes[0].text
    else:
        costly = [f"{o.op_type} {_pct(o.share)}" for o in batch.compressed.op_types[:3]]
        reason = "no known cause found; most time in " + ", ".join(costly)
    tried = candidate_advice(auto, bs) if batch.slower or batch.speedup is None else None
    if tried is None and batch.causes and (batch.slower or batch.speedup is None):
        tried = batch.causes[0].advice
    return f"{head}: {reason}" + (f"; {tried}" if tried else "")


# --- the whole explanation ----------------------------------------------------------------------


def auto_details(stage_details: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last quantize stage's `auto` search (its candidates), if one searched."""
    found = None
    for details in stage_details:
        auto = details.get("auto")
        if isinstance(auto, dict) and auto.get("candidates"):
            found = auto
    return found


def precision_label(stages: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """'INT8' (the last quantize stage's precision, upper case) or 'the compressed model'."""
    label = "the compressed model"
    for name, settings in stages:
        if name == "quantize" and settings.get("precision"):
            label = str(settings["precision"]).upper()
    return label


def explain(
    baseline: Path,
    compressed: Path,
    data: Dataset,
    batch_sizes: Sequence[int],
    *,
    threads: int | None,
    speedups: Mapping[str, Any] | None = None,
    cpu_flags: Sequence[str] | None = None,
    auto: Mapping[str, Any] | None = None,
    label: str = "the compressed model",
    recipe: str = "",
    runs: int = 20,
    max_seconds: float = 0.25,
    log: Callable[[str], None] = lambda _: None,
) -> LatencyProfile:
    """Profile both models at each batch size (fed `data.sample_batch`), compare them op type by
    op type, name the known causes and the advice line.

    `speedups`: batch size (str) -> `Speedup` (or anything with `value` and `ci95`) timed
    without the profiler; `auto`: the quantize stage's `details["auto"]` when it searched.
    Call it after all latency timing: a profiled session must not run among timed ones.
    """
    from modelquant.environment import cpu_description

    flags = list(cpu_flags) if cpu_flags is not None else cpu_description()[1]
    facts = graph_facts(compressed)
    from modelquant.backends.bench import feeds_from

    feeds = feeds_from(data)
    doc = LatencyProfile(
        recipe=recipe,
        baseline=baseline.name,
        compressed=compressed.name,
        label=label,
        threads=threads,
        cpu_flags=flags,
    )
    for bs in batch_sizes:
        speed = (speedups or {}).get(str(bs))
        entry = BatchLatency(
            batch_size=bs,
            speedup=None if speed is None else speed.value,
            speedup_ci95=None if speed is None else tuple(speed.ci95),
        )
        log(f"profiling batch {bs} (baseline, compressed)")
        try:
            base, base_raw = profile_model(
                baseline, feeds, bs, threads, runs=runs, max_seconds=max_seconds
            )
            comp, comp_raw = profile_model(
                compressed, feeds, bs, threads, runs=runs, max_seconds=max_seconds
            )
        except NotProfiled as exc:
            entry.skipped = str(exc)
            entry.advice = advice(entry, label, auto)
            doc.batches.append(entry)
            continue
        entry.baseline, entry.compressed = base, comp
        entry.op_types = compare_ops(base, comp)
        entry.causes = causes_of(base, base_raw, comp, comp_raw, facts, flags)
        entry.advice = advice(entry, label, auto)
        doc.batches.append(entry)
    worst = doc.worst()
    doc.advice = worst.advice if worst is not None else ""
    return doc


# --- the console view ---------------------------------------------------------------------------


def _ms(us: float) -> str:
    from modelquant.report.rows import fmt_ms

    return fmt_ms(us / 1000) if us else "none"


def op_rows(batch: BatchLatency, limit: int | None = 12) -> list[list[str]]:
    """(op type, baseline ms, compressed ms, share of compressed time) rows, costliest first."""
    rows = [
        [
            o.op_type,
            _ms(o.baseline_us),
            _ms(o.compressed_us),
            _pct(o.compressed_share) if o.compressed_us else "none",
        ]
        for o in batch.op_types
    ]
    rows = rows[:limit] if limit else rows
    if batch.baseline is not None and batch.compressed is not None:
        total = [_ms(batch.baseline.kernel_us), _ms(batch.compressed.kernel_us), "100 %"]
        rows.append(["total (kernel time)", *total])
    return rows


def render(doc: LatencyProfile, console: Any, *, nodes: bool = True) -> None:
    """Per batch size: the op-type table, the top nodes, the causes and the advice (rich)."""
    from rich.markup import escape
    from rich.table import Table

    for batch in doc.batches:
        speed = (
            "not timed"
            if batch.speedup is None
            else f"{batch.speedup:.2f}x"
            + (
                f" [{batch.speedup_ci95[0]:.2f}, {batch.speedup_ci95[1]:.2f}]"
                if batch.speedup_ci95
                else ""
            )
        )
        if batch.compressed is None or batch.baseline is None:
            console.print(f"batch {batch.batch_size}: not profiled ({escape(batch.skipped or '')})")
            continue
        console.print(
            f"[bold]batch {batch.batch_size}[/]: speedup {speed} (timed without the profiler); "
            f"ms per run, profiler medians over {batch.baseline.runs} + "
            f"{batch.compressed.runs} runs",
            highlight=False,
            soft_wrap=True,
        )
        table = Table(title="by op type", title_justify="left")
        for col in ("op type", "baseline ms", "compressed ms", "share"):
            table.add_column(col, justify="left" if col == "op type" else "right")
        for row in op_rows(batch):
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        if nodes:
            top = Table(
                title=f"top nodes of {escape(doc.compressed)}, batch {batch.batch_size}",
                title_justify="left",
            )
            for col in ("node (as onnxruntime ran it)", "op type", "ms", "share"):
                top.add_column(col, justify="right" if col in ("ms", "share") else "left")
            for n in batch.compressed.top_nodes[:5]:
                top.add_row(escape(n.node), n.op_type, _ms(n.us), _pct(n.share))
            console.print(top)
        for cause in batch.causes:
            console.print(f"  cause: {escape(cause.text)}", highlight=False, soft_wrap=True)
        style = "yellow" if batch.slower else "green"
        console.print(f"[{style}]{escape(batch.advice)}[/]", highlight=False, soft_wrap=True)
