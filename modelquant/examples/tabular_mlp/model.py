"""A tabular MLP with BatchNorm and GELU: the 64 digit pixels as a table of 64 features."""

from __future__ import annotations

import torch
from torch import nn


class TabularMLP(nn.Module):
    """Input N x 1 x 8 x 8 in [0, 1] (read as 64 features); output N x 10 logits.

    The shape of a modern tabular MLP: blocks of Linear (no bias: the BatchNorm after it has
    one), BatchNorm1d and GELU, then a linear head. 64 -> 256 -> 256 -> 10 is 85,514 parameters.
    Exported as is, each block is Gemm, BatchNormalization and GELU, which opset 17 spells as five
    elementwise ops (Div, Erf, Add, Mul, Mul); quantized as is, every one of them gets its own
    Q/DQ pairs and the model is slower than in float. This is the example for `mode: auto` and
    the graph preparation before quantizing (BatchNorm folded, GELU as one op).
    """

    def __init__(self, hidden: tuple[int, ...] = (256, 256), features: int = 64) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        width = features
        for size in hidden:
            blocks += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.GELU()]
            width = size
        blocks.append(nn.Linear(width, 10))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build() -> nn.Module:
    """The example's MLP: 64 -> 256 -> 256 -> 10 with BatchNorm and GELU."""
    return TabularMLP((256, 256))
