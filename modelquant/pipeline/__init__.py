"""Running a recipe, split by idea: `plan` (recipe -> checked stages and data), `cache` (content
keys and stage outputs), `artifacts` (the one writer of the output folder), `run` (stages in order),
`measure` (evaluator, gates, report)."""

from __future__ import annotations

from modelquant.pipeline.artifacts import REPORT_FILES, write_atomic
from modelquant.pipeline.run import Pipeline, StagesResult

__all__ = ["REPORT_FILES", "Pipeline", "StagesResult", "write_atomic"]
