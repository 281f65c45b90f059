"""report.md: the comparison, the stages and the gates as Markdown tables."""

from __future__ import annotations

from modelquant.report import register_renderer
from modelquant.report.model import Report
from modelquant.report.rows import comparison_rows, fallback_rows, gate_cells, stage_notes


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _threads(report: Report) -> str:
    """The thread count the timed sessions ran with, and where it comes from."""
    for result in (report.baseline, report.compressed):
        for backend in result.backends.values():
            for stats in backend.latency_ms.values():
                if stats.threads is not None:
                    source = f" ({stats.threads_source})" if stats.threads_source else ""
                    return f"{stats.threads}{source}"
    return ""


def _fallback_section(report: Report) -> list[str]:
    rows = fallback_rows(report)
    if not rows:
        return []
    return [
        "",
        "## Accuracy-aware fallback",
        "",
        "Each round quantizes the model with the layers listed in higher precision (w8a16: int8 "
        "weights, 16-bit activations) and scores it on the validation data.",
        "",
        _table(["round", "layers in higher precision", "validation metric", "drop", "size"], rows),
    ]


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
        "Speedup is baseline p50 / compressed p50 with its 95 % interval; models were timed in "
        "one process, alternating in blocks, each block's first (cold) run left out, and the "
        "intervals bootstrapped over pairs of side-by-side blocks.",
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
        *_fallback_section(report),
        "",
        "## Gates",
        "",
        _table(
            ["gate", "threshold", "value", "passed", "detail"],
            [
                [
                    g.name,
                    *gate_cells(g),
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
    threads = _threads(report)
    if threads:
        parts.append(f"- intra-op threads: {threads}")
    for name, status in env.backends.items():
        state = "available" if status.available else f"unavailable: {status.reason}"
        parts.append(f"- backend {name}: {state}")
    return "\n".join(parts) + "\n"
