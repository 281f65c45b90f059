"""The backend registry and the table behind `modelquant backends`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelquant.backends import BACKEND_NAMES, Backend, backend_table, get_backend


def test_every_name_resolves_to_its_backend() -> None:
    assert BACKEND_NAMES == ("cpu", "cuda", "npu")
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
    with pytest.raises(KeyError, match="known: cpu, cuda, npu"):
        get_backend("tpu")


def test_table_says_what_runs_here_and_why_not() -> None:
    rows = {row["name"]: row for row in backend_table()}
    assert list(rows) == list(BACKEND_NAMES)
    for row in rows.values():
        assert set(row) == {
            "name",
            "available",
            "reason",
            "execution_provider",
            "versions",
            "emulated",
        }
        assert row["available"] == (row["reason"] == "")
        assert bool(row["versions"]) == row["available"]
    assert rows["cpu"]["available"] and not rows["cpu"]["emulated"]
    assert rows["npu"]["emulated"] and rows["npu"]["execution_provider"] == "QNNExecutionProvider"


def test_importing_backends_stays_lean() -> None:
    code = (
        "import sys, modelquant.backends\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
