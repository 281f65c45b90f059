"""Run a tiny recipe through the real Pipeline in tests, returning the report."""

from __future__ import annotations

import dataclasses
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


def run_stage(
    name: str,
    config: dict[str, Any],
    module: Any,
    checkpoint: Path,
    tmp_path: Path,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Run one registered stage on a torch module with the tiny recipe's data; (module, details)."""
    from modelquant.stages import registered_stages
    from modelquant.state import ModelState

    recipe = Recipe.model_validate(tiny_recipe_dict(checkpoint, seed=seed))
    pipeline = Pipeline(recipe, tmp_path / "recipe.yaml", tmp_path)
    stage_cls = registered_stages()[name]
    stage = stage_cls(stage_cls.Config.model_validate(config))
    state = ModelState(module=module)
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    ctx = dataclasses.replace(pipeline.context(state), work_dir=tmp_path / "work")
    out = stage.run(state, ctx)
    return out.module, ctx.details
