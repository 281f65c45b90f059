"""The npu backend inside a recipe: NPU variant, accuracy, parity, refused nodes, no gating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelquant.backends.npu import NpuBackend
from modelquant.cli import app
from modelquant.errors import StageError
from modelquant.recipe import Recipe
from tests.conftest import tiny_recipe_dict
from tests.pipeline_runs import run_recipe

pytestmark = [
    pytest.mark.npu,
    pytest.mark.skipif(not NpuBackend().available()[0], reason=NpuBackend().available()[1]),
]
NPU_EVAL = {
    "backends": ["cpu", "npu"],
    "batch_sizes": [1, 8],
    "warmup": 1,
    "repeats": 5,
    "block": 5,
    "threads": 1,
    "npu": {"samples": 120},
}


def test_npu_variant_accuracy_and_parity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = run_recipe(tiny_checkpoint, tmp_path, evaluate=NPU_EVAL)
    npu = report.compressed.backends["npu"]
    assert npu.emulated and npu.model == "model.int8.npu.onnx" and npu.samples == 120
    assert npu.accuracy is not None and abs(npu.accuracy - report.baseline.accuracy) <= 0.03
    assert npu.parity is not None and npu.parity["top1_agreement"] >= 0.97
    assert npu.parity["quant_step"] > 0 and npu.parity["beyond_one_step"] is not None
    assert set(npu.latency_ms) == {"1"}  # the variant is fixed to batch 1
    assert "fixed to batch 1" in npu.untimed["8"]  # and says so where the row is shown
    assert set(report.baseline.backends["npu"].latency_ms) == {"1"}  # no lone timing
    assert report.variants["npu"].path == "model.int8.npu.onnx"
    assert (tmp_path / "model.int8.npu.onnx").is_file()
    assert report.stages[1].details["npu_variant"]["activations"] == "uint16"
    assert report.environment.backends["npu"].available


def test_refused_nodes_fail_with_their_names(tmp_path: Path) -> None:
    model = {"factory": "tests.tiny_models:build_celu"}
    with pytest.raises(StageError, match=r"refuses 1 node\(s\) of baseline.onnx: .*\(Celu\)"):
        run_recipe(
            Path("unused"),
            tmp_path,
            model=model,
            stages=[{"export": {}}],
            evaluate=NPU_EVAL,
            gates={},
        )


def test_refused_nodes_can_skip_the_backend(tmp_path: Path) -> None:
    model = {"factory": "tests.tiny_models:build_celu"}
    evaluate = {**NPU_EVAL, "npu": {"on_unsupported": "skip", "samples": 50}}
    report, _ = run_recipe(
        Path("unused"), tmp_path, model=model, stages=[{"export": {}}], evaluate=evaluate, gates={}
    )
    skipped = report.compressed.backends["npu"].skipped
    assert skipped is not None and "(Celu)" in skipped
    assert report.compressed.backends["cpu"].accuracy is not None


def test_refused_nodes_exit_3_through_the_cli(tmp_path: Path) -> None:
    recipe = tiny_recipe_dict(
        Path("unused"),
        model={"factory": "tests.tiny_models:build_celu"},
        stages=[{"export": {}}],
        evaluate=NPU_EVAL,
        gates={},
    )
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe))
    result = CliRunner().invoke(app, ["compress", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3
    assert "(Celu)" in result.output.strip().splitlines()[-1]


def test_npu_latency_is_never_gated() -> None:
    recipe = tiny_recipe_dict(Path("x"), evaluate=NPU_EVAL, gates={"min_speedup": {"npu": 1.1}})
    with pytest.raises(ValueError, match="emulated"):
        Recipe.model_validate(recipe)
