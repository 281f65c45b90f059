"""Task metrics, each knowing whether higher is better."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


TOP1 = Metric("top1", higher_is_better=True)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose highest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples whose top-1 class matches the reference's."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.argmax(reference, axis=-1)))
