"""scikit-learn's bundled Wisconsin breast cancer table (30 raw measurements per tumour), split
deterministically into train, val and test."""

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
# The same fixed, stratified fractions and seed as the digits splits: test is a quarter of the
# table, val a fifth of the rest; independent of the recipe seed so runs and the trainer agree.
TEST_FRACTION = 0.25
VAL_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("train", "val", "test", "all")


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)  # N x 30, raw units: nothing is scaled here
    y = bunch.target.astype(np.int64)  # 0 malignant, 1 benign
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
    """`train` (340 rows), `val` (86), `test` (143) or `all` (569): N x 30 float32 in the units
    scikit-learn ships (0.001 to 4254), labels 0 malignant / 1 benign."""
    if split not in SPLITS:
        raise UserError(
            f"the breast_cancer source needs split: {', '.join(SPLITS[:-1])} or all (got {split!r})"
        )
    x, y = _arrays()[split]
    return Dataset({INPUT_NAME: x}, y, f"breast_cancer:{split}")


@register_data_source("breast_cancer", splits=SPLITS)
def load_source(spec: DataSpec, base_dir: Path) -> Dataset:
    """scikit-learn's bundled breast cancer table: 30 raw measurements, 2 classes, fixed splits."""
    return load(spec.split)
