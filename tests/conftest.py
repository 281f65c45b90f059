"""Shared fixtures: a tiny trained digits checkpoint and recipe files written into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tiny_models import build, train


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN (8 channels, 32 hidden) trained for 5 epochs on digits, as safetensors."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(train(build(8, 32), epochs=5).state_dict(), str(path))
    return path


def tiny_recipe_dict(checkpoint: Path, **changes: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "model": {
            "factory": "tests.tiny_models:build",
            "kwargs": {"width": 8, "hidden": 32},
            "checkpoint": str(checkpoint),
        },
        "data": {
            "train": {"source": "digits", "split": "train"},
            "calibration": {"source": "digits", "split": "train", "samples": 128},
            "evaluation": {"source": "digits", "split": "test"},
        },
        "stages": [
            {"export": {"opset": 17}},
            {"quantize": {"precision": "int8", "mode": "static"}},
        ],
        "evaluate": {
            "backends": ["cpu"],
            "batch_sizes": [1, 8],
            "warmup": 1,
            "repeats": 10,
            "block": 5,
            "threads": 1,
        },
        "gates": {"max_accuracy_drop": 0.05},
    }
    recipe.update(changes)
    return recipe


@pytest.fixture
def write_recipe(tmp_path: Path, tiny_checkpoint: Path) -> Callable[..., Path]:
    """write_recipe(**top_level_changes) -> path of a recipe YAML for the tiny model."""

    def write(text: str | None = None, name: str = "recipe.yaml", **changes: Any) -> Path:
        path = tmp_path / name
        body = (
            text
            if text is not None
            else yaml.safe_dump(tiny_recipe_dict(tiny_checkpoint, **changes), sort_keys=False)
        )
        path.write_text(body)
        return path

    return write


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs under GitHub Actions would append every test's report to the job's summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """One real run of the tiny recipe (report.json, report.md, junit.xml and its stage cache),
    shared by the report tests: read it, or copy the folder before changing anything."""
    from tests.pipeline_runs import run_recipe

    out = tmp_path_factory.mktemp("tiny-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GITHUB_STEP_SUMMARY", raising=False)
        run_recipe(tiny_checkpoint, out, output={"formats": ["json", "md", "junit"]})
    return out
