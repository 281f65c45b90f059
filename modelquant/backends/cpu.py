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

        options = session_options(threads)
        return ort.InferenceSession(str(path), options, providers=[self.execution_provider])


def session_options(threads: int | None) -> Any:
    """The CPU sessions' options (threads, quiet log, no spinning), for every session that must
    run as the timed ones do (the latency profile adds its profiler to them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    no_spinning(options)
    return options


def no_spinning(options: Any) -> None:
    """Idle pool threads sleep instead of spinning: two sessions timed in alternation (or a
    neighbour's process) would otherwise lose cores to the one that just stopped running."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
