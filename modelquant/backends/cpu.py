"""The reference backend: onnxruntime's CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelquant.backends import Backend


class CpuBackend(Backend):
    name = "cpu"
    execution_provider = "CPUExecutionProvider"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__}

    def session(self, path: Path, threads: int | None, batch_size: int | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=[self.execution_provider])
