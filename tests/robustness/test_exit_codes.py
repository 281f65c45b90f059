"""Exit codes are a contract: 1 only for a failed gate, 2 for bad input, 3 for anything else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.robustness.conftest import compress, last_line


def test_an_unexpected_error_exits_3_naming_the_step(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelquant.evaluator

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug nobody expected")

    monkeypatch.setattr(modelquant.evaluator, "evaluate_models", broken)
    result = compress(write_recipe(), tmp_path / "out")
    assert result.exit_code == 3, result.output
    line = last_line(result)
    assert "internal error during measuring" in line
    assert "ZeroDivisionError: a bug nobody expected" in line
    assert "--debug" in line
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_unexpected_error_inside_a_stage_names_the_stage(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelquant.pipeline.cache

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("x")

    monkeypatch.setattr(modelquant.pipeline.cache, "state_content_hash", broken)
    result = compress(write_recipe(), tmp_path / "out")
    assert result.exit_code == 3, result.output
    assert "during stage 1 export: KeyError" in last_line(result)


def test_debug_shows_the_traceback(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelquant.evaluator

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug nobody expected")

    monkeypatch.setattr(modelquant.evaluator, "evaluate_models", broken)
    result = compress(write_recipe(), tmp_path / "out", "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, ZeroDivisionError)


def test_out_naming_a_file_exits_2(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    result = compress(write_recipe(), target)
    assert result.exit_code == 2, result.output
    assert "is a file; give --out a folder" in last_line(result)
    assert target.read_text() == "not a folder"


def test_out_that_cannot_be_created_exits_2(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = compress(write_recipe(), blocker / "sub")  # a folder inside a file: never writable
    assert result.exit_code == 2, result.output
    assert "cannot write to output folder" in last_line(result)


def test_only_a_gate_exits_1(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    result = compress(write_recipe(), tmp_path / "out", "--set", "gates.max_size_ratio=0.01")
    assert result.exit_code == 1
    assert "max_size_ratio" in last_line(result)


def _export(module: object, sample: object, path: Path, name: str) -> Path:
    import torch

    torch.onnx.export(
        module,  # type: ignore[arg-type]
        (sample,),
        str(path),
        dynamo=False,
        input_names=[name],
        output_names=["out"],
        dynamic_axes={name: {0: "batch"}, "out": {0: "batch"}},
    )
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_evaluate_with_a_model_the_data_does_not_fit_exits_2(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    import torch

    from modelquant.cli import app
    from tests.robustness.conftest import runner

    model = _export(torch.nn.Linear(10, 3), torch.zeros(2, 10), tmp_path / "m.onnx", "features")
    result = runner.invoke(app, ["evaluate", str(write_recipe()), "-m", str(model)])
    assert result.exit_code == 2, result.output
    assert "data.evaluation" in last_line(result)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_evaluate_with_another_input_name_maps_the_one_array(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    import torch

    from modelquant.cli import app
    from tests.robustness.conftest import runner
    from tests.tiny_models import build

    model = _export(build(8, 32), torch.zeros(2, 1, 8, 8), tmp_path / "m.onnx", "x")
    result = runner.invoke(app, ["evaluate", str(write_recipe()), "-m", str(model), "--json"])
    assert result.exit_code == 0, result.output
