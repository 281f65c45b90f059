"""Pieces of hand-made reports that the report tests share."""

from __future__ import annotations

from modelquant.report.model import Environment


def environment() -> Environment:
    """A plain environment: no torch, two cores, no CPU flags."""
    return Environment(
        python="3.11",
        platform="linux",
        torch=None,
        onnx="1",
        onnxruntime="1",
        cpu="cpu",
        cpu_flags=[],
        cores=2,
    )
