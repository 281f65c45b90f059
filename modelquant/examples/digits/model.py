"""The digits CNN: three 3x3 convolutions at full 8x8 resolution, one max-pool, a two-layer head."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Input N x 1 x 8 x 8 in [0, 1]; output N x 10 logits.

    The convolutions have `width // 2`, `2 * width` and `4 * width` channels (16, 64, 128 by
    default) and all run at 8 x 8, so most of the work is in two convolutions with a deep
    reduction (16 x 9 and 64 x 9): that is what INT8 kernels speed up. A small first convolution
    keeps the single-channel input layer, which INT8 runs slower than FP32, cheap. A 4 x 4
    max-pool then leaves 4 * width x 2 x 2 features for the head (`hidden` units, then 10).
    """

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * 2 * 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """The full-size CNN: convolutions of 16, 64 and 128 channels, 128 hidden units."""
    return DigitsCNN(width=32, hidden=128)


def build_half() -> nn.Module:
    """Half the convolution widths (8, 32, 64) and hidden units (64): a distillation student."""
    return DigitsCNN(width=16, hidden=64)
