"""ONNX files on disk: check, size, hash, move and count parameters, external data included."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant.errors import UserError
from modelquant.models import ModelSource, register_model_source, resolve_path
from modelquant.state import ModelState

if TYPE_CHECKING:
    from modelquant.models.spec import ModelSpec


def _load(path: Path, with_data: bool = False):  # type: ignore[no-untyped-def]
    import onnx

    return onnx.load(str(path), load_external_data=with_data)


def external_files(path: Path) -> list[Path]:
    """Side files (`.onnx.data`, ...) that `path` keeps weights in, relative to its folder."""
    from onnx import TensorProto

    model = _load(path)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / n for n in sorted(names)]


def files_of(path: Path) -> list[Path]:
    """The model file and its external data files."""
    return [path, *external_files(path)]


def check(path: Path) -> None:
    """`onnx.checker` on the file (by path, so external data and >2 GB models work), plus what
    the checker lets through and onnxruntime would refuse later: an opset newer than the installed
    onnx knows, external data files shorter than the tensors they hold."""
    import onnx

    if path.is_dir():
        raise UserError(f"{path} is a folder; give the .onnx file itself")
    try:
        onnx.checker.check_model(str(path))
    except (
        onnx.checker.ValidationError,
        onnx.onnx_cpp2py_export.shape_inference.InferenceError,
    ) as e:
        raise UserError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    except Exception as exc:  # protobuf decode errors have no public type
        raise UserError(f"{path} cannot be read as ONNX: {str(exc).splitlines()[0]}") from None
    model = _load(path)
    newest = onnx.defs.onnx_opset_version()
    version = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), None)
    if version is not None and version > newest:
        raise UserError(
            f"{path} uses opset {version}, newer than this onnx {onnx.__version__} knows (up to "
            f"{newest}); export it with an opset from 13 to {newest}"
        )
    # The checker only looks for an external data file, not whether it holds every tensor.
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        data = path.parent / info.get("location", "")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if data.is_file() and data.stat().st_size < end:
            raise UserError(
                f"{path}: external data file {data.name} ends at byte {data.stat().st_size} but "
                f"tensor '{tensor.name}' needs bytes up to {end}; copy the complete {data.name} "
                "beside the model"
            )


def graph_inputs(graph: Any) -> list[Any]:
    """The inputs a caller feeds: the graph's inputs that are not initializers (older exports
    list their weights among the inputs too)."""
    initializers = {t.name for t in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def input_names(path: Path) -> tuple[str, ...]:
    return tuple(value.name for value in graph_inputs(_load(path).graph))


def size_bytes(path: Path) -> int:
    """Bytes on disk of the model and its external data."""
    return sum(p.stat().st_size for p in files_of(path))


def gzip_bytes(path: Path) -> int:
    """Bytes of the model and its external data after gzip (level 9): where sparsity shows."""
    total = 0
    for p in files_of(path):
        total += len(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0))
    return total


def content_hash(path: Path) -> str:
    """sha256 over the model file and its external data files."""
    digest = hashlib.sha256()
    for p in files_of(path):
        digest.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def remove(path: Path) -> None:
    """Delete a model file and its external data files (if they are there)."""
    for p in files_of(path) if path.is_file() else []:
        p.unlink(missing_ok=True)


def copy(src: Path, dst: Path) -> Path:
    """Copy a model to `dst` atomically, with its external data.

    Everything is written into a fresh temp folder beside `dst` and then renamed into place, so a
    rerun never appends to the `.data` file of an earlier copy and no half-written file is seen.
    """
    import tempfile

    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    externals = external_files(src)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp_dir:
        tmp = Path(tmp_dir) / dst.name
        if externals:
            # Rewrite so the side file is named after the destination and travels with it.
            model = _load(src, with_data=True)
            data_name = f"{dst.name}.data"
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                location=data_name,
                size_threshold=1024,
            )
            os.replace(tmp.with_name(data_name), dst.with_name(data_name))
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst


# Integer-weight ops: op type -> ((weight input, its zero point input or None, channel axis), ...)
# and the inputs that are scales or zero points (never parameters). Axis None: read `transB`.
_INTEGER_WEIGHTS: dict[
    str, tuple[tuple[tuple[int, int | None, int | None], ...], tuple[int, ...]]
] = {
    "QLinearConv": (((3, 5, 0), (8, None, 0)), (1, 2, 4, 5, 6, 7)),
    "QLinearMatMul": (((0, 2, 0), (3, 5, -1)), (1, 2, 4, 5, 6, 7)),
    "QGemm": (((3, 5, None), (6, None, 0)), (1, 2, 4, 5, 7, 8)),
    "ConvInteger": (((1, 3, 0),), (2, 3)),
    "MatMulInteger": (((0, 2, 0), (1, 3, -1)), (2, 3)),
    "QLinearAdd": (((0, 2, 0), (3, 5, 0)), (1, 2, 4, 5, 6, 7)),
    "QLinearMul": (((0, 2, 0), (3, 5, 0)), (1, 2, 4, 5, 6, 7)),
}


def _attr(node, name: str, default: int) -> int:  # type: ignore[no-untyped-def]
    return next((a.i for a in node.attribute if a.name == name), default)


def param_counts(path: Path) -> tuple[int, int]:
    """(parameters, non-zero parameters) of the model's weights.

    Weights are float initializers with at least two values, quantized initializers that a
    DequantizeLinear reads (QDQ) or a Gather picks rows from before one (quantized embedding
    tables), and integer initializers that integer ops read as weights or
    biases (QOperator: QLinearConv, QLinearMatMul, QGemm, ...; dynamic: ConvInteger,
    MatMulInteger), so one model counts the same in every quantization format. Scales, zero
    points and shape constants are not parameters; neither is a weight scale that a dynamic graph
    multiplies with DynamicQuantizeLinear's activation scale. A quantized weight is zero where it
    equals its zero point.
    """
    from onnx import numpy_helper

    model = _load(path, with_data=True)
    inits = {t.name: t for t in model.graph.initializer}
    qparams: set[str] = set()
    # weight name -> (its zero point's name or None, channel axis of a per-channel zero point)
    quantized: dict[str, tuple[str | None, int]] = {}

    def arg(node, i: int) -> str:  # type: ignore[no-untyped-def]
        return node.input[i] if i < len(node.input) else ""

    dynamic_scales = {
        node.output[1]
        for node in model.graph.node
        if node.op_type == "DynamicQuantizeLinear" and len(node.output) > 1
    }
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qparams.update(node.input[1:])
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            zp = arg(node, 2) or None
            quantized[node.input[0]] = (zp, _attr(node, "axis", 1))
        if node.op_type == "Mul" and dynamic_scales.intersection(node.input):
            qparams.update(n for n in node.input if n in inits)
        if node.op_type in _INTEGER_WEIGHTS:
            weights, scales = _INTEGER_WEIGHTS[node.op_type]
            qparams.update(arg(node, i) for i in scales)
            for w, zp_index, axis in weights:
                name = arg(node, w)
                if name not in inits:
                    continue
                if axis is None:  # QGemm's B: (K, N), or (N, K) when transposed
                    axis = 0 if _attr(node, "transB", 0) else 1
                zp = (arg(node, zp_index) or None) if zp_index is not None else None
                quantized[name] = (zp, axis)
    # An integer embedding table that a Gather picks rows from and a DequantizeLinear then
    # dequantizes (onnxruntime's quantized Gather): the table is the weight, the DQ its zero point.
    dequantized_by = {
        n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input
    }
    for node in model.graph.node:
        dq = dequantized_by.get(node.output[0]) if node.output else None
        if node.op_type == "Gather" and node.input[0] in inits and dq is not None:
            quantized[node.input[0]] = (arg(dq, 2) or None, _attr(dq, "axis", 1))
    total = nonzero = 0
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            count, nz, used = _block_quantized_counts(node, inits)
            total, nonzero = total + count, nonzero + nz
            qparams.update(used)
    for name, tensor in inits.items():
        if name in qparams and name not in quantized:
            continue
        values = numpy_helper.to_array(tensor)
        if name in quantized:
            zp_name, axis = quantized[name]
            zero = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else np.zeros(1)
            if zero.ndim == 1 and zero.size > 1 and values.ndim > 1:  # per-channel along `axis`
                shape = [1] * values.ndim
                shape[axis % values.ndim] = zero.size
                zero = zero.reshape(shape)
            # float64 holds every int32 exactly, and FP8 values below 1 that int64 would truncate
            nz = int(np.count_nonzero(values.astype(np.float64) != zero.astype(np.float64)))
        elif values.dtype.kind == "f" and values.ndim >= 1 and values.size > 1:
            nz = int(np.count_nonzero(values))
        else:
            continue
        total += int(values.size)
        nonzero += nz
    return total, nonzero


def _block_quantized_counts(node: Any, inits: dict[str, Any]) -> tuple[int, int, list[str]]:
    """(parameters, non-zero parameters, initializers read) of a weight-only block-quantized node:
    MatMulNBits (K x N weights packed `bits` to a byte, one zero point per block, default the
    middle of the range) or GatherBlockQuantized (INT4/UINT4 data); scales are not parameters."""
    from onnx import TensorProto, numpy_helper

    def arg(i: int) -> str:
        return str(node.input[i]) if i < len(node.input) else ""

    if node.op_type == "GatherBlockQuantized":
        used = [arg(i) for i in (0, 2, 3) if arg(i) in inits]
        if arg(0) not in inits:
            return 0, 0, used
        values = numpy_helper.to_array(inits[arg(0)]).astype(np.int64)
        zero: Any = 8 if inits[arg(0)].data_type == TensorProto.UINT4 else 0
        if arg(3) in inits:  # one zero point per block along quantize_axis
            axis, block = _attr(node, "quantize_axis", 1), _attr(node, "block_size", 128)
            points = numpy_helper.to_array(inits[arg(3)]).astype(np.int64)
            points = np.repeat(points, block, axis=axis)
            zero = np.take(points, np.arange(values.shape[axis]), axis=axis)
        return int(values.size), int(np.count_nonzero(values != zero)), used
    used = [arg(i) for i in (1, 2, 3, 4) if arg(i) in inits]
    if arg(1) not in inits:
        return 0, 0, used
    k, n, bits = _attr(node, "K", 0), _attr(node, "N", 0), _attr(node, "bits", 4)
    packed = numpy_helper.to_array(inits[arg(1)]).reshape(n, -1).astype(np.int64)
    per_byte = 8 // bits
    shifts = np.arange(per_byte) * bits
    values = ((packed[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(n, -1)
    blocks = values.shape[1] // _attr(node, "block_size", 32)
    zero = 1 << (bits - 1)
    if arg(3) in inits:
        points = numpy_helper.to_array(inits[arg(3)])
        if points.dtype.kind == "f":  # HQQ: float zero points
            points = np.rint(points).astype(np.int64).reshape(n, -1)
        else:
            raw = points.astype(np.int64).reshape(n, -1)
            points = ((raw[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(n, -1)
        zero = np.repeat(points[:, :blocks], values.shape[1] // blocks, axis=1)
    nonzero = int(np.count_nonzero((values != zero)[:, :k]))
    return k * n, nonzero, used


@register_model_source("onnx")
class OnnxSource(ModelSource):
    """An existing ONNX file (external data included)."""

    def claims(self, spec: ModelSpec) -> bool:
        return spec.onnx is not None

    def load(self, spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
        assert spec.onnx is not None
        path = resolve_path(spec.onnx, base_dirs, "ONNX model")
        check(path)
        return ModelState(onnx_path=path)

    def key_parts(self, spec: ModelSpec, base_dirs: list[Path]) -> list[Any]:
        assert spec.onnx is not None
        return [content_hash(resolve_path(spec.onnx, base_dirs, "ONNX model"))]


def opset(path: Path) -> int | None:
    """The model's default-domain opset (None when it imports none)."""
    for entry in _load(path).opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None
