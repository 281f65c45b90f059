"""The output folder has one writer: rank 0 (under torchrun), through temp names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelquant.pipeline import Pipeline
from modelquant.recipe import load_recipe


def test_other_ranks_run_stages_but_write_nothing(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    recipe = write_recipe()
    out = tmp_path / "out"
    result = Pipeline(load_recipe(recipe), recipe, out).run_stages()
    assert [r.name for r in result.state.lineage] == ["export", "quantize"]
    assert result.state.onnx_path is not None and result.state.onnx_path.is_file()
    assert not out.exists()


def test_rank_0_publishes(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe()
    out = tmp_path / "out"
    result = Pipeline(load_recipe(recipe), recipe, out).run_stages()
    assert result.compressed == out / "model.int8.onnx" and result.compressed.is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
