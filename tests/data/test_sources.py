"""The data source registry: one module + one registry line per source, checked at recipe load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from modelquant.data import Dataset, load_dataset
from modelquant.errors import UserError
from modelquant.recipe import DataSpec, load_recipe


def test_registering_a_name_twice_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelquant.data import sources

    monkeypatch.setattr(sources, "_REGISTRY", dict(sources.registered_data_sources()))
    with pytest.raises(ValueError, match="registered twice"):

        @sources.register_data_source("npz")
        def load(spec: DataSpec, base_dir: Path) -> Dataset:
            """Another npz."""
            raise AssertionError


def test_a_registered_source_is_loaded_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelquant.data import sources

    monkeypatch.setattr(sources, "_REGISTRY", dict(sources.registered_data_sources()))

    @sources.register_data_source("ones", fields=("labels",))
    def load(spec: DataSpec, base_dir: Path) -> Dataset:
        """Ones, for a test."""
        return Dataset({"input": np.ones((5, 3), np.float32)})

    data = load_dataset(DataSpec(source="ones", samples=2), Path())
    assert data.inputs["input"].shape == (2, 3)
    with pytest.raises(ValueError, match="unknown data source 'onez'; did you mean 'ones'"):
        DataSpec(source="onez")


def test_builtin_sources_and_their_splits() -> None:
    from modelquant.data import sources

    registered = sources.registered_data_sources()
    assert {"digits", "npz", "csv"} <= set(registered)
    assert registered["digits"].splits is not None and "test" in registered["digits"].splits
    assert registered["npz"].splits is None and registered["csv"].splits is None
    help_text = DataSpec.model_fields["source"].description or ""
    for name in ("digits", "npz", "csv"):
        assert name in help_text


def _recipe(tmp_path: Path, evaluation: dict[str, object]) -> Path:
    path = tmp_path / "r.yaml"
    body = {"name": "r", "model": {"onnx": "m.onnx"}, "data": {"evaluation": evaluation}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        ({"source": "npz", "path": "x.npz", "split": "test"}, "source npz has no splits"),
        ({"source": "digits"}, "source digits needs split: one of train, val, test, all"),
        ({"source": "digits", "split": "tests"}, "needs split"),
        ({"source": "digits", "split": "test", "path": "x.npz"}, "does not read path"),
    ],
)
def test_split_and_fields_checked_at_recipe_load(
    tmp_path: Path, evaluation: dict[str, object], expected: str
) -> None:
    with pytest.raises(UserError) as info:
        load_recipe(_recipe(tmp_path, evaluation))
    message = str(info.value)
    assert expected in message and "data.evaluation" in message and "\n" not in message


def test_digits_and_npz_load_as_before(tmp_path: Path) -> None:
    test = load_dataset(DataSpec(source="digits", split="test"), tmp_path)
    assert test.inputs["input"].shape[1:] == (1, 8, 8) and test.labels is not None
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), labels=np.arange(4))
    data = load_dataset(DataSpec(source="npz", path=Path("d.npz"), samples=3), tmp_path)
    assert list(data.inputs) == ["x"] and len(data) == 3
    assert data.labels is not None and list(data.labels) == [0, 1, 2]
