"""Tiny digits models (a few KB) that the tests build and train in a second."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, width: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(width: int = 4, hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(width, hidden)


def build_half() -> nn.Module:
    return build(width=2, hidden=8)


def train(model: nn.Module, epochs: int = 3, seed: int = 0) -> nn.Module:
    """A few epochs of Adam on digits train: enough for ~90 % test accuracy."""
    from modelquant.data import digits

    torch.manual_seed(seed)
    data = digits.load("train")
    x = torch.from_numpy(data.inputs["input"])
    y = torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


class CeluCNN(TinyCNN):
    """TinyCNN with a CELU activation: an op (Celu) the QNN HTP backend refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier[2] = nn.CELU()


def build_celu() -> nn.Module:
    torch.manual_seed(0)
    return CeluCNN()
