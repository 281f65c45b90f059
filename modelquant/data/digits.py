"""scikit-learn's bundled 8x8 digits, split deterministically into train, val and test."""

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
# Fixed splits, independent of the recipe seed, so every run and the example's trainer agree.
TEST_FRACTION = 0.25
# `val` is carved out of the original train split, so `test` stays untouched by any tuning.
VAL_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("train", "val", "test", "all")


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = bunch.target.astype(np.int64)
    x_fit, x_test, y_fit, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_fit, y_fit, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=y_fit
    )
    return {
        "train": (x_train, y_train),
        "val": (x_val, y_val),
        "test": (x_test, y_test),
        "all": (np.concatenate([x_fit, x_test]), np.concatenate([y_fit, y_test])),
    }


def load(split: str | None) -> Dataset:
    """`train` (1077 images), `val` (270), `test` (450) or `all` (1797), N x 1 x 8 x 8 in [0, 1]."""
    if split not in SPLITS:
        raise UserError(
            f"the digits source needs split: {', '.join(SPLITS[:-1])} or all (got {split!r})"
        )
    x, y = _arrays()[split]
    return Dataset({INPUT_NAME: x}, y, f"digits:{split}")


@register_data_source("digits", splits=SPLITS)
def load_source(spec: DataSpec, base_dir: Path) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 10 classes, fixed train/val/test splits."""
    return load(spec.split)
