"""scikit-learn's bundled 8x8 digits, split deterministically into train, val and test."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelquant.data import Dataset
from modelquant.data.sources import register_data_source
from modelquant.data.splits import SPLITS, check_split, fixed_splits

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec

INPUT_NAME = "input"


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = bunch.target.astype(np.int64)
    return fixed_splits(x, y)


def load(split: str | None) -> Dataset:
    """`train` (1077 images), `val` (270), `test` (450) or `all` (1797), N x 1 x 8 x 8 in [0, 1]."""
    x, y = _arrays()[check_split("digits", split)]
    return Dataset({INPUT_NAME: x}, y, f"digits:{split}")


@register_data_source("digits", splits=SPLITS)
def load_source(spec: DataSpec, base_dir: Path) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 10 classes, fixed train/val/test splits."""
    return load(spec.split)
