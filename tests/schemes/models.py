"""Tiny models whose graphs onnxruntime's pre-processing rewrites (node names change)."""

from __future__ import annotations

import torch
from torch import nn


class MixerCNN(nn.Module):
    """A conv block, then a Linear along the last axis of the 4-D feature map (exported as
    MatMul + Add, which `quant_pre_process` fuses into one Gemm named
    '/mixer/MatMul/MatMulAddFusion'), a GELU (Erf at opset 17, which QNN pre-processing fuses
    into one Gelu node named 'Gelu_fused_Erf_0'), then the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mixer = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.mixer(self.features(x))))


def build_mixer() -> nn.Module:
    torch.manual_seed(0)
    return MixerCNN().eval()
