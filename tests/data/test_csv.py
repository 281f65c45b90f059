"""The csv source: a header row, numeric feature columns as one float32 array, integer labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelquant.data import Dataset, load_dataset
from modelquant.errors import UserError
from modelquant.recipe import DataSpec

TABLE = "a,b,c,target\n1,2,3,0\n4,5.5,6,1\n\n7,8,9,2\n"


def _load(tmp_path: Path, text: str, **fields: object) -> Dataset:
    (tmp_path / "t.csv").write_text(text)
    spec = DataSpec.model_validate({"source": "csv", "path": "t.csv", **fields})
    return load_dataset(spec, tmp_path)


def test_feature_columns_become_one_float32_array(tmp_path: Path) -> None:
    data = _load(tmp_path, TABLE, labels="target")
    assert list(data.inputs) == ["input"]
    x = data.inputs["input"]
    assert x.dtype == np.float32 and x.shape == (3, 3)
    assert x[1].tolist() == [4.0, 5.5, 6.0]
    assert data.labels is not None and data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 1, 2]


def test_chosen_columns_in_order_and_input_name(tmp_path: Path) -> None:
    data = _load(tmp_path, TABLE, labels="target", inputs=["c", "a"], input_name="features")
    assert data.inputs["features"][:, 0].tolist() == [3.0, 6.0, 9.0]
    assert data.inputs["features"][:, 1].tolist() == [1.0, 4.0, 7.0]


def test_samples_caps_rows(tmp_path: Path) -> None:
    assert len(_load(tmp_path, TABLE, labels="target", samples=2)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,target\n1,x,0\n", "t.csv line 2, column 'b': 'x' is not a number"),
        ("a,b,target\n1,2,0\n3,,1\n", "t.csv line 3, column 'b': an empty cell is not a number"),
        ("a,b,target\n1,2,cat\n", "column 'target': 'cat' is not a number"),
        ("1,2,0\n3,4,1\n", "add a header row"),
        ("a,b,target\n1,2\n", "line 2: 2 cells, but the header names 3 columns"),
        ("a,b,target\n1,2,0\n", "no column(s) ['label']"),
        ("", "is empty"),
    ],
)
def test_bad_tables_are_user_errors_naming_the_place(
    tmp_path: Path, text: str, expected: str
) -> None:
    labels = "label" if "['label']" in expected else "target"
    with pytest.raises(UserError) as info:
        _load(tmp_path, text, labels=labels)
    assert expected in str(info.value)
