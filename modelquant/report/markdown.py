"""report.md: the comparison, the stages and the gates as Markdown tables."""

from __future__ import annotations

from modelquant.report import register_renderer
from modelquant.report.model import Report
from modelquant.report.rows import (
    STEP_HEADER,
    TRANSFORMER_HEADER,
    auto_tables,
    comparison_rows,
    data_parallel_line,
    fallback_rows,
    gate_cells,
    latency_batches,
    latency_rows,
    stage_notes,
    step_rows,
    transformer_tables,
)


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


def _steps_section(report: Report) -> list[str]:
    rows = step_rows(report)
    lines: list[str] = []
    if rows:
        lines += [
            "",
            "## After each stage",
            "",
            "The model as each stage left it, scored on the evaluation data against the baseline "
            "(agreement: the same top-1 class, or for embeddings the same nearest neighbour).",
            "",
            _table(STEP_HEADER, rows),
        ]
    for title, layer_rows in transformer_tables(report):
        lines += [
            "",
            f"### {title[0].upper()}{title[1:]}",
            "",
            _table(TRANSFORMER_HEADER, layer_rows),
        ]
    return lines


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


def _warnings_section(report: Report) -> list[str]:
    if not report.warnings:
        return []
    return ["", "## Warnings", "", *(f"- {w}" for w in report.warnings)]


def _auto_section(report: Report) -> list[str]:
    parts: list[str] = []
    for auto in auto_tables(report):
        parts += [
            "",
            f"## {auto.title[0].upper()}{auto.title[1:]}",
            "",
            _table(auto.header, auto.rows),
        ]
        parts += ["", *(line + "  " for line in auto.lines)] if auto.lines else []
    return parts


def _latency_section(report: Report) -> list[str]:
    batches = latency_batches(report)
    if not batches or report.latency_profile is None:
        return []
    parts = ["", "## Latency explained", "", report.latency_profile.note]
    for batch in batches:
        parts += [
            "",
            f"### Batch {batch.batch_size}",
            "",
            f"**{batch.advice}**",
            "",
            _table(["op type", "baseline ms", "compressed ms", "share"], latency_rows(batch)),
        ]
        if batch.causes:
            parts += ["", *(f"- {c.text}; {c.advice}" for c in batch.causes)]
        assert batch.compressed is not None
        nodes = [
            [n.node, n.op_type, f"{n.us / 1000:.3f}", f"{n.share * 100:.0f} %"]
            for n in batch.compressed.top_nodes[:5]
        ]
        parts += ["", _table(["top node (as onnxruntime ran it)", "op type", "ms", "share"], nodes)]
    return parts


@register_renderer("md", "report.md")
def render_markdown(report: Report) -> str:
    env = report.environment
    parts = [
        f"# modelquant report: {report.recipe.get('name', '')}",
        "",
        f"Status: **{report.status}** · modelquant {report.modelquant_version} · {report.created}",
        *_warnings_section(report),
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
        *_steps_section(report),
        *_fallback_section(report),
        *_auto_section(report),
        *_latency_section(report),
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
    if env.distributed is not None:
        parts.append(f"- {data_parallel_line(env.distributed)}")
    for name, status in env.backends.items():
        state = "available" if status.available else f"unavailable: {status.reason}"
        parts.append(f"- backend {name}: {state}")
    return "\n".join(parts) + "\n"
