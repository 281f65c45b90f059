"""Shared fixtures: a tiny digits CNN trained 3 epochs, as ONNX, and calibration batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

CALIBRATION_BATCH = 8


class BatchReader:
    """An onnxruntime CalibrationDataReader over fixed-size batches of digits train."""

    def __init__(self, batch_size: int = CALIBRATION_BATCH, samples: int = 128) -> None:
        from modelquant.data import digits

        x = digits.load("train").inputs["input"][:samples]
        self._batches = [
            {"input": x[i : i + batch_size]} for i in range(0, samples - batch_size + 1, batch_size)
        ]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


@pytest.fixture(scope="session")
def digits_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN (8 channels, 32 hidden) trained 3 epochs, as FP32 ONNX with a free batch."""
    from modelquant.data import digits
    from modelquant.state import export_onnx
    from tests.tiny_models import build, train

    path = tmp_path_factory.mktemp("digits") / "fp32.onnx"
    export_onnx(train(build(8, 32), epochs=3), digits.load("test").sample_batch(4), path)
    return path


@pytest.fixture
def reader() -> Any:
    return BatchReader()
