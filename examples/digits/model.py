"""The digits CNN: two 3x3 convolutions, a max-pool, and a two-layer classifier head."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Input N x 1 x 8 x 8 in [0, 1]; output N x 10 logits.

    Sized (118,186 parameters at width 32, hidden 96) so that INT8 has work to speed up: a
    6k-parameter digits CNN runs INT8 slower than FP32 and its ONNX file is mostly graph.
    """

    def __init__(self, width: int = 32, hidden: int = 96) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """The full-size CNN (118,186 parameters)."""
    return DigitsCNN(width=32, hidden=96)


def build_half() -> nn.Module:
    """Half the convolution widths and hidden units (29,914 parameters): a distillation student."""
    return DigitsCNN(width=16, hidden=48)
