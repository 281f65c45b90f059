"""Run a tiny recipe through the real Pipeline in tests, returning the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelquant.pipeline import Pipeline
from modelquant.recipe import Recipe
from modelquant.report.model import Report
from tests.conftest import tiny_recipe_dict


def run_recipe(checkpoint: Path, out: Path, **changes: Any) -> tuple[Report, Pipeline]:
    recipe = Recipe.model_validate(tiny_recipe_dict(checkpoint, **changes))
    pipeline = Pipeline(recipe, out / "recipe.yaml", out)
    report = pipeline.run()
    pipeline.write_report(report)
    return report, pipeline
