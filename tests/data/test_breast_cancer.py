"""The breast cancer splits: fixed sizes, disjoint, stratified, raw units, registered."""

from __future__ import annotations

import numpy as np
import pytest

from modelquant.data import breast_cancer
from modelquant.data.sources import registered_data_sources
from modelquant.errors import UserError


def _rows(split: str) -> set[bytes]:
    return {row.tobytes() for row in breast_cancer.load(split).inputs["input"]}


def test_split_sizes() -> None:
    sizes = {s: len(breast_cancer.load(s)) for s in breast_cancer.SPLITS}
    assert sizes == {"train": 340, "val": 86, "test": 143, "all": 569}


def test_splits_are_disjoint_and_cover_all() -> None:
    train, val, test = _rows("train"), _rows("val"), _rows("test")
    assert not train & val and not train & test and not val & test
    assert train | val | test == _rows("all") and len(_rows("all")) == 569


def test_splits_are_stratified() -> None:
    for split, malignant in (("train", 127), ("val", 32), ("test", 53)):
        labels = breast_cancer.load(split).labels
        assert labels is not None and int(np.sum(labels == 0)) == malignant


def test_test_split_is_the_stratified_quarter() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    _, x_test, _, _ = train_test_split(
        bunch.data, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    assert np.array_equal(breast_cancer.load("test").inputs["input"], x_test.astype(np.float32))


def test_features_are_in_raw_units() -> None:
    x = breast_cancer.load("all").inputs["input"]
    assert x.shape == (569, 30) and x.dtype == np.float32
    assert x.max() == pytest.approx(4254.0) and x.min() == 0.0  # worst area; concavity


def test_registered_as_a_source_with_splits() -> None:
    source = registered_data_sources()["breast_cancer"]
    assert source.splits == breast_cancer.SPLITS


def test_unknown_split_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train, val, test or all"):
        breast_cancer.load("validation")
