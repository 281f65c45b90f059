"""junit.xml: every gate of a report as one JUnit test case, for CI systems' test views.

The shape JUnit consumers read (Jenkins, GitLab, GitHub test-reporter actions, Azure): a root
`<testsuites>` with `tests`/`failures`/`errors`/`skipped` counts, one `<testsuite>` named
`modelquant.<recipe name>` with the same counts and `<properties>` (metric, size, speedup), and one
`<testcase classname="modelquant.<recipe name>" name="<gate name>">` per gate. A failed gate holds
`<failure message="gate, threshold, value" type="GateFailed">` with the gate's detail as its text;
a gate that passed without a value (not gated: emulated latency, or not compared) is `<skipped>`.
Written with xml.etree, which escapes every text and attribute.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from modelquant.report import register_renderer
from modelquant.report.model import Gate, Report
from modelquant.report.rows import fmt_gate, gate_cells


def failure_message(gate: Gate) -> str:
    """'<gate>: threshold <t>, value <v>' in the gate's unit."""
    threshold, value = gate_cells(gate)
    return f"{gate.name}: threshold {threshold}, value {value}"


def _properties(report: Report) -> dict[str, str]:
    b, c, d = report.baseline, report.compressed, report.deltas
    props = {
        "metric": c.metric,
        "baseline.accuracy": repr(b.accuracy),
        "compressed.accuracy": repr(c.accuracy),
        "accuracy_delta_pt": repr(d.accuracy_pt),
        "baseline.size_bytes": str(b.size_bytes),
        "compressed.size_bytes": str(c.size_bytes),
        "size_ratio": repr(d.size_ratio),
        "cpu": report.environment.cpu,
        "modelquant_version": report.modelquant_version,
        "status": report.status,
    }
    for backend, per_batch in d.speedup.items():
        for bs, speed in per_batch.items():
            props[f"speedup.{backend}.bs{bs}"] = repr(speed.value)
            props[f"speedup.{backend}.bs{bs}.ci95"] = f"{speed.ci95[0]!r},{speed.ci95[1]!r}"
    return props


def _counts(element: ET.Element, tests: int, failures: int, skipped: int, time: float) -> None:
    element.set("tests", str(tests))
    element.set("failures", str(failures))
    element.set("errors", "0")
    element.set("skipped", str(skipped))
    element.set("time", f"{time:.3f}")


@register_renderer("junit", "junit.xml")
def render_junit(report: Report) -> str:
    name = f"modelquant.{report.recipe.get('name', 'recipe')}"
    failures = sum(not g.passed for g in report.gates)
    skipped = sum(g.passed and g.value is None for g in report.gates)
    seconds = sum(s.seconds for s in report.stages)
    root = ET.Element("testsuites", {"name": "modelquant"})
    _counts(root, len(report.gates), failures, skipped, seconds)
    suite = ET.SubElement(root, "testsuite", {"name": name, "timestamp": report.created})
    _counts(suite, len(report.gates), failures, skipped, seconds)
    props = ET.SubElement(suite, "properties")
    for key, value in _properties(report).items():
        ET.SubElement(props, "property", {"name": key, "value": value})
    for gate in report.gates:
        case = ET.SubElement(suite, "testcase", {"classname": name, "name": gate.name, "time": "0"})
        if not gate.passed:
            failure = ET.SubElement(
                case, "failure", {"message": failure_message(gate), "type": "GateFailed"}
            )
            failure.text = gate.detail or failure_message(gate)
        elif gate.value is None:
            ET.SubElement(case, "skipped", {"message": gate.detail or "not gated"})
        else:
            out = ET.SubElement(case, "system-out")
            out.text = (
                f"{gate.name}: threshold {fmt_gate(gate, gate.threshold)}, "
                f"value {fmt_gate(gate, gate.value)}" + (f"; {gate.detail}" if gate.detail else "")
            )
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
