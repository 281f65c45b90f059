"""`modelquant analyze RECIPE --latency`: the recipe's stages as compress runs them, then both
models timed and profiled on the CPU; a table per batch size, latency.json, --json."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from modelquant.cli import app
from modelquant.latency_profile import LATENCY_FILE, LatencyProfile

runner = CliRunner()
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits-int8.yaml"
SMALL = [
    "--set",
    "evaluate.batch_sizes=[1, 4]",
    "--set",
    "evaluate.warmup=1",
    "--set",
    "evaluate.repeats=6",
    "--set",
    "evaluate.block=3",
]


def test_latency_runs_the_stages_and_writes_latency_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(RECIPE), "--latency", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    doc = LatencyProfile.model_validate_json((out / LATENCY_FILE).read_text())
    assert doc.recipe == "digits-int8" and doc.label == "INT8"
    assert doc.baseline == "baseline.onnx" and doc.compressed == "model.int8.onnx"
    assert [b.batch_size for b in doc.batches] == [1, 4]
    for batch in doc.batches:
        assert batch.speedup is not None and batch.compressed is not None
        assert {o.op_type for o in batch.compressed.op_types} >= {"QLinearConv", "QGemm"}
        assert batch.advice.startswith(f"INT8 is {batch.speedup:.2f}x at batch {batch.batch_size}")
    text = result.stdout
    assert "batch 1" in text and "batch 4" in text
    table = [line for line in text.splitlines() if line.startswith("│ QLinearConv")]
    assert len(table) == 2, text  # one op-type row per batch size
    assert "ms" in text and doc.batches[0].advice.split(":")[0] in text
    # the profiler's files are gone (written into a temporary folder, never the working one)
    assert not list(Path(tempfile.gettempdir()).glob("modelquant-profile-*"))
    assert not list(Path.cwd().glob("onnxruntime_profile_*.json"))
    assert (out / "model.int8.onnx").is_file() and not (out / "sensitivity.json").exists()


def test_json_is_clean_and_accuracy_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["analyze", str(RECIPE), "--latency", "--json", "--out", str(out), *SMALL]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and len(doc["batches"]) == 2
    assert json.loads((out / LATENCY_FILE).read_text()) == doc
    refused = runner.invoke(
        app, ["analyze", str(RECIPE), "--latency", "--accuracy", "-o", str(out)]
    )
    assert refused.exit_code == 2
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--accuracy" in lines[0] and "Traceback" not in refused.output
