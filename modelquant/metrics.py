"""Task metrics, each knowing whether higher is better: top-1 for classification, similarity to the
reference model's embeddings for feature extraction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


TOP1 = Metric("top1", higher_is_better=True)
COSINE = Metric("cosine", higher_is_better=True)
"""Mean cosine similarity of each sample's embedding to the reference (FP32) model's."""


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose highest logit is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples whose top-1 class matches the reference's."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.argmax(reference, axis=-1)))


def mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers' mean pooling makes them: the average of the
    token embeddings over the tokens the attention mask keeps (padding left out)."""
    mask = attention_mask.astype(np.float64)[..., None]
    summed = (token_embeddings.astype(np.float64) * mask).sum(axis=1)
    return summed / np.clip(mask.sum(axis=1), 1e-9, None)


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-MiniLM-L6-v2's model card normalizes after pooling)."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.clip(norms, 1e-12, None)


def cosines(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity between two sets of embeddings of the same samples."""
    return np.sum(normalize(embeddings) * normalize(reference), axis=-1)


@dataclass(frozen=True)
class CosineStats:
    mean: float
    p5: float
    min: float


def cosine_stats(embeddings: np.ndarray, reference: np.ndarray) -> CosineStats:
    """Mean, 5th percentile and minimum of the per-sample cosine to the reference."""
    c = cosines(embeddings, reference)
    return CosineStats(float(c.mean()), float(np.percentile(c, 5)), float(c.min()))


def neighbour_agreement(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples whose nearest other sample (by cosine) is the same under both models:
    what a semantic search over these sentences would return first."""
    if len(reference) < 2:
        raise ValueError("nearest-neighbour agreement needs at least two samples")

    def nearest(e: np.ndarray) -> np.ndarray:
        unit = normalize(e.astype(np.float64))
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        return np.argmax(sim, axis=1)

    return float(np.mean(nearest(embeddings) == nearest(reference)))
