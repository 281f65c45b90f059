"""The latency profile: onnxruntime's profiler aggregated per op type and node, the known causes
of a slowdown named on models that have them (and not on those that do not), the advice line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelquant import latency_profile as lp
from modelquant.backends import bench
from modelquant.data import Dataset, digits
from tests.tiny_models import build


class GeluMLP(nn.Module):
    """Linear, GELU (opset 17 spells it Div, Erf, Add, Mul, Mul), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _export(module: nn.Module, path: Path) -> Path:
    from modelquant.state import export_onnx

    export_onnx(
        module.eval(),
        {"input": np.zeros((2, 1, 8, 8), np.float32)},
        path,
        opset=17,
    )
    return path


class _Reader:
    """onnxruntime's calibration data reader over a few digits batches."""

    def __init__(self, data: Dataset) -> None:
        self.batches = iter([{"input": b["input"]} for b, _ in data.take(64).batches(16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return digits.load("test")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> tuple[Path, Path]:
    """(float, static QDQ with every op quantized) of the GELU MLP at opset 17."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("mlp")
    fp32 = _export(GeluMLP(), folder / "mlp.onnx")
    int8 = folder / "mlp.int8.onnx"
    quantize_static(
        str(fp32),
        str(int8),
        _Reader(data),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return fp32, int8


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(float, dynamic INT8 with the convolutions quantized: ConvInteger) of the tiny CNN."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("cnn")
    fp32 = _export(build(8, 32), folder / "cnn.onnx")
    dyn = folder / "cnn.dynamic.onnx"
    quantize_dynamic(
        str(fp32), str(dyn), op_types_to_quantize=["Conv", "Gemm"], weight_type=QuantType.QInt8
    )
    return fp32, dyn


def _explain(base: Path, comp: Path, data: Dataset, **kw: Any) -> lp.LatencyProfile:
    kw.setdefault("cpu_flags", ["avx2", "avx512_vnni"])
    return lp.explain(base, comp, data, [4], threads=1, label="INT8", runs=5, **kw)


def test_a_profile_shows_the_ops_onnxruntime_ran_and_shares_add_up(
    mlp: tuple[Path, Path], data: Dataset
) -> None:
    import onnx

    fp32, int8 = mlp
    feeds = bench.feeds_from(data)
    for path in (fp32, int8):
        profile, _ = lp.profile_model(path, feeds, 4, 1, warmup=1, runs=5)
        assert profile.runs == 5 and profile.kernel_us > 0
        assert sum(o.share for o in profile.op_types) == pytest.approx(1.0, abs=1e-6)
        assert sum(o.us for o in profile.op_types) == pytest.approx(profile.kernel_us)
        in_file = {n.op_type for n in onnx.load(str(path)).graph.node}
        # what onnxruntime ran: the file's ops, or what its fusions made of them
        fused = {"Gelu", "FusedGemm", "QGemm", "QLinearAdd", "QLinearMul", "MatMulIntegerToFloat"}
        ran = {o.op_type for o in profile.op_types}
        assert ran <= in_file | fused, ran - in_file
        assert profile.top_nodes[0].us == max(n.us for n in profile.top_nodes)
    float_ops = {o.op_type for o in lp.profile_model(fp32, feeds, 4, 1, runs=3)[0].op_types}
    assert not float_ops & lp.QDQ_OPS


def test_the_graph_names_the_float_ops_between_q_and_dq(mlp: tuple[Path, Path]) -> None:
    fp32, int8 = mlp
    assert lp.graph_facts(fp32).wrapped == {}
    wrapped = set(lp.graph_facts(int8).wrapped.values())
    assert {"Div", "Erf", "Add", "Mul"} <= wrapped
    assert not wrapped & (lp.COMPUTE_OPS | lp.QDQ_OPS)


def test_unfused_qdq_around_gelu_is_the_cause_in_int8_and_not_in_float(
    mlp: tuple[Path, Path], data: Dataset
) -> None:
    fp32, int8 = mlp
    doc = _explain(fp32, int8, data, speedups={"4": _Speed(0.7)})
    batch = doc.batches[0]
    qdq = next(c for c in batch.causes if c.kind == "qdq_unfused")
    assert "QuantizeLinear/DequantizeLinear" in qdq.text and "Erf" in qdq.text
    assert qdq.share >= lp.MIN_SHARE
    # an MLP (no convolution): dynamic quantization has no Q/DQ pairs
    assert batch.advice.startswith("INT8 is 0.70x at batch 4: ")
    assert batch.advice.endswith("; try mode: dynamic")
    assert doc.advice == batch.advice
    same = _explain(fp32, fp32, data)
    assert same.batches[0].causes == []


def test_dynamic_quantization_of_convolutions_is_named(
    cnn: tuple[Path, Path], data: Dataset
) -> None:
    fp32, dyn = cnn
    doc = _explain(fp32, dyn, data, speedups={"4": _Speed(0.3)})
    kinds = [c.kind for c in doc.batches[0].causes]
    assert "conv_integer" in kinds and "qdq_unfused" not in kinds
    assert doc.batches[0].causes[0].kind == "conv_integer"
    assert "try mode: static" in doc.advice


def test_a_cpu_without_vnni_is_named_when_int8_kernels_ran(
    mlp: tuple[Path, Path], data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelquant import environment

    fp32, int8 = mlp
    monkeypatch.setattr(environment, "cpu_description", lambda: ("old cpu", ["avx", "avx2"]))
    monkeypatch.setattr(lp.platform, "machine", lambda: "x86_64")
    doc = lp.explain(fp32, int8, data, [4], threads=1, runs=3)
    causes = doc.batches[0].causes
    assert doc.cpu_flags == ["avx", "avx2"]
    assert causes[-1].kind == "no_vnni" and "avx512_vnni" in causes[-1].text
    monkeypatch.setattr(
        environment, "cpu_description", lambda: ("new cpu", ["avx2", "avx512_vnni"])
    )
    doc = lp.explain(fp32, int8, data, [4], threads=1, runs=3)
    assert "no_vnni" not in [c.kind for c in doc.batches[0].causes]
    no_int8 = lp.explain(fp32, fp32, data, [4], threads=1, runs=3, cpu_flags=["avx2"])
    assert no_int8.batches[0].causes == []


def _raw(convs: list[tuple[str, str, float]]) -> lp._RawProfile:
    raw = lp._RawProfile(runs=10)
    raw.nodes = {name: (op, us) for name, op, us in convs}
    raw.order = [name for name, _, _ in convs]
    return raw


def _profile(raw: lp._RawProfile) -> lp.ModelProfile:
    return lp._summarize("m.onnx", raw)


def test_a_first_convolution_with_one_input_channel_is_named_when_it_lost_time() -> None:
    facts = lp.GraphFacts(
        convs=[lp.Conv("/c0/Conv", 1, 9, 1, "Conv"), lp.Conv("/c1/Conv", 8, 9, 1, "Conv")],
        quantized_convs={"/c0/Conv", "/c1/Conv"},
    )
    base = _raw([("a_nchwc", "Conv", 30.0), ("b_nchwc", "Conv", 400.0)])
    slow = _raw([("/c0/Conv_token_1", "QLinearConv", 100.0), ("/c1/Conv", "QLinearConv", 150.0)])
    (cause,) = lp._few_channel_causes(base, _profile(slow), slow, facts)
    assert cause.kind == "few_input_channels" and cause.nodes == ["/c0/Conv"]
    assert "1 input channel(s)" in cause.text
    assert "100 µs per run vs 30 µs in float (40 % of the time, 28 % lost)" in cause.text
    assert "match: '/c0/Conv', precision: fp32" in cause.advice
    fast = _raw([("/c0/Conv_token_1", "QLinearConv", 20.0), ("/c1/Conv", "QLinearConv", 150.0)])
    assert lp._few_channel_causes(base, _profile(fast), fast, facts) == []
    # slower than in float, but float would win back under 5 % of the run: not a cause
    small = _raw([("/c0/Conv_token_1", "QLinearConv", 40.0), ("/c1/Conv", "QLinearConv", 300.0)])
    assert lp._few_channel_causes(base, _profile(small), small, facts) == []
    four = lp.GraphFacts(convs=[lp.Conv("/c0/Conv", 4, 9, 1, "Conv")], quantized_convs={"/c0/Conv"})
    assert lp._few_channel_causes(base, _profile(slow), slow, four) == []


class _Speed:
    def __init__(self, value: float) -> None:
        self.value, self.ci95 = value, (value * 0.98, value * 1.02)


AUTO = {
    "winner": "static-qdq",
    "candidates": [
        {
            "name": "static-qdq",
            "settings": {"mode": "static", "format": "qdq", "per_channel": True},
            "within_budget": True,
            "speedup": {"1": 0.62, "64": 1.3},
            "error": None,
        },
        {
            "name": "dynamic-per-tensor",
            "settings": {"mode": "dynamic", "per_channel": False},
            "within_budget": True,
            "speedup": {"1": 0.97, "64": 1.7},
            "error": None,
        },
        {
            "name": "fast-but-wrong",
            "settings": {"mode": "static", "per_channel": False},
            "within_budget": False,
            "speedup": {"1": 2.0, "64": 3.0},
            "error": None,
        },
        {"name": "broken", "settings": {"mode": "static"}, "within_budget": True, "error": "x"},
    ],
}


def test_the_advice_quotes_the_fastest_measured_candidate_within_budget() -> None:
    cause = lp.Cause(kind="qdq_unfused", text="60 % of the time is Q/DQ", share=0.6, advice="a")
    batch = lp.BatchLatency(
        batch_size=1, speedup=0.7, compressed=lp.ModelProfile(model="m", runs=1, kernel_us=1.0)
    )
    batch.causes = [cause]
    line = lp.advice(batch, "INT8", AUTO)
    assert line == (
        "INT8 is 0.70x at batch 1: 60 % of the time is Q/DQ; try mode: dynamic, "
        "per_channel: false (candidate dynamic-per-tensor), measured 0.97x"
    )
    assert lp.advice(batch, "INT8", None).endswith("; a")  # no search: the cause's own advice
    slower_alternatives = {**AUTO, "winner": "dynamic-per-tensor"}
    assert "measured" not in lp.advice(batch, "INT8", slower_alternatives)  # nothing faster
    assert lp.candidate_advice(AUTO, 32) is None  # not timed at that batch: no claim


def test_precision_label_and_auto_details_come_from_the_stages() -> None:
    assert lp.precision_label([("export", {}), ("quantize", {"precision": "int8"})]) == "INT8"
    assert lp.precision_label([("prune", {})]) == "the compressed model"
    assert lp.auto_details([{}, {"auto": AUTO}]) is AUTO
    assert lp.auto_details([{"auto": {"candidates": []}}]) is None
