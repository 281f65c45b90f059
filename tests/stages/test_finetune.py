"""Fine-tuning: lowers the loss, is deterministic, needs training data."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelquant.errors import UserError
from modelquant.pipeline import Pipeline
from modelquant.recipe import Recipe
from modelquant.stages import StageContext
from modelquant.stages.finetune import FinetuneConfig, finetune
from modelquant.state import ModelState
from tests.conftest import tiny_recipe_dict
from tests.tiny_models import build


def context(tmp_path: Path, **changes: object) -> StageContext:
    recipe = Recipe.model_validate(tiny_recipe_dict(tmp_path / "x.safetensors", **changes))
    return Pipeline(recipe, tmp_path / "r.yaml", tmp_path).context(ModelState())


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_loss_goes_down(tmp_path: Path, optimizer: str) -> None:
    cfg = FinetuneConfig(epochs=3, lr=0.01, optimizer=optimizer)
    curve = finetune(build(), context(tmp_path), cfg)
    assert curve["loss_last_epoch"] < curve["loss_first_epoch"]


def test_missing_train_data_is_a_user_error(tmp_path: Path) -> None:
    data = {"evaluation": {"source": "digits", "split": "test"}}
    with pytest.raises(UserError, match="needs data.train"):
        finetune(build(), context(tmp_path, data=data), FinetuneConfig(epochs=1))


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        FinetuneConfig.model_validate({"epoch": 3})
