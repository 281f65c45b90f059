"""A missing optional package is bad input (exit 2) whose one line names the extra to install."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelquant.cli import app

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "onnxruntime_qnn": (
        {
            "evaluate": {"backends": ["cpu", "npu"], "batch_sizes": [1], "repeats": 5},
            "stages": [{"export": {"opset": 17}}, {"quantize": {"precision": "int8"}}],
        },
        'pip install "modelquant[npu]"',
    ),
    "torch_pruning": (
        {
            "stages": [
                {"prune": {"method": "structured", "sparsity": 0.5}},
                {"export": {"opset": 17}},
            ]
        },
        "pip install torch-pruning",
    ),
}


@pytest.mark.parametrize("module", sorted(CASES))
def test_missing_optional_package_exits_2_naming_the_fix(
    module: str,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes, fix = CASES[module]
    recipe = write_recipe(**changes)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    result = CliRunner().invoke(app, ["compress", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("bad input:") and fix in last, last
