"""The bundled recipes and the digits example live in the package and run from any folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import modelquant
from modelquant.cli import app
from modelquant.models import resolve_path

PACKAGE = Path(modelquant.__file__).resolve().parent
REPO = PACKAGE.parent
BUNDLED = sorted((PACKAGE / "recipes").glob("*.yaml"))


def test_top_level_folders_are_links_into_the_package() -> None:
    for name in ("recipes", "examples"):
        assert (REPO / name).resolve() == PACKAGE / name, f"{name}/ must point into modelquant/"


def test_example_checkpoint_resolves_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    found = resolve_path(Path("examples/digits/cnn.safetensors"), [tmp_path], "checkpoint")
    assert found == PACKAGE / "examples/digits/cnn.safetensors"


def test_a_copied_bundled_recipe_plans_in_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "elsewhere" / "x.yaml"
    copy.parent.mkdir()
    shutil.copy(PACKAGE / "recipes" / "digits-int8.yaml", copy)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["compress", str(copy), "--out", str(tmp_path / "out"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_recipes_validate_on_val_and_gate_on_test(path: Path) -> None:
    from modelquant.recipe import load_recipe

    data = load_recipe(path).data
    # The text source names its splits by role; the tables have train/val/test.
    text = data.evaluation.source == "text"
    val, test, tune = (
        ("validation", "evaluation", "calibration") if text else ("val", "test", "train")
    )
    assert data.validation is not None and data.validation.split == val
    assert data.evaluation.split == test
    for entry in (data.train, data.calibration):
        assert entry is None or entry.split == tune


def test_compress_takes_a_bundled_recipe_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["compress", "digits-int8", "--out", str(tmp_path / "out"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "data.evaluation: digits:test, 450 samples" in result.output
