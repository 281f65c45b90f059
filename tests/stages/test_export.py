"""The export stage: checked ONNX that matches torch, its contract, its failure mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from modelquant.data import digits
from modelquant.errors import StageError
from modelquant.models import onnx_file
from modelquant.stages.export import ExportConfig
from modelquant.state import torch_forward
from tests.pipeline_runs import run_recipe
from tests.tiny_models import build

EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}


def test_export_matches_torch_and_records_details(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = run_recipe(tiny_checkpoint, tmp_path, stages=[{"export": {}}], evaluate=EVAL)
    details = report.stages[0].details
    assert details["exporter"] == "torchscript" and details["opset"] == 17
    assert 0 <= details["max_abs_diff"] <= 1e-4
    path = tmp_path / "model.fp32.onnx"
    onnx.checker.check_model(str(path))
    assert onnx_file.external_files(path) == []  # one self-contained file
    model = build(8, 32)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(tiny_checkpoint)))
    x = digits.load("test").take(17).inputs  # an odd batch: the batch dimension is free
    got = ort.InferenceSession(str(path)).run(None, x)[0]
    np.testing.assert_allclose(got, torch_forward(model.eval(), x), atol=1e-5)


def test_export_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    hashes = []
    for name in ("a", "b"):
        run_recipe(tiny_checkpoint, tmp_path / name, stages=[{"export": {}}], evaluate=EVAL)
        hashes.append(onnx_file.content_hash(tmp_path / name / "model.fp32.onnx"))
    assert hashes[0] == hashes[1]


def test_fixed_batch_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    stages = [{"export": {"dynamic_batch": False, "batch_size": 4}}]
    report, _ = run_recipe(tiny_checkpoint, tmp_path, stages=stages, evaluate=EVAL)
    session = ort.InferenceSession(str(tmp_path / "model.fp32.onnx"))
    assert session.get_inputs()[0].shape[0] == 4
    assert report.compressed.accuracy == pytest.approx(report.baseline.accuracy, abs=1e-9)


def test_mismatch_beyond_atol_fails_the_stage(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="differs from torch"):
        run_recipe(tiny_checkpoint, tmp_path, stages=[{"export": {"atol": 1e-12}}], evaluate=EVAL)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        ExportConfig.model_validate({"opset": 17, "dynamo": True})
