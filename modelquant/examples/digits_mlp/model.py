"""The digits MLP: three Linear layers (64 -> 512 -> 512 -> 10), nearly all weights in MatMuls."""

from __future__ import annotations

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """Input N x 1 x 8 x 8 in [0, 1]; output N x 10 logits.

    The 64 pixels go through two hidden layers of `hidden` units with ReLU, then 10 logits. With
    512 hidden units 300,032 of its 301,066 parameters (99.7 %) are Linear weights, the tensors
    weight-only INT4 (onnxruntime's MatMulNBits) compresses; the digits CNN keeps most of its
    weights in convolutions, which MatMulNBits cannot take.
    """

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build() -> nn.Module:
    """The MLP of the example: 64 -> 512 -> 512 -> 10."""
    return DigitsMLP(hidden=512)
