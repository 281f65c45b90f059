"""The CLI as CI pipelines use it: exit codes, one-line errors, artifacts, lean start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelquant.cli import app
from tests.tiny_models import build

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def compress(recipe: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["compress", str(recipe), "--out", str(out), *extra])


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output
    assert len(lines) == 1, output
    return lines[0]


def test_compress_writes_models_and_reports(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = compress(write_recipe(), out)
    assert result.exit_code == 0, result.output
    for name in ("baseline.onnx", "model.fp32.onnx", "model.int8.onnx", "report.json", "report.md"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["artifacts"]["compressed"] == "model.int8.onnx"
    for model in ("baseline", "compressed"):
        assert set(report[model]["backends"]["cpu"]["latency_ms"]) == {"1", "8"}
    assert report["environment"]["onnxruntime"] and report["environment"]["torch"]
    assert "baseline" in result.output and "compressed" in result.output


def test_json_flag_prints_only_the_report(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["compress", str(write_recipe()), "--out", str(tmp_path / "o"), "--json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["compressed"]["metric"] == "top1"


def test_dry_run_runs_nothing(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compress(write_recipe(), out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "stage 2: quantize" in result.output
    assert "data.calibration: digits:train[:128], 128 samples" in result.output
    assert not out.exists()


def test_stages_can_open_the_validation_data(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    from modelquant.pipeline import Pipeline
    from modelquant.recipe import load_recipe

    path = write_recipe()
    text = path.read_text().replace(
        "data:\n", "data:\n  validation: {source: digits, split: val}\n"
    )
    path.write_text(text)
    pipeline = Pipeline(load_recipe(path), path, tmp_path / "out")
    assert pipeline.plan.data("validation").description == "digits:val"
    assert len(pipeline.plan.data("validation")) == 270


def test_misspelled_key_exits_2_with_line(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    text = write_recipe().read_text().replace("calibration:\n", "calibraton:\n", 1)
    result = compress(write_recipe(text, name="bad.yaml"), tmp_path / "out")
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "unknown key 'calibraton' at" in line and "bad.yaml:" in line
    assert "did you mean 'calibration'" in line
    assert not (tmp_path / "out" / "report.json").exists()


def test_unknown_stage_exits_2(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    result = compress(write_recipe(stages=[{"sparsify": {}}]), tmp_path / "out")
    assert result.exit_code == 2
    assert "unknown stage 'sparsify' at" in one_line_error(result.output)


def test_missing_checkpoint_exits_2(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(model={"factory": "tests.tiny_models:build", "checkpoint": "nope.pt"})
    result = compress(recipe, tmp_path / "out")
    assert result.exit_code == 2
    assert "checkpoint not found: nope.pt" in one_line_error(result.output)
    assert not (tmp_path / "out" / "report.json").exists()


class Sneaky:
    """Unpickling this would call os.system: weights_only loading must refuse it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    ckpt = tmp_path / "evil.pt"
    torch.save({"state": build().state_dict(), "payload": Sneaky()}, ckpt)
    recipe = write_recipe(model={"factory": "tests.tiny_models:build", "checkpoint": str(ckpt)})
    result = compress(recipe, tmp_path / "out")
    assert result.exit_code == 2
    line = one_line_error(result.output)
    assert "refused checkpoint" in line and "pickle" in line
    assert not (tmp_path / "out" / "report.json").exists()


def test_checkpoint_of_another_model_exits_2(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save(build(width=3).state_dict(), ckpt)
    recipe = write_recipe(model={"factory": "tests.tiny_models:build", "checkpoint": str(ckpt)})
    result = compress(recipe, tmp_path / "out")
    assert result.exit_code == 2
    assert "does not fit the model" in one_line_error(result.output)


def test_failed_gate_exits_1_and_names_it(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = compress(write_recipe(), out, "--set", "gates.min_speedup.cpu=100")
    assert result.exit_code == 1
    assert "min_speedup.cpu" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "gate_failed"
    failed = [g for g in report["gates"] if not g["passed"]]
    assert [g["name"] for g in failed] == ["min_speedup.cpu"]


def test_failing_stage_exits_3_and_leaves_no_report(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(), out).exit_code == 0  # a previous good run left a report
    result = compress(write_recipe(), out, "--set", "stages.0.export.atol=1e-12")
    assert result.exit_code == 3
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]  # progress lines come first, the error last
    assert last.startswith("stage failed: stage 'export': onnxruntime differs from torch")
    assert not (out / "report.json").exists()


def test_stage_needing_onnx_without_export_exits_2(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = compress(write_recipe(stages=[{"quantize": {}}]), tmp_path / "out")
    assert result.exit_code == 2
    assert "add an export stage" in one_line_error(result.output)


def test_recipes_commands(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0 and "digits-int8" in listed.output
    shown = runner.invoke(app, ["recipes", "show", "digits-int8"])
    assert shown.exit_code == 0 and "quantize" in shown.output
    schema = runner.invoke(app, ["recipes", "schema"])
    assert json.loads(schema.stdout)["title"] == "Recipe"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodle: {}\n")
    checked = runner.invoke(
        app, ["recipes", "validate", str(REPO / "recipes/digits-int8.yaml"), str(bad)]
    )
    assert checked.exit_code == 2
    assert "did you mean 'model'" in checked.output


def test_export_and_evaluate_verbs(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe()
    model = tmp_path / "m.onnx"
    exported = runner.invoke(app, ["export", str(recipe), "--output", str(model)])
    assert exported.exit_code == 0, exported.output
    measured = runner.invoke(app, ["evaluate", str(recipe), "--model", str(model), "--json"])
    assert measured.exit_code == 0, measured.output
    result = json.loads(measured.stdout)
    assert result["accuracy"] > 0.8
    assert result["backends"]["cpu"]["latency_ms"]["1"]["p50"] > 0


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and "onnxruntime" in result.output


def test_subprocess_entry_point(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    """How CI pipelines call it: a real process, a real exit code."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelquant",
            "compress",
            str(write_recipe()),
            "--out",
            str(out),
            "--set",
            "gates.min_speedup.cpu=100",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    assert "gate failed" in proc.stderr and "min_speedup.cpu" in proc.stderr
    assert (out / "report.json").is_file()


def test_cli_import_is_lean() -> None:
    code = (
        "import sys, modelquant.cli; "
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx')"
        " if m in sys.modules]; "
        "print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"], ["recipes", "--help"]])
def test_help_does_not_import_heavy_modules(args: list[str]) -> None:
    code = (
        "import sys; from modelquant.cli import app; from typer.testing import CliRunner; "
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
        "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().endswith("[]")


def test_backends_table() -> None:
    result = runner.invoke(app, ["backends", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["cpu"]["available"] and set(rows) == {"cpu", "cuda", "npu"}
    if not rows["cuda"]["available"]:
        assert rows["cuda"]["reason"]
    table = runner.invoke(app, ["backends"])
    assert table.exit_code == 0 and "CPUExecutionProvider" in table.output


def test_benchmark_two_models(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(), out).exit_code == 0
    result = runner.invoke(
        app,
        [
            "benchmark",
            str(out / "baseline.onnx"),
            str(out / "model.int8.onnx"),
            "--batch-sizes",
            "1,4",
            "--repeats",
            "6",
            "--warmup",
            "1",
            "--block",
            "3",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["models"]["baseline"] == str(out / "baseline.onnx")
    cpu = measured["backends"]["cpu"]
    assert set(cpu["speedup"]) == {"1", "4"}
    speed = cpu["speedup"]["4"]
    assert speed["ci95"][0] <= speed["value"] <= speed["ci95"][1]
    # the same LatencyStats shape as report.json
    stats = cpu["latency_ms"]["baseline"]["1"]
    assert stats["runs"] == 6 and stats["threads"] == 1 and stats["blocks"] == 2


def test_benchmark_bad_input_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["benchmark", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert "model file not found" in one_line_error(result.output)


def test_error_text_in_brackets_survives_the_console(tmp_path: Path) -> None:
    """Messages such as 'install modelquant[npu]' must not lose their brackets to rich markup."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {factory: 'a:b'}\ndata: {evaluation: {source: digits, split: test}}\n"
        "evaluate: {backends: ['gpu[0]']}\n"
    )
    result = runner.invoke(app, ["recipes", "validate", str(bad)])
    assert result.exit_code == 2
    assert "gpu[0]" in result.output
