"""Embedding metrics as the report uses them: pooling that ignores padding, cosine statistics,
nearest-neighbour agreement."""

from __future__ import annotations

import numpy as np

from modelquant import metrics
from modelquant.tasks import FEATURE_EXTRACTION


def test_mean_pooling_ignores_padding_tokens() -> None:
    tokens = np.array([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    assert metrics.mean_pool(tokens, mask).tolist() == [[2.0, 1.0]]


def test_the_task_pools_and_normalizes_token_embeddings() -> None:
    tokens = np.array([[[3.0, 0.0], [3.0, 8.0], [50.0, -50.0]]], dtype=np.float32)
    out = FEATURE_EXTRACTION.reduce({"attention_mask": np.array([[1, 1, 0]])}, tokens)
    np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)


def test_cosine_stats_of_a_model_against_itself_and_a_rotated_one() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 8))
    same = metrics.cosine_stats(ref * 3.0, ref)  # scale does not matter
    assert same.mean == same.min == same.p5 or abs(same.min - 1.0) < 1e-12
    noisy = ref.copy()
    noisy[7] = -ref[7]  # one sample points the other way
    stats = metrics.cosine_stats(noisy, ref)
    assert abs(stats.min + 1.0) < 1e-12
    assert abs(stats.mean - (49 - 1) / 50) < 1e-12
    assert stats.p5 > stats.min


def test_neighbour_agreement_counts_changed_nearest_neighbours() -> None:
    def at(degrees: list[float]) -> np.ndarray:
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], axis=1)

    ref = at([0, 10, 50, 60, 120, 130])  # nearest pairs: (0, 1), (2, 3), (4, 5)
    assert metrics.neighbour_agreement(ref, ref) == 1.0
    # Sample 5 moves to 65 degrees: its nearest becomes 3, and 3's becomes 5; 4 keeps 5.
    moved = at([0, 10, 50, 60, 120, 65])
    assert metrics.neighbour_agreement(moved, ref) == 4 / 6
