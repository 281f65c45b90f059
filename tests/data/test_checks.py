"""modelquant.data.checks as the pipeline calls it: signatures, fitting one entry, overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelquant.data import Dataset
from modelquant.data.checks import ModelSignature, check_against_model, check_overlap
from modelquant.errors import UserError
from modelquant.recipe import DataSpec
from modelquant.state import export_onnx


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "linear.onnx"
    return export_onnx(torch.nn.Linear(4, 3), {"features": np.zeros((2, 4), np.float32)}, path)


def test_signature_from_onnx(linear_onnx: Path) -> None:
    sig = ModelSignature.from_onnx(linear_onnx)
    assert sig.inputs is not None
    (only,) = sig.inputs
    assert only.name == "features" and only.dtype == np.float32 and only.shape == (None, 4)
    assert sig.num_classes == 3


def test_signature_from_torch_probes_each_entry() -> None:
    torch.manual_seed(0)
    sig = ModelSignature.from_torch(torch.nn.Linear(4, 3))
    assert sig.inputs is None and sig.float_dtype == np.float32
    data = Dataset({"x": np.zeros((5, 4))}, np.array([0, 1, 2, 2, 1]))
    logs: list[str] = []
    fitted = check_against_model("train", data, sig, "classification", logs.append)
    assert fitted.inputs["x"].dtype == np.float32 and len(logs) == 1
    with pytest.raises(UserError, match="data.train: label 3 at row 0 is outside the model's 3"):
        check_against_model(
            "train",
            Dataset({"x": np.zeros((2, 4), np.float32)}, np.array([3, 0])),
            sig,
            "classification",
        )
    # The export names the inputs after the evaluation data: other entries follow them.
    named = sig.named_after(fitted)
    assert named.inputs is not None and [i.name for i in named.inputs] == ["x"]


def test_nothing_to_fit_returns_the_same_data(linear_onnx: Path) -> None:
    sig = ModelSignature.from_onnx(linear_onnx)
    data = Dataset({"features": np.zeros((3, 4), np.float32)}, np.array([0, 1, 2]))
    assert check_against_model("evaluation", data, sig, "classification") is data


def test_integers_cast_when_exact(linear_onnx: Path) -> None:
    sig = ModelSignature.from_onnx(linear_onnx)
    data = Dataset({"features": np.arange(12, dtype=np.uint8).reshape(3, 4)}, np.array([0, 1, 2]))
    fitted = check_against_model("evaluation", data, sig, "classification")
    assert fitted.inputs["features"].dtype == np.float32
    assert fitted.inputs["features"].tolist() == data.inputs["features"].tolist()


def test_evaluation_without_labels_is_refused(linear_onnx: Path) -> None:
    sig = ModelSignature.from_onnx(linear_onnx)
    with pytest.raises(UserError, match="data.evaluation has no labels"):
        check_against_model(
            "evaluation", Dataset({"features": np.zeros((3, 4), np.float32)}), sig, "classification"
        )


def _spec(**fields: object) -> DataSpec:
    return DataSpec.model_validate({"source": "npz", "path": "x.npz", **fields})


def test_overlap_counts_shared_rows() -> None:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    evaluation = Dataset({"f": rows[:6]}, np.zeros(6, np.int64), "eval")
    train = Dataset({"f": rows[4:]}, np.ones(6, np.int64), "train")  # rows 4, 5 shared
    entries = {"evaluation": (_spec(path="e.npz"), evaluation), "train": (_spec(), train)}
    with pytest.raises(UserError, match="data.train shares 2 of its 6 rows"):
        check_overlap(entries)
    entries["train"] = (_spec(allow_overlap=True), train)
    check_overlap(entries)
    entries["train"] = (_spec(), Dataset({"f": rows[6:]}, None, "apart"))
    check_overlap(entries)


def test_same_file_is_the_evaluation_data() -> None:
    data = Dataset({"f": np.zeros((2, 4), np.float32)})
    other = Dataset({"f": np.ones((2, 4), np.float32)})
    with pytest.raises(UserError, match="data.calibration is the evaluation data"):
        check_overlap({"evaluation": (_spec(), data), "calibration": (_spec(), other)})
