"""The Qualcomm NPU backend: the onnxruntime-qnn HTP (emulated on x86), no CPU fallback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from modelquant.backends import Backend
from modelquant.backends.cpu import no_spinning
from modelquant.extras import install_hint

EP_NAME = "QNNExecutionProvider"
INSTALL_HINT = install_hint("onnxruntime_qnn")
# offload_graph_io_quantization=0 keeps the graph-input QuantizeLinear and graph-output
# DequantizeLinear on the HTP. With the EP's default (1) it hands them to the CPU EP, which
# onnxruntime allows even with CPU fallback disabled: the NPU numbers would then include CPU work
# and the placement check could not tell a deliberate hand-off from a refusal.
PROVIDER_OPTIONS = {"backend_type": "htp", "offload_graph_io_quantization": "0"}
DEFAULT_BATCH = 1
PROBE_TIMEOUT_S = 600

# onnxruntime's messages for the ways a session with the HTP fails (onnxruntime 1.32, QNN EP 2.7).
FALLBACK_DISABLED = "fallback to CPU EP has been explicitly disabled"
NOT_SELECTED = "but was not selected by that EP"  # NHWC layout pass claimed a node, then dropped it
FINALIZE_FAILED = "Failed to finalize QNN graph"
_PROBE_MARKER = "MODELQUANT-QNN-PROBE "
_PROBE_CHILD = (
    "import json, sys\n"
    "from modelquant.backends.npu import _PROBE_MARKER, _probe_in_this_process\n"
    "result = _probe_in_this_process(sys.argv[1], int(sys.argv[2]) or None)\n"
    "print(_PROBE_MARKER + json.dumps(result), flush=True)\n"
)


class RefusedNode(NamedTuple):
    """A node of the model that the HTP will not run."""

    name: str
    op_type: str


class NpuError(Exception):
    """The HTP cannot run this model; the base of this backend's errors."""


class UnsupportedNodes(NpuError):
    """The HTP refuses some nodes, and CPU fallback is disabled so the session cannot open."""

    def __init__(
        self, nodes: list[RefusedNode], message: str, reasons: dict[str, str] | None = None
    ) -> None:
        self.nodes = nodes
        self.message = message
        self.reasons = reasons or {}
        super().__init__(_describe_refusal(nodes, self.reasons, message))


class HtpCompileError(NpuError):
    """The HTP accepted every node but could not compile (finalize) the graph."""


@dataclass(frozen=True)
class Placement:
    """Where onnxruntime puts each node when the HTP is asked to run a model."""

    refused: list[RefusedNode]
    """Nodes of the model that would not run on the HTP, in graph order."""
    method: str
    """'assignment': onnxruntime's record of node placement in a session that opened with CPU
    fallback allowed; 'validation log': the QNN EP's per-node verdicts, read because even that
    session failed (QOperator and FP8 models make onnxruntime's NHWC layout pass fail)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Node name -> the QNN EP's stated reason, where it gave one."""
    htp_nodes: int | None = None
    """Nodes the HTP took (counted after onnxruntime's layout pass, so it includes inserted
    Transpose/Q/DQ nodes); None when the session failed."""
    error: str | None = None
    """Why the probe session failed, if it did."""
    qnn_api: str | None = None
    """The QNN API version the HTP library reported."""


# --------------------------------------------------------------------------- the backend


class NpuBackend(Backend):
    name = "npu"
    execution_provider = EP_NAME
    emulated = True  # the x86 wheel runs an HTP simulator: its latency says nothing of a phone's
    static_shapes = True

    def available(self) -> tuple[bool, str]:
        try:
            ort = _onnxruntime_with_qnn()
        except ImportError:
            return False, INSTALL_HINT
        except Exception as exc:  # an old onnxruntime without plugin EPs, a broken wheel, ...
            return False, f"onnxruntime could not load the QNN plugin: {_first_line(exc)}"
        if not _qnn_devices(ort):
            return False, "onnxruntime-qnn is installed but onnxruntime lists no QNN (HTP) device"
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort
        import onnxruntime_qnn

        found = {"onnxruntime": ort.__version__, "onnxruntime-qnn": onnxruntime_qnn.__version__}
        sdk = getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", None)
        if sdk:
            found["qnn-sdk"] = str(sdk)
        found.update(_qnn_api_versions())
        return found

    def session(self, path: Path, threads: int | None, batch_size: int | None = None) -> Any:
        """An InferenceSession on the HTP with CPU fallback disabled.

        Symbolic batch dimensions (axis 0 of the inputs) are fixed to `batch_size` (default 1):
        the HTP needs static shapes. Raises UnsupportedNodes (naming the refused nodes) when the
        HTP will not take the whole graph, HtpCompileError when it takes every node but cannot
        compile the graph, NpuError when this machine has no HTP.
        """
        ort = _onnxruntime_with_qnn()
        devices = _qnn_devices(ort)
        if not devices:
            raise NpuError("onnxruntime lists no QNN (HTP) device on this machine")
        options = _session_options(ort, Path(path), devices, threads, batch_size, strict=True)
        try:
            with _stdout_to_stderr():
                session = ort.InferenceSession(str(path), options)
        except Exception as exc:
            failure = _classify_failure(exc, Path(path), batch_size)
            if failure is exc:
                raise
            raise failure from exc
        if session.get_providers()[0] != EP_NAME:  # never time the CPU under the NPU's name
            raise NpuError(f"the session opened on {session.get_providers()} instead of the HTP")
        return session


# --------------------------------------------------------------------------- placement


def unsupported_nodes(path: Path | str, batch_size: int | None = None) -> list[RefusedNode]:
    """The nodes of the model at `path` that the HTP will not run, as (name, op_type), in graph
    order. Empty means the HTP took the whole graph and compiled it. Raises HtpCompileError when
    it takes every node but cannot compile the graph (no node to name). See `check_placement`."""
    placement = check_placement(path, batch_size)
    if placement.error and not placement.refused:
        if FINALIZE_FAILED in placement.error:
            raise HtpCompileError(_compile_message(placement.error))
        raise NpuError(f"the HTP cannot open this model: {placement.error.strip()}")
    return placement.refused


def check_placement(
    path: Path | str, batch_size: int | None = None, timeout_s: float = PROBE_TIMEOUT_S
) -> Placement:
    """Ask onnxruntime where each node of the model would run on the HTP, before evaluating.

    A child process opens the model with CPU fallback ALLOWED, symbolic batch dims fixed to
    `batch_size` (default 1), `session.record_ep_graph_assignment_info` on and verbose logging;
    every node placed on another EP than QNN is refused. When even that session fails (QOperator
    and FP8 QDQ models: onnxruntime's NHWC layout pass then fails), the QNN EP's own per-node
    verdicts ("Validation FAILED ... REASON") from its last capability pass are used instead.
    Nodes onnxruntime inserts (layout Transposes and their Q/DQ) are mapped back to the model's
    node they came from, or left out. The child keeps a crash of the emulator, and its logging,
    out of this process.

    Limits: graph-compile failures (`Failed to finalize QNN graph`) name no node, so `refused` is
    empty and `error` says why; other symbolic dims than the batch are not fixed (every node is
    then refused with "Cannot get shape"); only nodes of the main graph are named (not those
    inside If/Loop bodies); unnamed nodes are reported as '<OpType>_<index in the graph>'; in
    the log method a node the EP dropped without a verdict (a lone Q/DQ left in a partition) is
    not listed.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="mq-qnn-probe-") as tmp:
        probe_path = path
        if any(not node.name for node in model.graph.node):
            # Unnamed nodes could not be told apart in the report: name them, in a copy.
            for i, node in enumerate(model.graph.node):
                node.name = node.name or f"{node.op_type}_{i}"
            probe_path = Path(tmp) / path.name
            if _has_external_data(model):
                raise NpuError(f"{path} has unnamed nodes and external data; name its nodes first")
            onnx.save(model, str(probe_path))
        try:
            result, log = _run_probe(probe_path, batch_size, timeout_s)
        except subprocess.TimeoutExpired:
            raise NpuError(
                f"the HTP placement probe did not finish within {timeout_s:.0f} s"
            ) from None
    order = {node.name: (i, node.op_type) for i, node in enumerate(model.graph.node)}
    verdicts = _failed_verdicts(log)
    if result["assignment"] is not None:
        placed = [(name, op) for ep, name, op in result["assignment"] if ep != EP_NAME]
        htp = sum(1 for ep, _, _ in result["assignment"] if ep == EP_NAME)
        method = "assignment"
    else:
        placed = [(name, op) for name, (op, _) in verdicts.items()]
        match = re.search(r"Node '([^']+)' OpType:(\S+)", result["error"] or "")
        if match and NOT_SELECTED in (result["error"] or ""):
            placed.append((match.group(1), match.group(2)))
        htp = None
        method = "validation log"
    refused: dict[str, RefusedNode] = {}
    reasons: dict[str, str] = {}
    for name, _ in placed:
        original = _original_name(name, order)
        if original is None or original in refused:
            continue  # inserted by onnxruntime, or already listed
        refused[original] = RefusedNode(original, order[original][1])
        reason = verdicts.get(name, ("", ""))[1] or verdicts.get(original, ("", ""))[1]
        if reason:
            reasons[original] = reason
    nodes = sorted(refused.values(), key=lambda n: order[n.name][0])
    return Placement(
        refused=nodes,
        method=method,
        reasons=reasons,
        htp_nodes=htp,
        error=result["error"],
        qnn_api=_qnn_api_from_log(log),
    )


def batch_dim_params(path: Path | str) -> list[str]:
    """Names of the symbolic batch dimensions (axis 0 of the graph inputs) of an ONNX model."""
    import onnx

    from modelquant.models.onnx_file import graph_inputs

    model = onnx.load(str(path), load_external_data=False)
    names: list[str] = []
    for value in graph_inputs(model.graph):
        if not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param") and dims[0].dim_param not in names:
            names.append(dims[0].dim_param)
    return names


# --------------------------------------------------------------------------- internals


def _onnxruntime_with_qnn() -> Any:
    """onnxruntime with the QNN plugin registered (once per process; registering twice fails
    with 'EP library is already registered under QNNExecutionProvider')."""
    import onnxruntime as ort
    import onnxruntime_qnn

    if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        except Exception as exc:
            if "already registered" not in str(exc).lower():
                raise
    return ort


def _qnn_devices(ort: Any) -> list[Any]:
    return [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]


def _session_options(
    ort: Any,
    path: Path,
    devices: list[Any],
    threads: int | None,
    batch_size: int | None,
    *,
    strict: bool,
) -> Any:
    options = ort.SessionOptions()
    # Plugin EPs must be added by device: providers=["QNNExecutionProvider"] by name silently
    # gives a CPU-only session (get_providers() == ['CPUExecutionProvider']).
    options.add_provider_for_devices(devices, dict(PROVIDER_OPTIONS))
    if strict:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for dim in batch_dim_params(path):
        options.add_free_dimension_override_by_name(dim, batch_size or DEFAULT_BATCH)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # A refused graph makes onnxruntime log red ERROR lines; the exception we raise says it all.
    options.log_severity_level = 4 if strict else 3
    no_spinning(options)
    return options


def _classify_failure(exc: Exception, path: Path, batch_size: int | None) -> Exception:
    text = str(exc)
    if FALLBACK_DISABLED in text or NOT_SELECTED in text:
        try:
            placement = check_placement(path, batch_size)
        except (NpuError, subprocess.TimeoutExpired) as probe:
            return UnsupportedNodes([], f"{_first_line(exc)} (naming the nodes failed: {probe})")
        return UnsupportedNodes(placement.refused, _first_line(exc), placement.reasons)
    if FINALIZE_FAILED in text:
        return HtpCompileError(_compile_message(text))
    return exc


def _compile_message(error: str) -> str:
    first = error.strip().splitlines()[0] if error.strip() else error
    return f"the HTP took every node but could not compile the graph: {first}"


def _describe_refusal(nodes: list[RefusedNode], reasons: dict[str, str], message: str) -> str:
    if not nodes:
        return f"the HTP cannot run this model: {message}"
    shown = ", ".join(f"{n.name} ({n.op_type})" for n in nodes[:10])
    more = f" and {len(nodes) - 10} more" if len(nodes) > 10 else ""
    hint = ""
    if any("Cannot get shape" in r for r in reasons.values()):
        hint = "; the model has dynamic shapes: fix them (qnn_quant.fix_batch)"
    return f"the HTP refuses {len(nodes)} node(s): {shown}{more}{hint}"


def _run_probe(path: Path, batch_size: int | None, timeout_s: float) -> tuple[dict[str, Any], str]:
    import modelquant

    env = dict(os.environ)
    root = str(Path(modelquant.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE_CHILD, str(path), str(batch_size or 0)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        env=env,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(_PROBE_MARKER):
            return json.loads(line[len(_PROBE_MARKER) :]), done.stderr
    tail = "\n".join(done.stderr.strip().splitlines()[-5:])
    raise NpuError(f"the HTP placement probe died (exit {done.returncode}): {tail}")


def _probe_in_this_process(path: str, batch_size: int | None) -> dict[str, Any]:
    """Runs in the probe's child process: a verbose session with CPU fallback allowed."""
    ort = _onnxruntime_with_qnn()
    options = _session_options(ort, Path(path), _qnn_devices(ort), 1, batch_size, strict=False)
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    options.log_severity_level = 0  # the QNN EP's per-node verdicts are logged at VERBOSE
    try:
        session = ort.InferenceSession(path, options)
    except Exception as exc:
        return {"error": str(exc), "assignment": None}
    assignment = [
        [graph.ep_name, node.name, node.op_type]
        for graph in session.get_provider_graph_assignment_info()
        for node in graph.get_nodes()
    ]
    return {"error": None, "assignment": assignment}


_PASS = re.compile(r"GetCapability pass (\d+)")
_UNIT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in OrtNodeUnit")
_NODE = re.compile(r"^\tOperator type: (\S+) Node name: (.*) Node index: \d+$")
_REASON = re.compile(r"^\tREASON : (.*)$")


def _failed_verdicts(log: str) -> dict[str, tuple[str, str]]:
    """Node name -> (op type, reason) for the units the QNN EP failed in its last capability
    pass (pass 2 runs after the NHWC layout transform and is its final word)."""
    passes: dict[int, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] = {}
    unit: list[tuple[str, str]] | None = None  # nodes of the FAILED unit being read
    for line in log.splitlines():
        if m := _PASS.search(line):
            current = passes.setdefault(int(m.group(1)), {})
            unit = None
        elif m := _UNIT.search(line):
            unit = [] if m.group(1) == "FAILED" else None
        elif unit is not None and (m := _NODE.match(line)):
            unit.append((m.group(2), m.group(1)))
        elif unit is not None and (m := _REASON.match(line)):
            for name, op in unit:
                current[name] = (op, m.group(1).strip())
            unit = None
        elif not line.startswith("\t"):
            unit = None
    return passes[max(passes)] if passes else {}


def _qnn_api_from_log(log: str) -> str | None:
    m = re.search(r"interface version: (\d+\.\d+\.\d+)", log)
    return m.group(1) if m else None


def _original_name(name: str, order: dict[str, tuple[int, str]]) -> str | None:
    """The model's node behind a name onnxruntime reports ('X_token_7' after the NHWC pass)."""
    if name in order:
        return name
    stem = re.sub(r"_token_\d+$", "", name)
    return stem if stem in order and stem != name else None


def _has_external_data(model: Any) -> bool:
    return any(t.data_location == 1 for t in model.graph.initializer)  # onnx.TensorProto.EXTERNAL


def _qnn_api_versions() -> dict[str, str]:
    """The QNN core and HTP backend API versions, read from libQnnHtp's interface table."""
    import ctypes

    import onnxruntime_qnn

    class _Version(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("major", "minor", "patch")]

    class _Interface(ctypes.Structure):  # the head of QnnInterface_t (QnnInterface.h)
        _fields_ = [
            ("backend_id", ctypes.c_uint32),
            ("provider_name", ctypes.c_char_p),
            ("core_api", _Version),
            ("backend_api", _Version),
        ]

    try:
        with _stdout_to_stderr():
            lib = ctypes.CDLL(onnxruntime_qnn.get_qnn_htp_path())
        get = lib.QnnInterface_getProviders
        get.restype = ctypes.c_int
        providers = ctypes.POINTER(ctypes.POINTER(_Interface))()
        count = ctypes.c_uint32()
        if get(ctypes.byref(providers), ctypes.byref(count)) != 0 or count.value < 1:
            return {}
        head = providers[0].contents
    except (OSError, AttributeError, ValueError):
        return {}

    def text(v: _Version) -> str:
        return f"{v.major}.{v.minor}.{v.patch}"

    return {"qnn-api": text(head.core_api), "qnn-htp-api": text(head.backend_api)}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """libQnnHtp prints '# LIBNATIVE: No alternate configuration ...' to C stdout when it is first
    loaded (at the first HTP session); send it to stderr so stdout stays clean for --json."""
    import ctypes

    try:
        stdout_fd = sys.stdout.fileno()
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced streams (pytest capture, IDEs)
        stdout_fd, stderr_fd = 1, 2
    sys.stdout.flush()
    saved = os.dup(stdout_fd)
    try:
        os.dup2(stderr_fd, stdout_fd)
        yield
    finally:
        libc = ctypes.CDLL(None)
        libc.fflush(None)  # C stdio may still hold the line in its buffer: flush it to stderr
        os.dup2(saved, stdout_fd)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
