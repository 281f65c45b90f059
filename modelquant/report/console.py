"""The rich console view of a Report: comparison, stages, the auto-mode candidates, gates, and
the latency section when the compressed model was slower somewhere."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelquant.report.model import Report
from modelquant.report.rows import (
    STEP_HEADER,
    TRANSFORMER_HEADER,
    auto_tables,
    comparison_rows,
    fallback_rows,
    gate_cells,
    latency_batches,
    latency_rows,
    stage_notes,
    step_rows,
    transformer_tables,
)

LATENCY_OP_ROWS = 6
"""Op types shown per batch size in the console's latency section (report.json has them all)."""


def render_console(report: Report, console: Console) -> None:
    table = Table(title=f"modelquant · {report.recipe.get('name', '')}", title_justify="left")
    for col in ("", "baseline", "compressed", "delta"):
        table.add_column(col, justify="left" if not col else "right")
    for row in comparison_rows(report):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if report.stages:
        stages = Table(title="stages", title_justify="left")
        for col in ("#", "stage", "seconds", "notes"):
            stages.add_column(col)
        for i, s in enumerate(report.stages, 1):
            notes = stage_notes(s.settings, s.details)
            stages.add_row(
                str(i), s.name, f"{s.seconds:.2f}" + (" cached" if s.cached else ""), escape(notes)
            )
        console.print(stages)
    steps = step_rows(report)
    if steps:
        table = Table(title="after each stage (evaluation data)", title_justify="left")
        for i, col in enumerate(STEP_HEADER):
            table.add_column(col, justify="right" if 0 < i < 5 else "left")
        for cells in steps:
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
    for title, rows in transformer_tables(report):
        table = Table(title=title, title_justify="left")
        for i, col in enumerate(TRANSFORMER_HEADER):
            table.add_column(col, justify="left" if i == 3 else "right")
        for cells in rows:
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
    rounds = fallback_rows(report)
    if rounds:
        table = Table(title="accuracy-aware fallback (validation data)", title_justify="left")
        for col in ("round", "higher precision", "metric", "drop", "size"):
            table.add_column(col)
        for cells in rounds:
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
    for auto in auto_tables(report):
        table = Table(title=auto.title, title_justify="left")
        for i, col in enumerate(auto.header):
            table.add_column(col, justify="right" if 2 <= i < len(auto.header) - 1 else "left")
        for cells in auto.rows:
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
        for line in auto.lines:
            console.print(escape(line), highlight=False, soft_wrap=True)
    _latency(report, console)
    if report.gates:
        gates = Table(title="gates", title_justify="left")
        for col in ("gate", "threshold", "value", "result", "detail"):
            gates.add_column(col)
        for g in report.gates:
            threshold, value = gate_cells(g)
            gates.add_row(
                escape(g.name),
                threshold,
                value,
                "[green]pass[/]" if g.passed else "[red]FAIL[/]",
                escape(g.detail),
            )
        console.print(gates)


def _latency(report: Report, console: Console) -> None:
    """Per profiled batch size: the advice line and the costliest op types."""
    for batch in latency_batches(report):
        table = Table(
            title=f"latency explained, batch {batch.batch_size} (ms per run)",
            title_justify="left",
        )
        for col in ("op type", "baseline ms", "compressed ms", "share"):
            table.add_column(col, justify="left" if col == "op type" else "right")
        for cells in latency_rows(batch, LATENCY_OP_ROWS):
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
        style = "yellow" if batch.slower else "green"
        console.print(f"[{style}]{escape(batch.advice)}[/]", highlight=False, soft_wrap=True)
