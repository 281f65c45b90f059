"""The `report` verbs (diff, render) and what `compress` adds for CI: --baseline-report gates and
the GitHub step summary. Runs reuse the session's tiny run folder (copied, so its stage cache
makes each compress here a cache hit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.report.junit import render_junit
from modelquant.report.markdown import render_markdown
from modelquant.report.model import Report

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _last_line(result: Any) -> str:
    assert "Traceback" not in result.output, result.output
    return [line for line in result.output.strip().splitlines() if line.strip()][-1]


@pytest.fixture
def run_dir(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's run folder (reports, models and stage cache)."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


@pytest.fixture
def compress(run_dir: Path, write_recipe: Callable[..., Path]) -> Callable[..., Any]:
    """compress(*flags, **recipe_changes) in the copied run folder (all stages cached)."""

    def invoke(*flags: str, **changes: Any) -> Any:
        changes.setdefault("output", {"formats": ["json", "md", "junit"]})
        recipe = write_recipe(**changes)
        return runner.invoke(app, ["compress", str(recipe), "--out", str(run_dir), *flags])

    return invoke


# ---------------------------------------------------------------- render


def test_render_md_to_stdout_and_junit_to_a_file(tiny_run: Path, tmp_path: Path) -> None:
    report = Report.model_validate_json((tiny_run / "report.json").read_text())
    result = runner.invoke(app, ["report", "render", str(tiny_run / "report.json")])
    assert result.exit_code == 0, result.output
    assert result.stdout == render_markdown(report)
    target = tmp_path / "ci" / "junit.xml"
    target.parent.mkdir()
    result = runner.invoke(
        app, ["report", "render", str(tiny_run), "--format", "junit", "--out", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert target.read_text() == render_junit(report) == (tiny_run / "junit.xml").read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["junit.xml"]  # no temp left
    assert ET.fromstring(target.read_bytes()).tag == "testsuites"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "pdf"], "bad input: unknown report format 'pdf'; use one of: "),
        (["--format", "pdf"], "json, junit, md"),  # every registered one (html sorts first)
        (["--out", "{tmp}"], "is a folder; give a file name"),
        (["--out", "{tmp}/missing/r.md"], "give --out a file in a folder you can write to"),
    ],
)
def test_render_bad_input(tiny_run: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["report", "render", str(tiny_run), *args])
    assert result.exit_code == 2, result.output
    assert expected in _last_line(result)
    assert len(result.output.strip().splitlines()) == 1


def test_render_does_not_touch_the_step_summary(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = runner.invoke(app, ["report", "render", str(tiny_run)])
    assert result.exit_code == 0
    assert not summary.exists()


# ---------------------------------------------------------------- compress, step summary


def test_compress_appends_the_markdown_to_the_step_summary(
    compress: Callable[..., Any],
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("## an earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = compress()
    assert result.exit_code == 0, result.output
    md = (run_dir / "report.md").read_text()
    assert summary.read_text() == "## an earlier step\n" + md + "\n"
    assert compress().exit_code == 0
    assert summary.read_text().count("# modelquant report: tiny") == 2  # appended again


def test_unwritable_step_summary_is_a_warning(
    compress: Callable[..., Any], run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "summary.md"))
    result = compress()
    assert result.exit_code == 0, result.output
    assert "warning: could not append the report to GITHUB_STEP_SUMMARY" in result.output
    assert "Traceback" not in result.output
    assert (run_dir / "report.json").is_file()


# ---------------------------------------------------------------- compress --baseline-report


def _report(run_dir: Path) -> Report:
    return Report.model_validate_json((run_dir / "report.json").read_text())


def test_baseline_report_of_the_same_folder_passes_as_gates(
    compress: Callable[..., Any], run_dir: Path
) -> None:
    """The folder's own report.json as the baseline (read before the run clears it): the same
    model, so metric and size are equal; latency and speedup are judged on loose bounds here (no
    timing assertion in a unit test), and every judged figure is a gate and a JUnit case."""
    result = compress(
        "--baseline-report",
        str(run_dir / "report.json"),
        "--set",
        "gates.baseline.max_latency_regression=5",
        "--set",
        "gates.baseline.max_speedup_loss=0.99",
    )
    assert result.exit_code == 0, result.output
    assert "baseline_latency_regression[cpu,bs=1]" in result.output  # not eaten as markup
    report = _report(run_dir)
    by_name = {g.name: g for g in report.gates}
    assert by_name["baseline_accuracy_drop"].value == 0.0
    assert by_name["baseline_size_growth"].value == 1.0
    assert by_name["baseline_size_growth"].threshold == pytest.approx(1.05)
    assert by_name["baseline_latency_regression[cpu,bs=1]"].threshold == 6
    assert "baseline_latency_regression[cpu,bs=8]" in by_name
    assert by_name["baseline_speedup_loss[cpu,bs=8]"].threshold == pytest.approx(0.01)
    assert by_name["baseline_speedup_loss[cpu,bs=1]"].value is not None
    assert report.status == "passed"
    cases = [c.get("name") for c in ET.parse(run_dir / "junit.xml").iter("testcase")]
    assert cases == [g.name for g in report.gates]
    assert "baseline_accuracy_drop" in (run_dir / "report.md").read_text()


def test_a_better_baseline_fails_the_run_naming_the_gate(
    compress: Callable[..., Any], run_dir: Path, tmp_path: Path
) -> None:
    doc = json.loads((run_dir / "report.json").read_text())
    doc["compressed"]["accuracy"] += 0.03  # the stored run scored 3 points more
    doc["compressed"]["size_bytes"] = int(doc["compressed"]["size_bytes"] / 1.5)
    old = tmp_path / "baseline.json"
    old.write_text(json.dumps(doc))
    result = compress(
        "--baseline-report",
        str(old),
        "--set",
        "gates.baseline.max_latency_regression=null",
        "--set",
        "gates.baseline.max_speedup_loss=null",
    )
    assert result.exit_code == 1, result.output
    line = _last_line(result)
    assert line.startswith("gate failed: 2 gate(s) failed: baseline_accuracy_drop (top1 ")
    assert "baseline_size_growth (" in line
    report = _report(run_dir)
    assert report.status == "gate_failed"
    assert not any(
        g.name.startswith(("baseline_latency", "baseline_speedup")) for g in report.gates
    )
    junit = ET.parse(run_dir / "junit.xml").getroot()
    assert junit.get("failures") == "2"


def test_a_baseline_from_another_cpu_judges_the_speedup_not_the_latency(
    compress: Callable[..., Any], run_dir: Path, tmp_path: Path
) -> None:
    """The stored report comes from another, 100x faster CPU (as a CI runner's baseline would):
    absolute latency is not judged (a passed gate without a value, JUnit skipped); its far
    higher speedup at batch 8 is, and fails the run naming baseline_speedup_loss[cpu,bs=8]."""
    doc = json.loads((run_dir / "report.json").read_text())
    doc["environment"]["cpu"] = "Intel(R) Xeon(R) Platinum 8480C"
    for role in ("baseline", "compressed"):
        for stats in doc[role]["backends"]["cpu"]["latency_ms"].values():
            stats["p50"] /= 100
            stats["ci95"] = [stats["ci95"][0] / 100, stats["ci95"][1] / 100]
    doc["deltas"]["speedup"]["cpu"]["8"] = {"value": 1000.0, "ci95": [999.0, 1001.0]}
    old = tmp_path / "baseline.json"
    old.write_text(json.dumps(doc))
    # A loose threshold: the re-measured speedup of the tiny model moves with the load (no timing
    # assertion in a unit test); 1000x -> what this run measures crosses it anyway.
    result = compress("--baseline-report", str(old), "--set", "gates.baseline.max_speedup_loss=0.9")
    assert result.exit_code == 1, result.output
    line = _last_line(result)
    assert line.startswith("gate failed: 1 gate(s) failed: baseline_speedup_loss[cpu,bs=8] (")
    gates = {g.name: g for g in _report(run_dir).gates}
    latency = gates["baseline_latency_regression[cpu,bs=8]"]
    assert latency.passed and latency.value is None and "not judged" in latency.detail
    junit = ET.parse(run_dir / "junit.xml").getroot()
    assert junit.get("failures") == "1"
    skipped = [c.get("name") for c in junit.iter("testcase") if c.find("skipped") is not None]
    assert "baseline_latency_regression[cpu,bs=1]" in skipped


@pytest.mark.parametrize("problem", ["missing", "not a report", "other metric"])
def test_bad_baseline_report_exits_2_before_running(
    compress: Callable[..., Any], run_dir: Path, tmp_path: Path, problem: str
) -> None:
    old = tmp_path / "old.json"
    if problem == "not a report":
        old.write_text('{"accuracy": 1}')
    elif problem == "other metric":
        doc = json.loads((run_dir / "report.json").read_text())
        doc["compressed"]["metric"] = "cosine"
        old.write_text(json.dumps(doc))
    result = compress("--baseline-report", str(old))
    assert result.exit_code == 2, result.output
    line = _last_line(result)
    assert line.startswith("bad input:")
    assert "stage" not in result.output  # nothing ran
    assert not (run_dir / "report.json").exists()  # the old success does not outlive the run


def test_recipe_gates_baseline_rejects_unknown_keys(compress: Callable[..., Any]) -> None:
    result = compress(gates={"baseline": {"max_latency": 0.1}})
    assert result.exit_code == 2
    assert "max_latency" in _last_line(result)


# ---------------------------------------------------------------- as CI calls it


def test_report_diff_through_a_subprocess(tiny_run: Path, tmp_path: Path) -> None:
    doc = json.loads((tiny_run / "report.json").read_text())
    doc["compressed"]["accuracy"] -= 0.02
    worse = tmp_path / "new.json"
    worse.write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)

    def diff(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelquant", "report", "diff", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    ok = diff(str(tiny_run / "report.json"), str(tiny_run / "report.json"))
    assert ok.returncode == 0, ok.stderr
    bad = diff(str(tiny_run / "report.json"), str(worse))
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("gate failed: 1 threshold(s) crossed against")
    )
    assert "top1 (cpu), compressed: -2.00 pt crosses drop <= 1.00 pt" in bad.stderr
