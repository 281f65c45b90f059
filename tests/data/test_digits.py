"""The digits splits: fixed sizes, disjoint, stratified, and `test` unchanged by the val split."""

from __future__ import annotations

import numpy as np
import pytest

from modelquant.data import digits
from modelquant.errors import UserError


def _rows(split: str) -> set[bytes]:
    return {row.tobytes() for row in digits.load(split).inputs["input"]}


def test_split_sizes() -> None:
    sizes = {s: len(digits.load(s)) for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 1077, "val": 270, "test": 450, "all": 1797}


def test_splits_are_disjoint_and_cover_all() -> None:
    train, val, test = _rows("train"), _rows("val"), _rows("test")
    assert not train & val and not train & test and not val & test
    assert train | val | test == _rows("all")


def test_val_is_stratified() -> None:
    counts = np.bincount(digits.load("val").labels, minlength=10)  # type: ignore[arg-type]
    assert counts.min() >= 26 and counts.max() <= 28  # 270 / 10 classes


def test_test_split_is_the_one_it_always_was() -> None:
    # The first labels of the original 75/25 split: carving val out of train must not move test.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    _, _, _, y_test = train_test_split(
        bunch.images, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    assert np.array_equal(digits.load("test").labels, y_test)  # type: ignore[arg-type]


def test_unknown_split_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train, val, test or all"):
        digits.load("validation")
