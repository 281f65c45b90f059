"""What the numbers depend on: library versions, the CPU and its instruction-set flags."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from modelquant.report.model import Environment

# Flags that decide INT8/FP16 kernel speed on x86 and Arm.
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)


def package_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, the relevant instruction-set flags it has)."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                name = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
    return name, [f for f in RELEVANT_FLAGS if f in flags]


def environment() -> Environment:
    cpu, flags = cpu_description()
    return Environment(
        python=sys.version.split()[0],
        platform=platform.platform(),
        torch=package_version("torch"),
        onnx=package_version("onnx") or "?",
        onnxruntime=package_version("onnxruntime") or package_version("onnxruntime-gpu") or "?",
        cpu=cpu,
        cpu_flags=flags,
        cores=os.cpu_count() or 1,
    )
