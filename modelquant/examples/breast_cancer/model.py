"""A tabular MLP in the shape of fastai's `TabularModel` for continuous features: a BatchNorm1d
on the raw measurements, then Linear-ReLU-BatchNorm blocks and a linear head."""

from __future__ import annotations

import torch
from torch import nn

N_FEATURES = 30
N_CLASSES = 2


class TabularMLP(nn.Module):
    """Input N x 30 raw measurements (unscaled); output N x 2 logits.

    `bn_cont` standardizes the raw features inside the model (fastai's `bn_cont`), so the model
    takes the table as measured and no scaler has to ship beside it. The blocks are fastai's
    `LinBnDrop(lin_first=True)` without dropout: Linear (no bias, the BatchNorm has one), ReLU,
    BatchNorm1d; sizes 200 and 100 are fastai's default `layers=[200, 100]`.
    """

    def __init__(self, hidden: tuple[int, ...] = (200, 100)) -> None:
        super().__init__()
        self.bn_cont = nn.BatchNorm1d(N_FEATURES)
        blocks: list[nn.Module] = []
        width = N_FEATURES
        for size in hidden:
            blocks += [nn.Linear(width, size, bias=False), nn.ReLU(), nn.BatchNorm1d(size)]
            width = size
        blocks.append(nn.Linear(width, N_CLASSES))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.bn_cont(x))


def build() -> nn.Module:
    """fastai's default sizes: BatchNorm on the 30 inputs, blocks of 200 and 100, 2 logits."""
    return TabularMLP((200, 100))
