"""The NVIDIA GPU backend: onnxruntime-gpu's TensorRT or CUDA execution provider, never the CPU."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from modelquant.backends import Backend, BackendUnavailable
from modelquant.backends.cpu import no_spinning
from modelquant.environment import package_version

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
GPU_EPS = (TENSORRT_EP, CUDA_EP)
INSTALL_HINT = 'pip install "modelquant[cuda]" (onnxruntime-gpu, which replaces onnxruntime)'
CLASH = (
    "onnxruntime and onnxruntime-gpu are both installed; "
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
)
_CUDA_ERROR_NO_DEVICE = 100


class CudaUnavailable(BackendUnavailable):
    """A GPU session was asked for but onnxruntime could not open one."""


class CudaBackend(Backend):
    name = "cuda"
    execution_provider = CUDA_EP

    def __init__(self, use_tensorrt: bool = True) -> None:
        self.use_tensorrt = use_tensorrt

    def available(self) -> tuple[bool, str]:
        if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
            # Both wheels write the same onnxruntime/ package: whichever came last wins, silently.
            return False, CLASH
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if CUDA_EP not in providers:
            return False, (
                f"onnxruntime {ort.__version__} has no CUDA execution provider "
                f"(it offers {', '.join(providers)}); {INSTALL_HINT}"
            )
        found, detail = _cuda_device()
        if not found:
            return False, detail
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        found = {"onnxruntime-gpu": package_version("onnxruntime-gpu") or ort.__version__}
        ok, device = _cuda_device()
        if ok:
            found["device"] = device
        return found

    def session(self, path: Path, threads: int | None, batch_size: int | None = None) -> Any:
        """An InferenceSession whose first provider is TensorRT (when offered) or CUDA.

        CPU fallback stays allowed for the few shape-computation nodes onnxruntime deliberately
        keeps on the CPU next to the CUDA EP (disabling it fails such models outright), but a
        session that silently ended up CPU-only (missing CUDA/cuDNN libraries) is an error.
        The GPU takes any batch, so `batch_size` is ignored.
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        no_spinning(options)
        available = ort.get_available_providers()
        wanted = [
            ep for ep in GPU_EPS if ep in available and (ep != TENSORRT_EP or self.use_tensorrt)
        ]
        devices = [d for d in ort.get_ep_devices() if d.ep_name in wanted]
        if devices:  # onnxruntime builds where CUDA is a plugin EP must be added by device
            options.add_provider_for_devices(devices, {})
            session = ort.InferenceSession(str(path), options)
        else:
            session = ort.InferenceSession(
                str(path), options, providers=[*wanted, "CPUExecutionProvider"]
            )
        first = session.get_providers()[0]
        if first not in GPU_EPS:
            raise CudaUnavailable(
                f"onnxruntime opened {path} on {first}, not the GPU; are the CUDA and cuDNN "
                f"libraries onnxruntime-gpu {ort.__version__} needs on the library path?"
            )
        return session


def cpu_nodes(session: Any) -> list[tuple[str, str]]:
    """(name, op_type) of the nodes a GPU session placed on the CPU (shape arithmetic, as a
    rule); empty when onnxruntime cannot say (versions before graph-assignment records)."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return []
    return [
        (node.name, node.op_type)
        for graph in session.get_provider_graph_assignment_info()
        if graph.ep_name == "CPUExecutionProvider"
        for node in graph.get_nodes()
    ]


def _installed(dist: str) -> bool:
    return package_version(dist) is not None


def _cuda_device() -> tuple[bool, str]:
    """(a CUDA GPU is visible, its name or why not), asked of the driver (libcuda) directly:
    no torch import, no nvidia-smi needed."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False, "no NVIDIA driver here (libcuda not found), so no CUDA GPU"
    try:
        status = lib.cuInit(0)
        if status == _CUDA_ERROR_NO_DEVICE:
            return False, "the NVIDIA driver sees no CUDA GPU (cuInit: CUDA_ERROR_NO_DEVICE)"
        if status != 0:
            return False, f"the NVIDIA driver failed to start (cuInit error {status})"
        count = ctypes.c_int()
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "the NVIDIA driver sees no CUDA GPU"
        device = ctypes.c_int()
        buffer = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), 0) != 0:
            return True, "CUDA GPU 0"
        if lib.cuDeviceGetName(buffer, len(buffer), device) != 0:
            return True, "CUDA GPU 0"
        return True, buffer.value.decode(errors="replace")
    except AttributeError:  # a stub libcuda without the driver API
        return False, "libcuda found but it lacks the CUDA driver API"
