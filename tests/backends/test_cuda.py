"""The CUDA backend: a clear reason where it cannot run, and a GPU-only session where it can."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelquant.backends import cuda
from modelquant.backends.cuda import CudaBackend


def test_reports_whether_it_can_run_and_why_not() -> None:
    ok, reason = CudaBackend().available()
    if not ok:
        assert reason.strip()
    else:
        assert reason == ""


def test_two_onnxruntime_wheels_are_a_named_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "package_version", lambda dist: "1.32.0")
    ok, reason = CudaBackend().available()
    assert not ok
    assert reason == (
        "onnxruntime and onnxruntime-gpu are both installed; "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    )


def test_cpu_only_onnxruntime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(cuda, "_installed", lambda dist: dist == "onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    ok, reason = CudaBackend().available()
    assert not ok
    assert "no CUDA execution provider" in reason and "onnxruntime-gpu" in reason


@pytest.mark.cuda
def test_session_runs_on_the_gpu_and_matches_cpu(request: pytest.FixtureRequest) -> None:
    backend = CudaBackend()
    ok, reason = backend.available()
    if not ok:
        pytest.skip(f"no CUDA here: {reason}")
    import onnxruntime as ort

    digits_fp32: Path = request.getfixturevalue("digits_fp32")  # trained only where it runs

    session = backend.session(digits_fp32, threads=1)
    assert session.get_providers()[0] in cuda.GPU_EPS
    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    cpu = ort.InferenceSession(str(digits_fp32), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"input": x})[0], cpu.run(None, {"input": x})[0], atol=1e-3
    )
    assert "device" in backend.versions()
