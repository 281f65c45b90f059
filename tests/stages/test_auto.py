"""`quantize: {mode: auto}`: the default for a bare int8 stage, candidates scored and timed, the
fastest within the budget published, every candidate in the report; and the graph preparation
before quantizing (BatchNorm folded, GELU as one op, compute ops only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.stages import auto
from modelquant.stages.auto import Candidate, candidate_settings, choose
from modelquant.stages.quantize import QuantizeConfig

runner = CliRunner()
RECIPE = "tabular-mlp-int8"
FAST = [
    "--set", "evaluate.repeats=5",
    "--set", "evaluate.warmup=0",
    "--set", "evaluate.block=5",
    "--set", "gates.min_speedup={}",
]  # fmt: skip
SEARCH = ["--set", "stages.1.quantize.auto.repeats=4", "--set", "stages.1.quantize.auto.warmup=0"]


def ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def compress(out: Path, *extra: str, search: bool = True) -> tuple[int, dict[str, Any], str]:
    args = [*FAST, *(SEARCH if search else [])]
    result = runner.invoke(app, ["compress", RECIPE, "--out", str(out), *args, *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result.exit_code, report, result.output


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s["details"] for s in report["stages"] if s["name"] == name)


# ---------------------------------------------------------------- settings


def test_a_bare_int8_stage_searches_and_a_pinned_one_does_not() -> None:
    assert QuantizeConfig.model_validate({"precision": "int8"}).mode == "auto"
    assert QuantizeConfig.model_validate({}).mode == "auto"
    for pinned in (
        {"format": "qdq"},
        {"activations": "uint8"},
        {"calibration": {"method": "entropy"}},
        {"op_types": "all"},
        {"accuracy_budget": 0.01},
        {"mode": "static"},
        {"overrides": [{"match": "x", "precision": "w8a16"}]},
    ):
        assert QuantizeConfig.model_validate(pinned).mode != "auto", pinned
    # fp32 rules leave the choice to the search; other precisions never search
    rules = {"overrides": [{"match": "x", "precision": "fp32"}]}
    assert QuantizeConfig.model_validate(rules).mode == "auto"
    assert QuantizeConfig.model_validate({"precision": "fp8"}).mode == "static"


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"mode": "auto", "precision": "fp8"}, "mode auto searches int8 schemes"),
        ({"mode": "auto", "fallback": "fp32"}, "Set `mode: static` for fallback rounds"),
        (
            {"mode": "auto", "overrides": [{"match": "x", "precision": "int8"}]},
            "pin static settings",
        ),
        ({"mode": "static", "auto": {"repeats": 3}}, "settings of mode auto"),
        ({"mode": "auto", "auto": {"candidates": ["fastest"]}}, "candidates"),
    ],
)
def test_auto_settings_that_cannot_work_are_refused(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        QuantizeConfig.model_validate(settings)


def test_candidates_take_the_recipes_settings_and_are_tried_once() -> None:
    tried = dict(candidate_settings(None, {}))
    assert list(tried) == list(auto.CANDIDATES)
    pinned = dict(candidate_settings(None, {"per_channel": False, "weights": "uint8"}))
    # per-tensor candidates are the same as their per-channel ones once per_channel is pinned
    assert "static-per-tensor" not in pinned and "dynamic-per-tensor" not in pinned
    assert all(s["weights"] == "uint8" and s["per_channel"] is False for s in pinned.values())
    # a dynamic candidate takes no static setting
    calibrated = dict(candidate_settings(["dynamic"], {"activations": "int8"}))
    assert calibrated["dynamic"] == {"mode": "dynamic"}


def _cand(name: str, drop: float, **speed: float) -> Candidate:
    return Candidate(
        name, {}, drop=drop, speedup={k.removeprefix("b"): v for k, v in speed.items()}
    )


def test_the_fastest_within_the_budget_wins_and_never_slower_comes_first() -> None:
    candidates = [
        _cand("static", 0.0, b1=0.8, b64=1.7),
        _cand("dynamic", 0.0, b1=1.1, b64=1.9),
        _cand("dynamic-per-tensor", 0.0, b1=1.05, b64=1.2),  # never slower, but slower than dynamic
        _cand("static-s8", 0.0, b1=0.6, b64=3.5),  # faster on average, slower at batch 1
        _cand("qoperator", 0.03, b1=2.0, b64=3.0),  # fastest, out of budget
    ]
    winner, why = choose(candidates, 0.01)
    assert winner.name == "dynamic"
    assert "1.10x at batch 1, 1.90x at batch 64" in why
    assert "the fixed default (static) was 0.80x, 1.70x" in why
    # with nothing within the budget the most accurate is kept, and the reason says so
    winner, why = choose([_cand("a", 0.05, b1=2.0), _cand("b", 0.02, b1=0.5)], 0.01)
    assert winner.name == "b" and "no candidate is within the 1.00 pt budget" in why


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("auto")
    code, report, output = compress(out)
    assert code == 0, output
    return out, report, output


def test_the_report_lists_every_candidate_and_the_winners_reason(
    searched: tuple[Path, dict[str, Any], str],
) -> None:
    out, report, output = searched
    found = stage(report, "quantize")["auto"]
    names = [c["name"] for c in found["candidates"]]
    assert names == list(auto.CANDIDATES)
    for c in found["candidates"]:
        assert c["error"] is None
        assert 0.97 <= c["metric"] <= 1.0 and 0.2 < c["size_ratio"] < 0.35
        assert set(c["speedup"]) == set(c["latency_ms"]) == {"1", "64"}
    assert found["winner"] in names and found["reason"].startswith("fastest of the")
    assert found["budget"] == 0.01 and found["budget_from"] == "gates.max_accuracy_drop"
    assert f"quantize auto: kept {found['winner']}" in output
    # the published model is the winner: DynamicQuantizeLinear if dynamic won, else Q/DQ
    graph = ops(out / "model.int8.onnx")
    dynamic = found["winner_mode"] == "dynamic"
    assert ("DynamicQuantizeLinear" in graph) == dynamic
    assert ("QuantizeLinear" in graph or "QLinearMatMul" in graph) != dynamic
    assert not list(out.glob("**/candidate.*.onnx")), "candidate files are removed"


def test_the_graph_is_prepared_before_quantizing(
    searched: tuple[Path, dict[str, Any], str],
) -> None:
    out, report, _ = searched
    export = stage(report, "export")
    assert export["batchnorm_folded"] == ["layers.2", "layers.5"]
    assert export["opset"] == 20 and "one Gelu op" in export["opset_reason"]
    graph = ops(out / "model.fp32.onnx")
    assert "BatchNormalization" not in graph and graph.count("Gelu") == 2 and "Erf" not in graph


def test_a_stub_timer_decides_which_scheme_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def timed(float_path, candidates, batch_sizes, threads, feeds, cfg, block, float_ms):  # type: ignore[no-untyped-def]
        for c in candidates:
            for bs in batch_sizes:
                c.speedup[str(bs)] = 3.0 if c.name == fastest else 1.5
        return {}

    monkeypatch.setattr(auto, "time_candidates", timed)
    candidates = ["--set", "stages.1.quantize.auto.candidates=[static, dynamic]"]
    for fastest, op in (("static", "QuantizeLinear"), ("dynamic", "DynamicQuantizeLinear")):
        out = tmp_path / fastest
        code, report, output = compress(out, *candidates)
        assert code == 0, output
        assert stage(report, "quantize")["auto"]["winner"] == fastest
        assert op in ops(out / "model.int8.onnx")


def test_the_search_is_cached_and_its_key_holds_the_timing(
    searched: tuple[Path, dict[str, Any], str],
) -> None:
    out, _, _ = searched
    code, report, _ = compress(out)
    assert code == 0 and report["stages"][1]["cached"]
    code, report, _ = compress(out, "--set", "evaluate.batch_sizes=[1, 32]")
    assert code == 0 and not report["stages"][1]["cached"]
    assert stage(report, "quantize")["auto"]["batch_sizes"] == [1, 32]


def test_pinned_static_quantizes_compute_ops_only_unless_told_all(tmp_path: Path) -> None:
    """At opset 17 GELU is Div, Erf, Add, Mul, Mul: the default op set leaves them float (no
    Q/DQ pair in front of Erf); `op_types: all` wraps each one."""
    base = ["--set", "stages.0.export.opset=17", "--set", "stages.1.quantize.mode=static"]

    def gelu_wrapped(path: Path) -> bool:  # Q/DQ between the ops of GELU: after Div, Erf, Add
        graph = onnx.load(str(path)).graph
        quantized = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
        inner = [n for n in graph.node if n.op_type in ("Div", "Erf", "Add")]
        assert len(inner) == 6  # two GELUs
        return any({*n.output} & quantized for n in inner)

    code, _, output = compress(tmp_path / "compute", *base, search=False)
    assert code == 0, output
    assert not gelu_wrapped(tmp_path / "compute" / "model.int8.onnx")
    all_ops = ["--set", "stages.1.quantize.op_types=all", "--set", "gates.max_size_ratio=null"]
    code, _, output = compress(tmp_path / "all", *base, *all_ops, search=False)
    assert code == 0, output
    assert gelu_wrapped(tmp_path / "all" / "model.int8.onnx")


def test_analyze_measures_the_fixed_default_of_a_searching_stage(tmp_path: Path) -> None:
    """`modelquant analyze` on a recipe whose quantize stage searches measures static QDQ (the
    winner may be dynamic, which has no Q/DQ pairs to compare), and runs no search."""
    result = runner.invoke(app, ["analyze", RECIPE, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["layers"]) == 3  # the three Gemms
    assert "quantize auto" not in result.stderr
