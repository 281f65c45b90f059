"""scikit-learn's bundled 8x8 handwritten digits, split deterministically into train and test."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelquant.data import Dataset
from modelquant.data.sources import register_data_source
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec

INPUT_NAME = "input"
# Fixed split, independent of the recipe seed, so every run and the example's trainer agree on it.
TEST_FRACTION = 0.25
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def load(split: str | None) -> Dataset:
    """`train` (1347 images), `test` (450) or `all` (1797), as N x 1 x 8 x 8 float32 in [0, 1]."""
    x_train, x_test, y_train, y_test = _arrays()
    if split == "train":
        x, y = x_train, y_train
    elif split == "test":
        x, y = x_test, y_test
    elif split == "all":
        x, y = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
    else:
        raise UserError(f"the digits source needs split: train, test or all (got {split!r})")
    return Dataset({INPUT_NAME: x}, y, f"digits:{split}")


@register_data_source("digits", splits=("train", "test", "all"))
def load_source(spec: DataSpec, base_dir: Path) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 10 classes, fixed train/test split."""
    return load(spec.split)
