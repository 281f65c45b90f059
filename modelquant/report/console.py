"""The rich console view of a Report: comparison, stages, gates."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelquant.report.model import Report
from modelquant.report.rows import comparison_rows, fallback_rows, gate_cells, stage_notes


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
    rounds = fallback_rows(report)
    if rounds:
        table = Table(title="accuracy-aware fallback (validation data)", title_justify="left")
        for col in ("round", "higher precision", "metric", "drop", "size"):
            table.add_column(col)
        for cells in rounds:
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
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
