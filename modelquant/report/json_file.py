"""report.json: the Report itself, the source every other format renders from."""

from __future__ import annotations

from modelquant.report import register_renderer
from modelquant.report.model import Report


@register_renderer("json", "report.json")
def render_json(report: Report) -> str:
    return report.model_dump_json(indent=2)
