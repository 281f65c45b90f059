"""Nothing stale survives a rerun: no old report after a failure, no growing side files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from modelquant.cli import app
from tests.robustness.conftest import compress, runner


def test_a_bad_recipe_rerun_removes_the_old_success(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(), out).exit_code == 0
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    bad = write_recipe(name="bad.yaml", evaluat={"backends": ["cpu"]})  # a misspelled key
    result = compress(bad, out)
    assert result.exit_code == 2
    assert not (out / "report.json").exists()
    assert not (out / "report.md").exists()


def test_a_recipe_that_fails_its_plan_removes_the_old_success_without_out(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder runs/<name> is relative to here
    good = write_recipe()
    assert runner.invoke(app, ["compress", str(good)]).exit_code == 0
    report = tmp_path / "runs" / "tiny" / "report.json"
    assert report.is_file()
    bad = write_recipe(name="bad.yaml", stages=[{"quantize": {}}])  # no export before quantize
    result = runner.invoke(app, ["compress", str(bad)])
    assert result.exit_code == 2
    assert not report.exists()


def test_external_data_does_not_grow_on_rerun(tmp_path: Path) -> None:
    """An ONNX model with external data, compressed twice into one folder."""
    import torch
    import yaml

    from tests.tiny_models import build

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = model_dir / "m.onnx"
    torch.onnx.export(
        build(),
        (torch.zeros(2, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    onnx.save_model(
        onnx.load(str(path)), str(path), save_as_external_data=True, location="m.onnx.data"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "ext",
                "model": {"onnx": str(path)},
                "data": {
                    "calibration": {"source": "digits", "split": "train", "samples": 64},
                    "evaluation": {"source": "digits", "split": "test"},
                },
                "stages": [{"quantize": {}}],
                "evaluate": {"batch_sizes": [1], "warmup": 0, "repeats": 2, "block": 1},
            }
        )
    )
    out = tmp_path / "out"
    assert compress(recipe, out).exit_code == 0
    data = out / "baseline.onnx.data"
    first = data.stat().st_size
    assert compress(recipe, out).exit_code == 0
    assert data.stat().st_size == first
    onnx.checker.check_model(str(out / "baseline.onnx"))
    kept = (".cache", ".modelquant-run.json")  # the stage cache, and whose run the folder holds
    assert (
        sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in kept) == []
    )
