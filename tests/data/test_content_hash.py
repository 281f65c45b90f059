"""Dataset.content_hash: what the cache keys data by; the same content gives the same key."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from modelquant.data import Dataset


def _data(**changes: object) -> Dataset:
    base: dict[str, object] = {
        "inputs": {"input": np.arange(12, dtype=np.float32).reshape(4, 3)},
        "labels": np.array([0, 1, 2, 3]),
        "description": "a",
    }
    base.update(changes)
    return Dataset(**base)  # type: ignore[arg-type]


def test_same_content_same_hash_whatever_the_description() -> None:
    assert _data().content_hash() == _data(description="b").content_hash()
    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    assert (
        _data(inputs={"input": strided}).content_hash()
        == _data(inputs={"input": np.ascontiguousarray(strided)}).content_hash()
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"inputs": {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}},  # name
        {"inputs": {"input": np.arange(12, dtype=np.float64).reshape(4, 3)}},  # dtype
        {"inputs": {"input": np.arange(12, dtype=np.float32).reshape(4, 3, 1)}},  # shape
        {"inputs": {"input": np.arange(1, 13, dtype=np.float32).reshape(4, 3)}},  # bytes
        {"labels": np.array([0, 1, 2, 4])},
        {"labels": None},
    ],
)
def test_any_change_of_content_changes_the_hash(changes: dict[str, object]) -> None:
    assert _data(**changes).content_hash() != _data().content_hash()


def test_computed_once_and_not_carried_by_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data()
    first = data.content_hash()
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert data.content_hash() == first and not calls
    other = dataclasses.replace(data, labels=np.array([3, 2, 1, 0]))
    assert other.content_hash() != first and calls
