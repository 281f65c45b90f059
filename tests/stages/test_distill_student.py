"""Distilling into the incoming (pruned) model keeps its zeros; task weights per output head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelquant.errors import UserError
from modelquant.state import parameter_counts
from tests.pipeline_runs import run_stage
from tests.tiny_models import TinyCNN, build, train


def test_current_student_keeps_its_pruned_zeros(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = train(build(8, 32), 1)
    pruned, _ = run_stage("prune", {"sparsity": 0.5}, model, tiny_checkpoint, tmp_path / "p")
    zeros = parameter_counts(pruned)[0] - parameter_counts(pruned)[1]
    config = {"student": "current", "finetune": {"epochs": 1, "lr": 0.01}, "compare_alone": True}
    student, details = run_stage("distill", config, pruned, tiny_checkpoint, tmp_path / "d")
    assert parameter_counts(student)[0] - parameter_counts(student)[1] >= zeros
    assert details["held_zeros"] >= zeros
    assert not any(n.endswith("_orig") for n, _ in student.named_parameters())
    after = student.state_dict()
    for name, before in pruned.state_dict().items():
        assert bool((after[name][before == 0] == 0).all()), name


class TwoHeadCNN(TinyCNN):
    """TinyCNN with a second 10-way head on the same features."""

    def __init__(self) -> None:
        super().__init__(8, 32)
        self.aux = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        f = self.features(x)
        return self.classifier(f), self.aux(f.flatten(1))


def build_two_heads() -> nn.Module:
    torch.manual_seed(0)
    return TwoHeadCNN()


def test_task_weights_per_output_head(tiny_checkpoint: Path, tmp_path: Path) -> None:
    teacher = train(build(8, 32), 1)
    student = {"factory": "tests.stages.test_distill_student:build_two_heads"}
    base = {"student": student, "finetune": {"epochs": 1, "lr": 0.01}}
    one, _ = run_stage(
        "distill",
        {**base, "losses": {"kl": 0.5, "task": [0.5, 0.0]}},
        teacher,
        tiny_checkpoint,
        tmp_path / "a",
    )
    both, details = run_stage(
        "distill",
        {**base, "losses": {"kl": 0.5, "task": [0.5, 0.5]}},
        teacher,
        tiny_checkpoint,
        tmp_path / "b",
    )
    assert not torch.equal(one.aux.weight, both.aux.weight)  # the second head's term trained it
    assert "retention" in details
    _, kl_only = run_stage(
        "distill",
        {**base, "losses": {"kl": 1, "task": [0, 0]}, "compare_alone": True},
        teacher,
        tiny_checkpoint,
        tmp_path / "k",
    )
    assert kl_only["student_alone_accuracy"] > 0.2  # alone, the labels still teach it
    with pytest.raises(UserError, match="lists 3 weight"):
        run_stage(
            "distill",
            {**base, "losses": {"task": [1, 1, 1]}},
            teacher,
            tiny_checkpoint,
            tmp_path / "c",
        )
