"""A backend that cannot run is skipped with its reason or fails the run with exit 3 (as the
recipe says), never a traceback or exit 1."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.robustness.conftest import compress, last_line


def test_a_gpu_session_that_cannot_open_skips_cuda_with_its_reason(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from modelquant.backends import cuda

    def no_gpu(self: Any, path: Path, threads: int | None, batch_size: int | None = None) -> Any:
        raise cuda.CudaUnavailable("onnxruntime opened the model on CPUExecutionProvider")

    monkeypatch.setattr(cuda.CudaBackend, "available", lambda self: (True, ""))
    monkeypatch.setattr(cuda.CudaBackend, "versions", lambda self: {})
    monkeypatch.setattr(cuda.CudaBackend, "session", no_gpu)
    out = tmp_path / "out"
    result = compress(write_recipe(), out, "--set", "evaluate.backends=[cpu, cuda]")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert "CPUExecutionProvider" in report["compressed"]["backends"]["cuda"]["skipped"]


def test_an_npu_probe_that_hangs_exits_3_in_one_line(
    write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime_qnn")
    from modelquant.backends import npu

    def hang(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd="probe", timeout=600)

    monkeypatch.setattr(npu, "_run_probe", hang)
    result = compress(
        write_recipe(),
        tmp_path / "out",
        "--set",
        "evaluate.backends=[cpu, npu]",
        "--set",
        "evaluate.npu.samples=16",
    )
    assert result.exit_code == 3, result.output
    line = last_line(result)
    assert line.startswith("stage failed: stage 'evaluate': npu:")
    assert "did not finish within 600 s" in line
