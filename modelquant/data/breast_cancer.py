"""scikit-learn's bundled Wisconsin breast cancer table (30 raw measurements per tumour), split
deterministically into train, val and test."""

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
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)  # N x 30, raw units: nothing is scaled here
    y = bunch.target.astype(np.int64)  # 0 malignant, 1 benign
    return fixed_splits(x, y)


def load(split: str | None) -> Dataset:
    """`train` (340 rows), `val` (86), `test` (143) or `all` (569): N x 30 float32 in the units
    scikit-learn ships (0.001 to 4254), labels 0 malignant / 1 benign."""
    x, y = _arrays()[check_split("breast_cancer", split)]
    return Dataset({INPUT_NAME: x}, y, f"breast_cancer:{split}")


@register_data_source("breast_cancer", splits=SPLITS)
def load_source(spec: DataSpec, base_dir: Path) -> Dataset:
    """scikit-learn's bundled breast cancer table: 30 raw measurements, 2 classes, fixed splits."""
    return load(spec.split)
