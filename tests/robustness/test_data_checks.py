"""Bad data is refused before any stage runs (and in --dry-run): exit 2, one line naming the entry.

Every case goes through the CLI (`compress RECIPE --dry-run`) with a recipe written in tmp_path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.data import digits

runner = CliRunner()


def dry_run(recipe: Path) -> Any:
    return runner.invoke(app, ["compress", str(recipe), "--dry-run", "--out", str(recipe.parent)])


def refused(result: Any, *expected: str) -> str:
    """The one error line (log lines start with '·'); exit 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("·")]
    assert len(errors) == 1, result.output
    (line,) = errors
    assert line.startswith("bad input:"), line
    for text in expected:
        assert text in line, line
    return line


def digits_test() -> tuple[np.ndarray, np.ndarray]:
    data = digits.load("test")
    assert data.labels is not None
    return data.inputs["input"], data.labels


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny digits CNN (untrained) as ONNX, input 'input' (N x 1 x 8 x 8), 10 classes."""
    from modelquant.state import export_onnx
    from tests.tiny_models import build

    x, _ = digits_test()
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    return export_onnx(build(), {"input": x[:2]}, path)


@pytest.fixture(scope="module")
def table_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tabular model: Linear(4 features -> 3 classes), input 'features'."""
    import torch

    from modelquant.state import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "table.onnx"
    return export_onnx(torch.nn.Linear(4, 3), {"features": np.zeros((2, 4), np.float32)}, path)


def onnx_recipe(tmp_path: Path, model: Path, **data: dict[str, Any]) -> Path:
    """A recipe quantizing an ONNX model; `data` entries replace the digits defaults."""
    entries: dict[str, Any] = {
        "train": {"source": "digits", "split": "train"},
        "evaluation": {"source": "digits", "split": "test"},
    }
    entries.update(data)
    body = {
        "name": "t",
        "model": {"onnx": str(model)},
        "data": entries,
        "stages": [{"quantize": {"precision": "int8"}}],
        "evaluate": {"backends": ["cpu"], "batch_sizes": [1], "warmup": 1, "repeats": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> dict[str, Any]:
    np.savez(tmp_path / name, **arrays)  # type: ignore[arg-type]
    return {"source": "npz", "path": str(tmp_path / name)}


# ---------------------------------------------------------------- input names


def test_input_names_differ_from_the_onnx_inputs(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    evaluation = npz(tmp_path, x=x, mask=x, labels=y)
    line = refused(dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=evaluation)))
    assert "data.evaluation" in line and "['x', 'mask']" in line and "['input']" in line
    assert "inputs:" in line


def test_one_array_feeds_a_one_input_model_whatever_its_name(
    tmp_path: Path, digits_onnx: Path
) -> None:
    x, y = digits_test()
    result = dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=npz(tmp_path, x=x, labels=y)))
    assert result.exit_code == 0, result.output
    assert "array 'x' feeds the model's only input 'input'" in result.output


# ---------------------------------------------------------------- dtypes


def test_integers_that_float32_cannot_hold_are_refused(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    ints = (x * 16).astype(np.int64)
    ints[5, 0, 0, 0] = 2**24 + 1  # not representable in float32
    evaluation = npz(tmp_path, input=ints, labels=y)
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=evaluation)),
        "data.evaluation",
        "'input' is int64 but the model takes float32",
        "row 5",
    )


def test_float64_data_is_cast_for_a_float32_model(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    evaluation = npz(tmp_path, input=x.astype(np.float64), labels=y)
    result = dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=evaluation))
    assert result.exit_code == 0, result.output
    assert "cast from float64 to float32" in result.output


# ---------------------------------------------------------------- shapes


def test_rows_shaped_unlike_the_onnx_input(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    wide = np.zeros((len(x), 1, 8, 9), np.float32)
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=npz(tmp_path, input=wide, labels=y))),
        "data.evaluation",
        "(1, 8, 9)",
        "(1, 8, 8)",
    )


def test_rows_a_torch_model_cannot_take(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    x, y = digits_test()
    two_channels = np.zeros((len(x), 2, 8, 8), np.float32)
    np.savez(tmp_path / "wide.npz", input=two_channels, labels=y)
    recipe = write_recipe(
        data={
            "train": {"source": "digits", "split": "train"},
            "evaluation": {"source": "npz", "path": str(tmp_path / "wide.npz")},
        }
    )
    refused(dry_run(recipe), "data.evaluation", "forward fails on 2 rows", "(2, 2, 8, 8)")


def test_csv_feature_count_unlike_the_tabular_model(tmp_path: Path, table_onnx: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,c,d,e,target\n" + "1,2,3,4,5,0\n" * 4)
    table = {"source": "csv", "path": str(tmp_path / "t.csv"), "labels": "target"}
    recipe = onnx_recipe(tmp_path, table_onnx, train=table, evaluation=table)
    refused(dry_run(recipe), "data.evaluation", "5 features, the model takes 4")


def test_csv_fits_the_tabular_model(tmp_path: Path, table_onnx: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b,c,d,target\n" + "1,2,3,4,0\n5,6,7,8,2\n" * 3)
    (tmp_path / "test.csv").write_text("a,b,c,d,target\n" + "2,2,3,4,1\n")
    recipe = onnx_recipe(
        tmp_path,
        table_onnx,
        train={"source": "csv", "path": str(tmp_path / "train.csv"), "labels": "target"},
        evaluation={"source": "csv", "path": str(tmp_path / "test.csv"), "labels": "target"},
    )
    result = dry_run(recipe)
    assert result.exit_code == 0, result.output
    assert "feeds the model's only input 'features'" in result.output


# ---------------------------------------------------------------- values, rows, labels


def test_nan_in_inputs(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    x = x.copy()
    x[7, 0, 3, 3] = np.nan
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=npz(tmp_path, input=x, labels=y))),
        "data.evaluation",
        "'input' holds NaN or Inf",
        "row 7",
    )


def test_inf_in_calibration(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    x = x.copy()
    x[3, 0, 0, 0] = np.inf
    train = npz(tmp_path, "train.npz", input=x, labels=y)
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, train=train)),
        "data.train (used for calibration)",
        "row 3",
    )


def test_empty_data_set(tmp_path: Path, digits_onnx: Path) -> None:
    empty = npz(tmp_path, input=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=empty)),
        "data.evaluation has no rows",
    )


def test_labels_outside_the_models_classes(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    y = y.copy()
    y[4] = 12
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=npz(tmp_path, input=x, labels=y))),
        "data.evaluation",
        "label 12 at row 4",
        "10 classes",
    )


def test_labels_outside_a_torch_models_classes(
    tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    x, y = digits_test()
    np.savez(tmp_path / "e.npz", input=x, labels=np.where(np.arange(len(y)) == 9, 10, y))
    recipe = write_recipe(
        data={
            "train": {"source": "digits", "split": "train"},
            "evaluation": {"source": "npz", "path": str(tmp_path / "e.npz")},
        }
    )
    refused(dry_run(recipe), "data.evaluation", "label 10 at row 9")


def test_non_integer_labels(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    labels = y.astype(np.float64)
    labels[2] = 1.5
    refused(
        dry_run(
            onnx_recipe(tmp_path, digits_onnx, evaluation=npz(tmp_path, input=x, labels=labels))
        ),
        "data.evaluation",
        "label 1.5 at row 2 is not a class index",
    )


# ---------------------------------------------------------------- splits (at recipe load)


def test_split_on_a_source_without_splits(tmp_path: Path, digits_onnx: Path) -> None:
    x, y = digits_test()
    evaluation = {**npz(tmp_path, input=x, labels=y), "split": "test"}
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, evaluation=evaluation)),
        "data.evaluation",
        "source npz has no splits",
    )


def test_missing_split_on_a_source_with_splits(tmp_path: Path, digits_onnx: Path) -> None:
    refused(
        dry_run(onnx_recipe(tmp_path, digits_onnx, train={"source": "digits"})),
        "data.train",
        "needs split",
    )


# ---------------------------------------------------------------- overlap with evaluation


def test_calibration_that_is_the_evaluation_data(tmp_path: Path, digits_onnx: Path) -> None:
    refused(
        dry_run(
            onnx_recipe(tmp_path, digits_onnx, calibration={"source": "digits", "split": "test"})
        ),
        "data.calibration is the evaluation data",
        "allow_overlap: true",
    )


def test_training_rows_shared_with_the_evaluation_data(
    tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    recipe = write_recipe(
        data={
            "train": {"source": "digits", "split": "all"},
            "evaluation": {"source": "digits", "split": "test"},
        }
    )
    refused(
        dry_run(recipe),
        "data.train (used for calibration) shares 450 of its 1797 rows (digits:all) with "
        "data.evaluation (digits:test)",
        "allow_overlap: true on data.train",
    )


def test_allow_overlap_lets_it_through(tmp_path: Path, digits_onnx: Path) -> None:
    calibration = {"source": "digits", "split": "test", "allow_overlap": True}
    result = dry_run(onnx_recipe(tmp_path, digits_onnx, calibration=calibration))
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- a float64 npz runs


def test_compress_on_float64_npz_runs(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    x, y = digits_test()
    np.savez(tmp_path / "e.npz", input=x.astype(np.float64), labels=y)
    recipe = write_recipe(
        data={
            "train": {"source": "digits", "split": "train"},
            "calibration": {"source": "digits", "split": "train", "samples": 64},
            "evaluation": {"source": "npz", "path": str(tmp_path / "e.npz")},
        }
    )
    result = runner.invoke(app, ["compress", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.json").is_file()
