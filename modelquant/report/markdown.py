"""report.md: the comparison, the stages and the gates as Markdown tables."""

from __future__ import annotations

from modelquant.report import register_renderer
from modelquant.report.model import Report
from modelquant.report.rows import comparison_rows, stage_notes


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@register_renderer("md", "report.md")
def render_markdown(report: Report) -> str:
    env = report.environment
    parts = [
        f"# modelquant report: {report.recipe.get('name', '')}",
        "",
        f"Status: **{report.status}** · modelquant {report.modelquant_version} · {report.created}",
        "",
        "## Baseline vs compressed",
        "",
        _table(["", "baseline", "compressed", "delta"], [list(r) for r in comparison_rows(report)]),
        "",
        "Speedup is baseline p50 / compressed p50 with its 95 % bootstrap interval; models were "
        "timed in one process, alternating in blocks.",
        "",
        "## Stages",
        "",
        _table(
            ["#", "stage", "seconds", "details"],
            [
                [
                    str(i),
                    s.name,
                    f"{s.seconds:.2f}" + (" (cached)" if s.cached else ""),
                    stage_notes(s.settings, s.details),
                ]
                for i, s in enumerate(report.stages, 1)
            ],
        ),
        "",
        "## Gates",
        "",
        _table(
            ["gate", "threshold", "value", "passed", "detail"],
            [
                [
                    g.name,
                    f"{g.threshold:g}",
                    "-" if g.value is None else f"{g.value:.4g}",
                    "yes" if g.passed else "**no**",
                    g.detail,
                ]
                for g in report.gates
            ],
        )
        if report.gates
        else "No gates set.",
        "",
        "## Environment",
        "",
        f"- CPU: {env.cpu} ({env.cores} cores); flags: {', '.join(env.cpu_flags) or 'none found'}",
        f"- python {env.python}, torch {env.torch}, onnx {env.onnx}, onnxruntime {env.onnxruntime}",
    ]
    for name, status in env.backends.items():
        state = "available" if status.available else f"unavailable: {status.reason}"
        parts.append(f"- backend {name}: {state}")
    return "\n".join(parts) + "\n"
