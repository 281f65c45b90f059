"""`modelquant report diff`: two real reports of the tiny recipe, and copies of one edited the way
a regression (or noise, or another machine) would change it."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.gates import with_baseline
from modelquant.report.diff import (
    Thresholds,
    diff_reports,
    latency_verdict,
    load_report,
    speedup_verdict,
)
from modelquant.report.model import LatencyStats, Speedup

runner = CliRunner()
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture
def real(tiny_run: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tiny_run / "report.json").read_text())
    return doc


@pytest.fixture
def variant(real: dict[str, Any], tmp_path: Path) -> Callable[..., Path]:
    """variant(name, edit) -> a copy of the real report.json changed by `edit`."""

    def make(name: str, edit: Edit | None = None) -> Path:
        doc = copy.deepcopy(real)
        if edit is not None:
            edit(doc)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        return path

    return make


def _cpu_latency(doc: dict[str, Any], role: str = "compressed") -> dict[str, Any]:
    latency: dict[str, Any] = doc[role]["backends"]["cpu"]["latency_ms"]
    return latency


def _slower(factor: float, batch: str | None = None, ci: tuple[float, float] | None = None) -> Edit:
    """The compressed model's cpu latency times `factor` (p50 and, unless `ci` gives other
    factors for its ends, the interval)."""

    def edit(doc: dict[str, Any]) -> None:
        for bs, stats in _cpu_latency(doc).items():
            if batch is not None and bs != batch:
                continue
            for key in ("p50", "p90", "mean"):
                stats[key] *= factor
            low, high = ci or (factor, factor)
            stats["ci95"] = [stats["ci95"][0] * low, stats["ci95"][1] * high]

    return edit


def _slower_beyond_noise(doc: dict[str, Any]) -> None:
    """The compressed model's cpu latency 50 % slower than the real run's interval's high end,
    with an interval as wide as the real one: slower whatever the real noise was (the tiny
    recipe times 2 blocks, so its intervals can be wide)."""
    for stats in _cpu_latency(doc).values():
        low, high = stats["ci95"]
        start = high * 1.5
        stats["ci95"] = [start, start + (high - low)]
        stats["p50"] = stats["p90"] = stats["mean"] = start + (high - low) / 2


def _worse_accuracy(doc: dict[str, Any]) -> None:
    doc["compressed"]["accuracy"] -= 0.03


def _diff(*args: str) -> Any:
    return runner.invoke(app, ["report", "diff", *map(str, args)])


def _one_line(result: Any) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    return lines[-1]


def test_two_real_runs_of_one_recipe_pass(tiny_run: Path, variant: Callable[..., Path]) -> None:
    """The same report on both sides: every judged row ok, exit 0 (the run folder works too)."""
    result = _diff(tiny_run, variant("same"))
    assert result.exit_code == 0, result.output
    assert "no threshold crossed" in result.output
    assert "REGRESSION" not in result.output
    doc = json.loads(_diff(tiny_run, variant("same"), "--json").stdout)
    judged = [r for r in doc["rows"] if r["gated"]]
    assert {r["check"] for r in judged} == {"metric", "size", "speedup", "latency"}
    assert {r["verdict"] for r in judged} == {"ok"}
    assert doc["passed"] is True and doc["machines"]["same_cpu"] is True


def test_worse_report_exits_1_naming_each_metric(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    """3 points less accuracy and slower beyond the noise: exit 1, each named."""

    def worse(doc: dict[str, Any]) -> None:
        _worse_accuracy(doc)
        _slower_beyond_noise(doc)

    result = _diff(tiny_run / "report.json", variant("worse", worse))
    assert result.exit_code == 1, result.output
    line = _one_line(result)
    assert line.startswith("gate failed: 3 threshold(s) crossed")
    assert "top1 (cpu), compressed: -3.00 pt crosses drop <= 1.00 pt" in line
    assert re.search(r"cpu p50, batch 1, compressed: \+\d+\.\d% crosses slower <= 10%", line)
    assert re.search(r"cpu p50, batch 8, compressed: \+\d+\.\d% crosses slower <= 10%", line)
    doc = json.loads(_diff(tiny_run, variant("worse", worse), "--json").stdout)
    assert doc["failed"] == [
        "baseline_accuracy_drop",
        "baseline_latency_regression[cpu,bs=1]",
        "baseline_latency_regression[cpu,bs=8]",
    ]


def test_each_threshold_alone(tiny_run: Path, variant: Callable[..., Path]) -> None:
    """Only what crossed is named; a looser flag lets it pass; inf turns a check off."""
    acc = variant("acc", _worse_accuracy)
    result = _diff(tiny_run, acc)
    assert result.exit_code == 1 and "top1" in _one_line(result)
    assert "latency" not in _one_line(result) and "size" not in _one_line(result)
    assert _diff(tiny_run, acc, "--max-accuracy-drop", "0.05").exit_code == 0
    assert _diff(tiny_run, acc, "--max-accuracy-drop", "inf").exit_code == 0

    def bigger(doc: dict[str, Any]) -> None:
        doc["compressed"]["size_bytes"] = int(doc["compressed"]["size_bytes"] * 1.2)

    grown = variant("grown", bigger)
    result = _diff(tiny_run, grown)
    assert result.exit_code == 1
    assert "ONNX size, compressed: +20.0% crosses growth <= 5%" in _one_line(result)
    assert _diff(tiny_run, grown, "--max-size-growth", "0.25").exit_code == 0


def test_slower_median_inside_the_noise_is_not_a_regression(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    """Median 8 % slower with a 5 % threshold: the intervals overlap, so not a regression; the same
    8 % with intervals as tight as the median's is one."""
    noisy = variant("noisy", _slower(1.08, batch="8", ci=(0.95, 1.2)))
    result = _diff(tiny_run, noisy, "--max-latency-regression", "0.05")
    assert result.exit_code == 0, result.output
    doc = json.loads(_diff(tiny_run, noisy, "--max-latency-regression", "0.05", "--json").stdout)
    (row,) = [
        r
        for r in doc["rows"]
        if r["check"] == "latency" and r["model"] == "compressed" and r["batch_size"] == 8
    ]
    assert row["delta"] == pytest.approx(0.08)
    assert row["verdict"] == "within noise"

    def tight(factor: float) -> Edit:  # intervals of +-0.5 % around the median
        def edit(doc: dict[str, Any]) -> None:
            stats = _cpu_latency(doc)["8"]
            stats["p50"] *= factor
            stats["ci95"] = [stats["p50"] * 0.995, stats["p50"] * 1.005]

        return edit

    old, new = variant("old-tight", tight(1.0)), variant("new-tight", tight(1.08))
    result = _diff(old, new, "--max-latency-regression", "0.05")
    assert result.exit_code == 1, result.output
    assert "cpu p50, batch 8, compressed: +8.0% crosses slower <= 5%" in _one_line(result)


def _stats(p50: float, low: float, high: float, threads: int = 1) -> LatencyStats:
    return LatencyStats(p50=p50, p90=p50, mean=p50, runs=100, ci95=(low, high), threads=threads)


def test_latency_rule() -> None:
    """new low > old high * (1 + R), in numbers."""
    old = _stats(1.0, 0.98, 1.02)
    assert latency_verdict(old, _stats(1.5, 1.45, 1.55), 0.10)[0] == "worse"
    assert latency_verdict(old, _stats(1.15, 1.13, 1.17), 0.10)[0] == "worse"
    assert latency_verdict(old, _stats(1.15, 1.05, 1.25), 0.10)[0] == "within noise"
    assert latency_verdict(old, _stats(1.05, 1.04, 1.06), 0.10)[0] == "ok"
    assert latency_verdict(old, _stats(0.5, 0.49, 0.51), 0.10)[0] == "better"


def test_different_cpus_and_threads_are_noted(tiny_run: Path, variant: Callable[..., Path]) -> None:
    def elsewhere(doc: dict[str, Any]) -> None:
        doc["environment"]["cpu"] = "Intel(R) Xeon(R) Platinum 8480C"
        doc["environment"]["cpu_flags"] = ["avx", "avx2", "amx_int8"]
        for stats in _cpu_latency(doc).values():
            stats["threads"] = 4

    other = variant("other", elsewhere)
    result = _diff(tiny_run, other)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert "note: measured on different CPUs" in flat
    assert "the speedup rows (compressed vs baseline model within each run) decide" in flat
    assert "Intel(R) Xeon(R) Platinum 8480C" in flat
    assert "only the new has amx_int8" in flat
    assert "note: measured with different thread counts (cpu bs=1: 1 -> 4" in flat
    doc = json.loads(_diff(tiny_run, other, "--json").stdout)
    assert doc["machines"]["same_cpu"] is False
    assert "cpu bs=8: 1 -> 4" in doc["machines"]["threads"]
    assert any(n.startswith("measured on different CPUs") for n in doc["notes"])
    same = json.loads(_diff(tiny_run, tiny_run, "--json").stdout)
    assert same["notes"] == [] and same["machines"]["threads"] == []


def test_a_machine_that_slowed_down_is_noted(tiny_run: Path, variant: Callable[..., Path]) -> None:
    """The baseline model (same file) twice as slow: the machine, said in a note."""

    def busy(doc: dict[str, Any]) -> None:
        stats = _cpu_latency(doc, "baseline")["8"]
        stats["p50"] *= 2
        stats["ci95"] = [stats["ci95"][0] * 2, stats["ci95"][1] * 2]

    doc = json.loads(_diff(tiny_run, variant("busy", busy), "--json").stdout)
    assert doc["passed"] is True  # the baseline model is never judged
    assert doc["notes"] == [
        "the baseline model's file is the same but its latency moved (cpu batch 8: +100.0%): the "
        "machine ran at another speed in the two runs, so the compressed model's latency rows may "
        "show the machine, not the model; the speedup rows at those batch sizes too, when the "
        "load slowed the two models unequally (a speedup is the baseline model's p50 over the "
        "compressed model's)"
    ]
    (speed,) = [r for r in doc["rows"] if r["check"] == "speedup" and r["batch_size"] == 8]
    assert speed["detail"] == "the baseline model's own p50 moved +100.0% (see note)"


def test_skipped_and_untimed_backends_are_shown(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    def skipped(doc: dict[str, Any]) -> None:
        cpu = doc["compressed"]["backends"]["cpu"]
        cpu["untimed"] = {"8": "fixed to batch 1"}
        del cpu["latency_ms"]["8"]
        doc["compressed"]["backends"]["npu"] = {"skipped": "onnxruntime-qnn is not installed"}

    result = _diff(tiny_run, variant("skipped", skipped))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("not compared") == 2
    rows = json.loads(_diff(tiny_run, variant("skipped", skipped), "--json").stdout)["rows"]
    shown = {(r["backend"], r["batch_size"], r["model"]): r for r in rows if r["backend"]}
    untimed = shown[("cpu", 8, "compressed")]
    assert untimed["verdict"] == "not compared" and untimed["old"] is not None
    assert untimed["detail"] == "the new report did not time batch 8: fixed to batch 1"
    assert shown[("npu", None, "compressed")]["detail"] == (
        "the old report did not evaluate npu; the new report skipped npu: onnxruntime-qnn is "
        "not installed"
    )


def test_reports_of_different_metrics_are_refused(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    def cosine(doc: dict[str, Any]) -> None:
        doc["compressed"]["metric"] = doc["baseline"]["metric"] = "cosine"

    result = _diff(tiny_run, variant("cos", cosine))
    assert result.exit_code == 2
    assert _one_line(result) == (
        "bad input: the two reports measure different metrics (old: top1, new: cosine); "
        "compare reports of recipes with the same task"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "report not found"),
        ("", "as a report (not JSON)"),
        ('{"modelquant_version": ', "as a report (not JSON)"),
        ('{"name": "tiny"}', "is not a modelquant report"),
        ("[1, 2]", "is not a modelquant report (top level: "),
        ("folder", "is a folder without a report.json"),
    ],
)
def test_a_file_that_is_not_a_report_is_bad_input(
    tiny_run: Path, tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "old.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    result = _diff(path, tiny_run)
    assert result.exit_code == 2, result.output
    line = _one_line(result)
    assert line.startswith("bad input:") and expected in line
    assert line.endswith(
        "give the report.json that `modelquant compress` wrote (or its output folder)"
    )
    assert len(result.output.strip().splitlines()) == 1


def test_bad_thresholds_are_bad_input(tiny_run: Path) -> None:
    result = _diff(tiny_run, tiny_run, "--max-latency-regression", "-0.1")
    assert result.exit_code == 2
    assert "--max-latency-regression is a fraction (0.10 = 10 % slower)" in _one_line(result)
    result = _diff(tiny_run, tiny_run, "--max-accuracy-drop", "3")
    assert result.exit_code == 2 and "0.01 = 1 point" in _one_line(result)


def test_diff_of_the_same_report_in_python(tiny_run: Path) -> None:
    report = load_report(tiny_run)
    diff = diff_reports(report, report)
    assert diff.passed and not diff.notes
    assert [r.gate_name for r in diff.rows if r.gated] == [
        "baseline_accuracy_drop",
        "baseline_size_growth",
        "baseline_speedup_loss[cpu,bs=1]",
        "baseline_speedup_loss[cpu,bs=8]",
        "baseline_latency_regression[cpu,bs=1]",
        "baseline_latency_regression[cpu,bs=8]",
    ]


# ---------------------------------------------------------------- speedup, and other machines


def _elsewhere_twice_as_slow(doc: dict[str, Any]) -> None:
    """Another CPU where both models take twice as long: every cpu latency (and its interval)
    doubled, the speedup measured within the run unchanged."""
    doc["environment"]["cpu"] = "AMD EPYC 7763 64-Core Processor"
    doc["environment"]["cpu_flags"] = ["avx", "avx2", "fma"]
    for role in ("baseline", "compressed"):
        for stats in _cpu_latency(doc, role).values():
            for key in ("p50", "p90", "mean"):
                stats[key] *= 2
            stats["ci95"] = [stats["ci95"][0] * 2, stats["ci95"][1] * 2]


def _speedup(doc: dict[str, Any], bs: str, factor: float, spread: float = 0.005) -> None:
    """The cpu speedup at batch `bs` times `factor`, with an interval of +-`spread` around it."""
    speed = doc["deltas"]["speedup"]["cpu"][bs]
    speed["value"] *= factor
    speed["ci95"] = [speed["value"] * (1 - spread), speed["value"] * (1 + spread)]


def test_another_machine_twice_as_slow_with_the_same_speedup_passes(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    """A baseline report from another CPU (CI runners differ): absolute latency 2x is the machine,
    not judged; the unchanged speedup decides, exit 0 with the note. The same doubling on the same
    CPU is still a latency regression."""
    new = variant("slow-machine", _elsewhere_twice_as_slow)
    result = _diff(tiny_run, new)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert "note: measured on different CPUs" in flat
    assert "not judged: different machines (see note)" in flat
    doc = json.loads(_diff(tiny_run, new, "--json").stdout)
    rows = {(r["check"], r["batch_size"]): r for r in doc["rows"] if r["model"] == "compressed"}
    for bs in (1, 8):
        assert rows[("latency", bs)]["verdict"] == "not judged"
        assert rows[("latency", bs)]["delta"] == pytest.approx(1.0)
        assert rows[("speedup", bs)]["verdict"] == "ok" and rows[("speedup", bs)]["gated"]
    assert doc["passed"] is True

    def here_twice_as_slow(doc: dict[str, Any]) -> None:
        env = copy.deepcopy(doc["environment"])
        _elsewhere_twice_as_slow(doc)
        doc["environment"] = env

    result = _diff(tiny_run, variant("slow-here", here_twice_as_slow))
    assert result.exit_code == 1, result.output
    assert "cpu p50, batch 1, compressed: +100.0% crosses slower <= 10%" in _one_line(result)


def test_speedup_lost_beyond_the_intervals_exits_1_naming_it(
    tiny_run: Path, variant: Callable[..., Path]
) -> None:
    """Same machine, the compressed model's speedup at batch 8 down 30 % with tight intervals:
    exit 1 naming it; inside wide intervals it is noise; a looser flag or inf lets it pass."""
    old = variant("old-speed", lambda doc: _speedup(doc, "8", 1.0))
    lost = variant("lost", lambda doc: _speedup(doc, "8", 0.7))
    result = _diff(old, lost)
    assert result.exit_code == 1, result.output
    line = _one_line(result)
    assert line.startswith("gate failed: 1 threshold(s) crossed")
    assert "cpu speedup, batch 8, compressed: -30.0% crosses loss <= 10%" in line
    assert "(judged: new high / old low)" in line
    doc = json.loads(_diff(old, lost, "--json").stdout)
    assert doc["failed"] == ["baseline_speedup_loss[cpu,bs=8]"]
    assert _diff(old, lost, "--max-speedup-loss", "0.4").exit_code == 0
    assert _diff(old, lost, "--max-speedup-loss", "inf").exit_code == 0
    noisy = variant("noisy-speed", lambda doc: _speedup(doc, "8", 0.85, spread=0.2))
    doc = json.loads(_diff(old, noisy, "--json").stdout)
    (row,) = [r for r in doc["rows"] if r["check"] == "speedup" and r["batch_size"] == 8]
    assert row["verdict"] == "within noise" and doc["passed"] is True
    bad = _diff(old, lost, "--max-speedup-loss", "1.5")
    assert bad.exit_code == 2 and "--max-speedup-loss is a fraction" in _one_line(bad)


def test_emulated_speedup_is_shown_not_judged(tiny_run: Path, variant: Callable[..., Path]) -> None:
    def with_npu(factor: float) -> Edit:
        def edit(doc: dict[str, Any]) -> None:
            for role in ("baseline", "compressed"):
                npu = copy.deepcopy(doc[role]["backends"]["cpu"])
                npu["emulated"] = True
                doc[role]["backends"]["npu"] = npu
            speed = copy.deepcopy(doc["deltas"]["speedup"]["cpu"])
            for entry in speed.values():
                entry["value"] *= factor
                entry["ci95"] = [entry["value"] * 0.99, entry["value"] * 1.01]
            doc["deltas"]["speedup"]["npu"] = speed

        return edit

    old, new = variant("npu-old", with_npu(1.0)), variant("npu-new", with_npu(0.2))
    result = _diff(old, new)
    assert result.exit_code == 0, result.output
    assert "npu (emulated) speedup, batch 1, compressed" in " ".join(result.stdout.split())
    rows = json.loads(_diff(old, new, "--json").stdout)["rows"]
    npu = [r for r in rows if r["backend"] == "npu" and r["check"] == "speedup"]
    assert len(npu) == 2
    assert all(r["emulated"] and not r["gated"] and r["verdict"] == "worse" for r in npu)


def test_speedup_rule() -> None:
    """new high < old low * (1 - S), in numbers."""
    old = Speedup(value=2.0, ci95=(1.9, 2.1))
    assert speedup_verdict(old, Speedup(value=1.5, ci95=(1.45, 1.55)), 0.10)[0] == "worse"
    assert speedup_verdict(old, Speedup(value=1.7, ci95=(1.5, 1.9)), 0.10)[0] == "within noise"
    assert speedup_verdict(old, Speedup(value=1.9, ci95=(1.85, 1.95)), 0.10)[0] == "ok"
    assert speedup_verdict(old, Speedup(value=3.0, ci95=(2.9, 3.1)), 0.10)[0] == "better"
    verdict, loss = speedup_verdict(old, Speedup(value=1.0, ci95=(0.9, 0.95)), 0.10)
    assert verdict == "worse" and loss == pytest.approx(1 - 0.95 / 1.9)


def test_baseline_gates_from_another_machine(tiny_run: Path, real: dict[str, Any]) -> None:
    """`compress --baseline-report` against a report from another, faster CPU: the latency gates
    are passed without a value (JUnit: skipped) saying why; the speedup gates judge."""
    report = load_report(tiny_run)
    doc = copy.deepcopy(real)
    _elsewhere_twice_as_slow(doc)  # the stored report's machine is the slow one here...
    for role in ("baseline", "compressed"):  # ...and this run's is 4x faster than it
        for stats in _cpu_latency(doc, role).values():
            stats["p50"] /= 8
            stats["ci95"] = [stats["ci95"][0] / 8, stats["ci95"][1] / 8]
    old = type(report).model_validate(doc)
    judged = with_baseline(report, old, Thresholds(), "stored.json")
    gates = {g.name: g for g in judged.gates}
    assert judged.status == report.status
    latency = gates["baseline_latency_regression[cpu,bs=1]"]
    assert latency.passed and latency.value is None
    assert "not judged" in latency.detail and "the speedup gates decide" in latency.detail
    speed = gates["baseline_speedup_loss[cpu,bs=8]"]
    assert speed.passed and speed.value is not None and speed.threshold == pytest.approx(0.9)
    assert speed.unit == "ratio"

    _speedup(doc, "8", 3.0)  # the stored run's compressed model was 3x faster relative
    worse = with_baseline(report, type(report).model_validate(doc), Thresholds(), "stored.json")
    failed = [g.name for g in worse.gates if not g.passed]
    assert failed == ["baseline_speedup_loss[cpu,bs=8]"]
    assert worse.status == "gate_failed"
