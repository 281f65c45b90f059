"""The fixed train/val/test splits of the bundled tables (digits, breast_cancer): stratified,
independent of the recipe seed, so every run and the examples' trainers agree."""

from __future__ import annotations

import numpy as np

from modelquant.errors import UserError

TEST_FRACTION = 0.25
# `val` is carved out of the original train split, so `test` stays untouched by any tuning.
VAL_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ("train", "val", "test", "all")


def fixed_splits(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`train`, `val`, `test` and `all` of one table: test a quarter, val a fifth of the rest."""
    from sklearn.model_selection import train_test_split

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


def check_split(source: str, split: str | None) -> str:
    """The split, or a UserError naming the ones the source has."""
    if split not in SPLITS:
        raise UserError(
            f"the {source} source needs split: {', '.join(SPLITS[:-1])} or all (got {split!r})"
        )
    return split
