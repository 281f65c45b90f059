"""The stage cache answers by content: change what a stage reads and it recomputes; change
nothing and every stage, torch ones included, comes from the cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelquant.data import digits
from tests.robustness.conftest import compress

PIPELINE = [
    {"prune": {"method": "structured", "sparsity": 0.25, "finetune": {"epochs": 1}}},
    {"export": {"opset": 17}},
    {"quantize": {"precision": "int8"}},
]


def _write_npz(path: Path, rows: slice, noise: float = 0.0) -> None:
    data = digits.load("train")
    x = data.inputs["input"][rows]
    if noise:
        x = np.clip(x + np.random.default_rng(1).normal(0, noise, x.shape), 0, 1)
    np.savez(path, input=x.astype(np.float32), labels=data.labels[rows])  # type: ignore[index]


def _stage_lines(output: str) -> list[str]:
    return [
        line.strip("· ").strip()
        for line in output.splitlines()
        if ": cached" in line or ": running" in line
    ]


def _recipe(write_recipe: Callable[..., Path], npz: Path) -> Path:
    spec = {"source": "npz", "path": str(npz)}
    return write_recipe(
        data={
            "train": spec,
            "calibration": {**spec, "samples": 128},
            "evaluation": {"source": "digits", "split": "test"},
        },
        stages=PIPELINE,
    )


def test_rewritten_npz_recomputes_and_unchanged_rerun_is_all_cached(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    npz = tmp_path / "train.npz"
    _write_npz(npz, slice(0, 600))
    recipe = _recipe(write_recipe, npz)
    out = tmp_path / "out"
    first = compress(recipe, out)
    assert first.exit_code == 0, first.output
    assert _stage_lines(first.output) == [
        "stage 1 prune: running",
        "stage 2 export: running",
        "stage 3 quantize: running",
    ]
    report1 = json.loads((out / "report.json").read_text())

    again = compress(recipe, out)
    assert again.exit_code == 0, again.output
    assert _stage_lines(again.output) == [
        "stage 1 prune: cached",
        "stage 2 export: cached",
        "stage 3 quantize: cached",
    ]
    assert (
        json.loads((out / "report.json").read_text())["compressed"]["size_bytes"]
        == (report1["compressed"]["size_bytes"])
    )

    _write_npz(npz, slice(600, 1200), noise=0.05)  # same path, other rows
    changed = compress(recipe, out)
    assert changed.exit_code == 0, changed.output
    assert _stage_lines(changed.output) == [
        "stage 1 prune: running",
        "stage 2 export: running",
        "stage 3 quantize: running",
    ]
    report3 = json.loads((out / "report.json").read_text())
    prune1, prune3 = report1["stages"][0]["details"], report3["stages"][0]["details"]
    assert prune1["accuracy_after"] != prune3["accuracy_after"] or (
        report1["compressed"]["accuracy"] != report3["compressed"]["accuracy"]
    )
    assert not list((out / ".cache").glob("*.partial"))


def test_a_cached_torch_stage_gives_the_same_model(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """A structurally pruned model rebuilt from the cache exports to the same bytes."""
    recipe = write_recipe(stages=PIPELINE)
    out = tmp_path / "out"
    assert compress(recipe, out).exit_code == 0
    first = (out / "model.fp32.onnx").read_bytes()
    # Drop the cached export so it is recomputed from the cached (rebuilt) pruned module.
    import shutil

    for entry in (out / ".cache").glob("0[23]-*"):
        shutil.rmtree(entry)
    result = compress(recipe, out)
    assert "stage 1 prune: cached" in result.output
    assert "stage 2 export: running" in result.output
    assert (out / "model.fp32.onnx").read_bytes() == first


def test_rewritten_teacher_checkpoint_recomputes_distill(
    write_recipe: Callable[..., Path], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    import shutil

    from safetensors.torch import save_file

    from tests.tiny_models import build

    teacher = tmp_path / "teacher.safetensors"
    shutil.copy(tiny_checkpoint, teacher)
    stages = [
        {
            "distill": {
                "teacher": {
                    "factory": "tests.tiny_models:build",
                    "kwargs": {"width": 8, "hidden": 32},
                    "checkpoint": str(teacher),
                },
                "finetune": {"epochs": 1},
            }
        },
        {"export": {}},
    ]
    recipe = write_recipe(stages=stages)
    out = tmp_path / "out"
    assert compress(recipe, out).exit_code == 0
    assert "stage 1 distill: cached" in compress(recipe, out).output
    save_file(build(8, 32).state_dict(), str(teacher))  # "retrained": other weights, same path
    result = compress(recipe, out)
    assert result.exit_code == 0, result.output
    assert "stage 1 distill: running" in result.output


def test_a_failed_stage_leaves_no_partial_folder(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = compress(write_recipe(), out, "--set", "stages.0.export.atol=1e-12")
    assert result.exit_code == 3
    assert not list((out / ".cache").glob("*.partial"))


@pytest.mark.parametrize(("stage", "keyed"), [("quantize", True), ("export", False)])
def test_targets_enter_the_key_of_stages_that_read_them(
    write_recipe: Callable[..., Path], tmp_path: Path, stage: str, keyed: bool
) -> None:
    import dataclasses

    from modelquant.pipeline import Pipeline
    from modelquant.pipeline.cache import stage_key
    from modelquant.recipe import load_recipe
    from modelquant.state import ModelState

    recipe_path = write_recipe()
    pipeline = Pipeline(load_recipe(recipe_path), recipe_path, tmp_path / "out")
    chosen = next(s for s in pipeline.stages if s.name == stage)
    ctx = pipeline.context(ModelState())
    cpu = stage_key("k", "c", chosen, ctx, {})
    npu = stage_key("k", "c", chosen, dataclasses.replace(ctx, targets=("cpu", "npu")), {})
    assert (cpu != npu) is keyed
