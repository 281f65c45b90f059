"""The distill stage: the KL term matters, features with projections, retention, its contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from modelquant.errors import UserError
from modelquant.stages.distill import DistillConfig
from tests.pipeline_runs import run_stage
from tests.tiny_models import build

HALF = {"factory": "tests.tiny_models:build_half"}


def teacher(checkpoint: Path) -> torch.nn.Module:
    model = build(8, 32)
    model.load_state_dict(load_file(str(checkpoint)))
    return model.eval()


def distill(checkpoint: Path, tmp_path: Path, **config: object):  # type: ignore[no-untyped-def]
    settings = {"student": HALF, "finetune": {"epochs": 2, "lr": 0.01}, **config}
    return run_stage("distill", settings, teacher(checkpoint), checkpoint, tmp_path)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        np.array_equal(x.numpy(), y.numpy())
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_kl_term_changes_the_student(tiny_checkpoint: Path, tmp_path: Path) -> None:
    task_only, _ = distill(tiny_checkpoint, tmp_path / "a", losses={"kl": 0, "task": 1})
    with_kl, details = distill(tiny_checkpoint, tmp_path / "b", losses={"kl": 0.7, "task": 0.3})
    assert not same(task_only, with_kl)
    again, _ = distill(tiny_checkpoint, tmp_path / "c", losses={"kl": 0.7, "task": 0.3})
    assert same(with_kl, again)  # deterministic under the seed
    assert details["student_params"] < details["teacher_params"]
    assert details["retention"] == pytest.approx(
        details["student_accuracy"] / details["teacher_accuracy"]
    )


def test_feature_term_with_learned_projection(tiny_checkpoint: Path, tmp_path: Path) -> None:
    features = [
        {"teacher": "features.0", "student": "features.0"},
        {"teacher": "classifier.2", "student": "classifier.2"},
    ]
    student, details = distill(
        tiny_checkpoint,
        tmp_path,
        losses={"kl": 0.5, "task": 0.5, "feature": 1.0},
        features=features,
        compare_alone=True,
    )
    assert "student_alone_accuracy" in details and "distillation_gain_pt" in details
    assert set(student.state_dict()) == set(build(2, 8).state_dict())  # projections discarded


def test_unknown_feature_layer_is_a_user_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no module named 'backbone'"):
        distill(
            tiny_checkpoint,
            tmp_path,
            losses={"kl": 1, "task": 0, "feature": 1},
            features=[{"teacher": "backbone", "student": "features.0"}],
        )


def test_current_student_keeps_the_architecture(tiny_checkpoint: Path, tmp_path: Path) -> None:
    student, details = distill(tiny_checkpoint, tmp_path, student="current")
    assert details["student_params"] == details["teacher_params"]
    assert student is not None


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        DistillConfig.model_validate({"temprature": 2})
    with pytest.raises(ValidationError, match="needs `features`"):
        DistillConfig.model_validate({"losses": {"feature": 1.0}})
    # All weights 0 leaves nothing to learn for a classifier; a sentence encoder still has the
    # cosine term by default, so this is judged once the task is known.
    zeros = DistillConfig.model_validate({"losses": {"kl": 0, "task": 0}}).losses
    with pytest.raises(UserError, match="at least one loss"):
        zeros.resolved("classification")
    assert zeros.resolved("feature-extraction").cosine == 1.0
