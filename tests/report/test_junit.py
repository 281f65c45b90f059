"""junit.xml: what JUnit consumers read (counts on testsuites/testsuite, one testcase per gate,
failure with a message), from a real run and from reports with failing and ungated gates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from modelquant.report.junit import render_junit
from modelquant.report.model import Gate, Report


def _parse(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites '), text[:60]
    return ET.fromstring(text.encode("utf-8"))


def _check_counts(root: ET.Element) -> None:
    """The counts every consumer trusts agree with the cases they count."""
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    for element in (root, suites[0]):
        cases = suites[0].findall("testcase")
        assert int(element.get("tests", "-1")) == len(cases)
        assert int(element.get("failures", "-1")) == sum(
            c.find("failure") is not None for c in cases
        )
        assert int(element.get("skipped", "-1")) == sum(
            c.find("skipped") is not None for c in cases
        )
        assert element.get("errors") == "0"
        float(element.get("time", "x"))


def test_real_run_writes_one_case_per_gate(tiny_run: Path) -> None:
    report = Report.model_validate_json((tiny_run / "report.json").read_text())
    assert report.artifacts["junit.xml"] == "junit.xml"
    root = _parse((tiny_run / "junit.xml").read_text())
    _check_counts(root)
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "modelquant.tiny"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [g.name for g in report.gates]
    assert {c.get("classname") for c in cases} == {"modelquant.tiny"}
    assert all(c.find("failure") is None for c in cases)  # the tiny recipe's gate passes
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["metric"] == "top1"
    assert float(props["compressed.accuracy"]) == report.compressed.accuracy
    assert int(props["compressed.size_bytes"]) == report.compressed.size_bytes
    assert float(props["speedup.cpu.bs8"]) == report.deltas.speedup["cpu"]["8"].value


def test_failed_gate_is_a_failure_naming_gate_threshold_value(tiny_run: Path) -> None:
    report = Report.model_validate_json((tiny_run / "report.json").read_text())
    odd = 'accuracy <98% & "falling"'  # must come back unharmed through the escaping
    gates = [
        Gate(
            name="max_accuracy_drop",
            threshold=0.01,
            value=0.034,
            passed=False,
            detail=odd,
            unit="fraction",
        ),
        Gate(name="min_speedup.cpu", threshold=1.2, value=2.5, passed=True, unit="speedup"),
        Gate(
            name="min_speedup.npu",
            threshold=1.2,
            value=None,
            passed=True,
            detail="not gated: emulated",
            unit="speedup",
        ),
        Gate(
            name="max_size_ratio",
            threshold=0.3,
            value=None,
            passed=False,
            detail="not measured",
            unit="ratio",
        ),
    ]
    failing = report.model_copy(update={"gates": gates, "status": "gate_failed"})
    root = _parse(render_junit(failing))
    _check_counts(root)
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "2", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    failure = cases["max_accuracy_drop"].find("failure")
    assert failure is not None
    assert failure.get("message") == "max_accuracy_drop: threshold 1.00 pt, value 3.40 pt"
    assert failure.get("type") == "GateFailed"
    assert failure.text == odd
    unmeasured = cases["max_size_ratio"].find("failure")
    assert unmeasured is not None
    assert unmeasured.get("message") == "max_size_ratio: threshold 0.300x, value not measured"
    skipped = cases["min_speedup.npu"].find("skipped")
    assert skipped is not None and skipped.get("message") == "not gated: emulated"
    assert cases["min_speedup.cpu"].find("failure") is None
    assert cases["min_speedup.cpu"].find("skipped") is None


def test_no_gates_is_an_empty_suite(tiny_run: Path) -> None:
    report = Report.model_validate_json((tiny_run / "report.json").read_text())
    root = _parse(render_junit(report.model_copy(update={"gates": []})))
    _check_counts(root)
    assert root.get("tests") == "0"
