"""Structured pruning keeps every output's width wherever the output layer is; ignore scopes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelquant.stages.prune import output_layers
from tests.pipeline_runs import run_stage
from tests.tiny_models import build, train


class HeadFirst(nn.Module):
    """The classifier is registered before the body that feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TwoHeads(nn.Module):
    """Two 10-way heads on one body; the second is post-processed (softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.a = nn.Linear(32, 10)
        self.b = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.a(h), self.b(h).softmax(-1)


def widths(model: nn.Module) -> list[int]:
    out = model(torch.zeros(2, 1, 8, 8))
    return [t.shape[-1] for t in (out if isinstance(out, tuple) else (out,))]


def test_output_layers_are_found_by_tracing() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    assert output_layers(model, (torch.zeros(2, 1, 8, 8),)) == [model.b, model.a]
    head_first = HeadFirst()
    assert output_layers(head_first, (torch.zeros(2, 1, 8, 8),)) == [head_first.head]


def test_structured_keeps_every_output_width(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for cls in (HeadFirst, TwoHeads):
        torch.manual_seed(0)
        model = cls().eval()
        config = {"method": "structured", "sparsity": 0.5}
        pruned, details = run_stage(
            "prune", config, model, tiny_checkpoint, tmp_path / cls.__name__
        )
        assert widths(pruned) == widths(model), cls.__name__
        assert pruned.body[1].out_features == 16  # the hidden layer did lose half its neurons
        assert details["reached_sparsity"] == 0.5
        assert details["per_layer_sparsity"]["body.1"] == 0.5


def test_structured_reports_channel_sparsity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = {"method": "structured", "sparsity": 0.5}
    _, details = run_stage("prune", config, train(build(8, 32), 1), tiny_checkpoint, tmp_path)
    assert details["kept_output_layers"] == ["classifier.3"]
    assert details["per_layer_sparsity"] == {
        "features.0": 0.5,
        "classifier.1": 0.5,
        "classifier.3": 0.0,
    }
    assert details["reached_sparsity"] == 0.5


def test_an_ignore_rule_naming_a_container_covers_its_layers(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config = {"sparsity": 0.5, "ignore": ["classifier"]}
    _, details = run_stage("prune", config, train(build(8, 32), 1), tiny_checkpoint, tmp_path)
    assert set(details["per_layer_sparsity"]) == {"features.0"}
