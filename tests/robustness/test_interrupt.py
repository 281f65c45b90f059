"""Interrupted runs (Ctrl-C, SIGTERM): one line naming the step and how to continue, exit 130 (143
for SIGTERM), no partial file and no report; `--resume` then carries on from the finished stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelquant.pipeline import REPORT_FILES
from tests.conftest import tiny_recipe_dict
from tests.robustness.conftest import compress, last_line

ROOT = Path(__file__).resolve().parents[2]


def leftovers(out: Path) -> list[str]:
    """What an interrupted run must not leave: partial folders, temp files, reports."""
    found = []
    for path in out.rglob("*"):
        name = path.name
        if name.endswith((".partial", ".tmp")) or name.startswith(".modelquant-write-test"):
            found.append(str(path.relative_to(out)))
        elif path.parent == out and name in REPORT_FILES:
            found.append(name)
    return found


def _interrupt_while_saving_ranges(monkeypatch: pytest.MonkeyPatch, raise_it: Callable[[], Any]):
    """Make onnxruntime's calibration-cache writer write half a file, then be interrupted."""
    import onnxruntime.quantization.calibrate as calibrate

    def half_written(data: Any, path: Any) -> None:
        Path(path).write_text('{"half": ')
        raise_it()

    monkeypatch.setattr(calibrate, "save_tensors_data", half_written)


def test_ctrl_c_inside_a_stage_leaves_nothing_partial_and_resume_continues(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ctrl_c() -> None:
        raise KeyboardInterrupt

    recipe = write_recipe()
    out = tmp_path / "out"
    _interrupt_while_saving_ranges(monkeypatch, ctrl_c)
    result = compress(recipe, out)
    assert result.exit_code == 130, result.output
    assert last_line(result) == (
        "interrupted during stage 2 'quantize'; rerun with --resume to continue"
    )
    assert leftovers(out) == []
    assert not list((out / ".cache" / "calibration").glob("*"))  # no half-written ranges
    monkeypatch.undo()

    resumed = compress(recipe, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "stage 1 export: reused from the earlier run (key " in resumed.output
    assert "stage 2 quantize: running" in resumed.output
    assert (out / "report.json").is_file()


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI cancels with SIGTERM; it gets the same cleanup and its own exit code."""

    def sigterm() -> None:
        # Without the command's handler the signal would end pytest itself: fail instead.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler raises at the next bytecode
            pass

    out = tmp_path / "out"
    _interrupt_while_saving_ranges(monkeypatch, sigterm)
    before = signal.getsignal(signal.SIGTERM)
    result = compress(write_recipe(), out)
    assert result.exit_code == 143, result.output
    assert last_line(result) == (
        "terminated during stage 2 'quantize'; rerun with --resume to continue"
    )
    assert leftovers(out) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone


def test_ctrl_c_while_writing_the_report_leaves_no_report(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.md is written before report.json: an interrupt between them must not leave a
    report that says the run passed."""
    from modelquant.pipeline.artifacts import Artifacts

    original = Artifacts.write_text

    def write_text(self: Artifacts, role: str, name: str, text: str) -> None:
        if name == "report.json":
            raise KeyboardInterrupt
        original(self, role, name, text)

    monkeypatch.setattr(Artifacts, "write_text", write_text)
    out = tmp_path / "out"
    result = compress(write_recipe(output={"formats": ["json", "md"]}), out)
    assert result.exit_code == 130, result.output
    assert last_line(result) == (
        "interrupted during writing the report; rerun with --resume to continue"
    )
    assert leftovers(out) == []


def test_ctrl_c_outside_a_stage_names_the_step(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelquant.pipeline.measure

    def measure(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(modelquant.pipeline.measure, "measure", measure)
    result = compress(write_recipe(), tmp_path / "out")
    assert result.exit_code == 130, result.output
    assert last_line(result) == "interrupted during measuring; rerun with --resume to continue"
    assert leftovers(tmp_path / "out") == []


# ---------------------------------------------------------------- a real Ctrl-C, in a real process

SLOW_QUANTIZE = [
    {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 1}}},
    {"export": {"opset": 17}},
    # entropy over 2048 bins: seconds of calibration, time for the signal to land inside it
    {"quantize": {"precision": "int8", "calibration": {"method": "entropy", "bins": 2048}}},
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelquant", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CI": "1"}


@pytest.mark.slow
def test_sigint_during_quantize_then_resume_ends_with_the_same_metric(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    doc = tiny_recipe_dict(tiny_checkpoint, stages=SLOW_QUANTIZE)
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"

    proc = subprocess.Popen(
        _cli("compress", str(recipe), "--out", str(out)),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    timer = threading.Timer(600, proc.kill)  # a hung run fails the test instead of hanging it
    timer.start()
    try:
        for line in proc.stderr:  # the console line says the stage started: no sleeping
            seen.append(line)
            if "stage 3 quantize: running" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
    assert proc.returncode == 130, "".join(seen) + rest
    assert rest.strip().splitlines() == [
        "interrupted during stage 3 'quantize'; rerun with --resume to continue"
    ]
    assert leftovers(out) == []

    resumed = subprocess.run(
        _cli("compress", str(recipe), "--out", str(out), "--resume"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1 prune: reused from the earlier run (key " in resumed.stderr
    assert "stage 2 export: reused from the earlier run (key " in resumed.stderr
    assert "stage 3 quantize: running" in resumed.stderr
    assert "resume: reused 2 of 3 stage(s) (1, 2); ran 3" in resumed.stderr

    fresh = tmp_path / "fresh"
    assert compress(recipe, fresh).exit_code == 0
    accuracy = [
        json.loads((d / "report.json").read_text())["compressed"]["accuracy"] for d in (out, fresh)
    ]
    assert accuracy[0] == accuracy[1]
