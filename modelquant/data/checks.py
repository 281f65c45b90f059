"""Data checked against the model before any stage runs: names, dtypes, shapes, values, labels.

Each problem is a one-line `UserError` naming the data entry (`data.calibration`, ...) and the fix;
harmless differences (float64 data for a float32 model, one array for a one-input model under
another name) are fixed here and said once in the log. `check_overlap` refuses tuning data that
is the evaluation data: a report must not gate on data it was tuned on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant.data import Batch, Dataset
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec, Recipe

Log = Callable[[str], None]
Probe = Callable[[Batch], tuple[int, ...]]
PROBE_ROWS = 2


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class InputSignature:
    """One model input: its name, element type and shape (free dimensions as None)."""

    name: str
    dtype: np.dtype[Any] | None = None
    """None: not declared (a torch module); float data is cast to the model's float type."""
    shape: tuple[int | None, ...] | None = None
    """Batch dimension included; None when not declared."""


@dataclass(frozen=True)
class ModelSignature:
    """What a model takes and gives, as far as it declares it, to check data against."""

    inputs: tuple[InputSignature, ...] | None
    """None: inputs are positional and unnamed (a torch module); the probe checks them."""
    num_classes: int | None = None
    """Size of the first output's last dimension when the model declares it."""
    float_dtype: np.dtype[Any] = dataclasses.field(default_factory=lambda: np.dtype(np.float32))
    """The type float data is cast to where an input declares none (a torch module's weights)."""
    probe: Probe | None = dataclasses.field(default=None, compare=False, repr=False)
    """Runs the model on a small batch and returns the first output's shape (torch)."""

    @classmethod
    def from_onnx(cls, path: Path) -> ModelSignature:
        """Inputs (initializers left out) and the classes of the first output, from the graph."""
        import onnx

        from modelquant.models.onnx_file import graph_inputs

        graph = onnx.load(str(path), load_external_data=False).graph

        def shape_of(value: Any) -> tuple[int | None, ...] | None:
            tensor = value.type.tensor_type
            if not tensor.HasField("shape"):
                return None
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)

        inputs = []
        for value in graph_inputs(graph):
            elem = value.type.tensor_type.elem_type
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else None
            inputs.append(InputSignature(value.name, dtype, shape_of(value)))
        num_classes = None
        if graph.output:
            out = shape_of(graph.output[0])
            if out is not None and len(out) >= 2 and out[-1]:
                num_classes = out[-1]
        return cls(tuple(inputs), num_classes)

    @classmethod
    def from_torch(cls, module: Any) -> ModelSignature:
        """A torch module declares no input names or shapes: its forward is probed per entry."""
        import torch

        from modelquant.state import torch_forward

        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        try:
            float_dtype = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        except (TypeError, RuntimeError):  # bfloat16 has no numpy type: feed float32
            float_dtype = np.dtype(np.float32)

        def probe(batch: Batch) -> tuple[int, ...]:
            return tuple(torch_forward(module, batch).shape)

        return cls(None, None, float_dtype, probe)

    def named_after(self, data: Dataset) -> ModelSignature:
        """For a torch model, the inputs its ONNX export gets: the evaluation data's names and
        row shapes (the model ran on them), so other entries are held to the same."""
        if self.inputs is not None:
            return self
        inputs = tuple(
            InputSignature(n, None, (None, *a.shape[1:])) for n, a in data.inputs.items()
        )
        return dataclasses.replace(self, inputs=inputs)


# ---------------------------------------------------------------- one entry against the model


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _first_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def _match_names(entry: str, data: Dataset, signature: ModelSignature, log: Log) -> Batch:
    arrays = dict(data.inputs)
    if signature.inputs is None:
        return arrays
    want = [i.name for i in signature.inputs]
    have = list(arrays)
    if set(have) == set(want):
        return {name: arrays[name] for name in want}
    if len(have) == 1 and len(want) == 1:
        log(f"{entry}: array '{have[0]}' feeds the model's only input '{want[0]}'")
        return {want[0]: arrays[have[0]]}
    if set(want) <= set(have):
        fix = f"choose them with `inputs: {want}`"
    else:
        fix = f"choose arrays with `inputs: [...]` or rename them in the data to {want}"
    raise UserError(f"{entry}: the data's arrays {have} are not the model's inputs {want}; {fix}")


def _check_values(entry: str, name: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "biuf":
        raise UserError(
            f"{entry}: array '{name}' holds {a.dtype} values; a model input takes numbers"
        )
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            row = _first_row(~finite)
            raise UserError(
                f"{entry}: array '{name}' holds NaN or Inf (first at row {row}); "
                "clean or drop those rows"
            )


def _fit_dtype(entry: str, name: str, a: np.ndarray, want: np.dtype[Any] | None, log: Log) -> Any:
    if want is None or a.dtype == want:
        return a
    if a.dtype.kind == "f" and want.kind == "f":
        log(f"{entry}: array '{name}' cast from {a.dtype} to {want}, the model's input type")
        return a.astype(want)
    converted = a.astype(want)
    lost = converted.astype(a.dtype) != a
    if lost.any():
        row = _first_row(lost)
        raise UserError(
            f"{entry}: array '{name}' is {a.dtype} but the model takes {want}, and row {row} "
            f"would change in the conversion; give {want} data"
        )
    log(f"{entry}: array '{name}' cast from {a.dtype} to {want}, the model's input type")
    return converted


def _check_shape(entry: str, name: str, a: np.ndarray, model: InputSignature) -> None:
    want = model.shape
    if want is None or len(want) == 0:
        return
    rows, per_row = a.shape[1:], want[1:]
    if len(rows) == len(per_row) and all(
        w is None or w == h for w, h in zip(per_row, rows, strict=True)
    ):
        return
    hint = ""
    if len(rows) == len(per_row) == 1 and per_row[0] is not None:
        hint = f" ({rows[0]} features, the model takes {per_row[0]}; choose them with `inputs:`)"
    raise UserError(
        f"{entry}: array '{name}' has rows of shape {_shape(rows)} but the model's input "
        f"'{model.name}' takes {_shape(per_row)}{hint}; feed data shaped as the model was "
        "trained on"
    )


def _probe(entry: str, inputs: Batch, probe: Probe) -> tuple[int, ...]:
    batch = {n: np.ascontiguousarray(a[:PROBE_ROWS]) for n, a in inputs.items()}
    try:
        return probe(batch)
    except UserError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"'{n}' {a.dtype}{_shape(a.shape)}" for n, a in batch.items())
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(
            f"{entry}: the model's forward fails on {len(next(iter(batch.values())))} rows of it "
            f"({shapes}): {reason}; feed data shaped as the model was trained on"
        ) from None


def _check_labels(
    entry: str, role: str, labels: np.ndarray | None, num_classes: int | None
) -> np.ndarray | None:
    if labels is None:
        if role == "evaluation":
            raise UserError(
                f"{entry} has no labels; classification accuracy needs them "
                "(npz: a 'labels' array or `labels: NAME`; csv: `labels: COLUMN`)"
            )
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "biuf":
        raise UserError(
            f"{entry}: labels must be one integer class index per row "
            f"(got {labels.dtype} of shape {labels.shape})"
        )
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise UserError(
                f"{entry}: label {labels[row]} at row {row} is not a class index; "
                "classification labels are whole numbers 0..classes-1"
            )
    top = num_classes
    outside = (labels < 0) | (labels >= top if top is not None else False)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        classes = f"the model's {top} classes (0..{top - 1})" if top else "class indices (>= 0)"
        raise UserError(
            f"{entry}: label {labels[row]:g} at row {row} is outside {classes}; "
            f"{int(outside.sum())} row(s) are; fix the labels or the model"
        )
    return labels.astype(np.int64, copy=False)


def check_against_model(
    role: str,
    data: Dataset,
    signature: ModelSignature,
    task: str,
    log: Log = _quiet,
    entry: str | None = None,
) -> Dataset:
    """`data` fitted to the model (names mapped, floats cast), or a UserError naming the entry.

    `entry`: how messages name it (default `data.<role>`; see `entry_names`).

    Checks, in order: rows present; array names against the model's inputs; NaN/Inf; dtypes;
    shapes against the ONNX static dimensions (torch: one forward of two rows); labels against
    the model's classes (classification).
    """
    entry = entry or f"data.{role}"
    if not data.inputs:
        raise UserError(f"{entry} has no input arrays; name them with `inputs: [...]`")
    if len(data) == 0:
        raise UserError(f"{entry} has no rows ({data.description}); point it at data with rows")
    inputs = _match_names(entry, data, signature, log)
    models = {i.name: i for i in signature.inputs or ()}
    fitted: Batch = {}
    for name, a in inputs.items():
        _check_values(entry, name, a)
        model = models.get(name)
        want = model.dtype if model is not None and model.dtype is not None else None
        if want is None and a.dtype.kind == "f":
            want = signature.float_dtype
        fitted[name] = _fit_dtype(entry, name, a, want, log)
        if model is not None:
            _check_shape(entry, name, fitted[name], model)
    num_classes = signature.num_classes
    if signature.probe is not None:
        out = _probe(entry, fitted, signature.probe)
        if num_classes is None and len(out) >= 2:
            num_classes = out[-1]
    labels = data.labels
    if task == "classification":
        labels = _check_labels(entry, role, labels, num_classes)
    same = (
        labels is data.labels
        and all(fitted[n] is data.inputs.get(n) for n in fitted)
        and list(fitted) == list(data.inputs)
    )
    return data if same else data.replace(inputs=fitted, labels=labels)


# ---------------------------------------------------------------- overlap with the evaluation data


def _same_origin(a: DataSpec, b: DataSpec) -> bool:
    """Two entries naming the same split of the same source, or the same file."""
    if a.source != b.source:
        return False
    if a.split is not None or b.split is not None:
        return a.split == b.split
    return a.path is not None and a.path == b.path


def _row_hashes(data: Dataset) -> set[bytes]:
    return {hashlib.blake2b(row, digest_size=16).digest() for row in _row_bytes(data)}


def _row_bytes(data: Dataset) -> list[bytes]:
    """Each row's bytes over all input arrays (in order), so equal rows give equal bytes."""
    n = len(data)
    parts = [np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in data.inputs.values()]
    rows = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    signature = "|".join(f"{k}:{a.dtype.str}{a.shape[1:]}" for k, a in data.inputs.items())
    prefix = signature.encode()
    return [prefix + row.tobytes() for row in rows]


def check_overlap(
    entries: dict[str, tuple[DataSpec, Dataset]], names: dict[str, str] | None = None
) -> None:
    """Refuse training/calibration/validation data that is, or shares rows with, `evaluation`.

    `entries`: role -> (its spec, its data). An entry with `allow_overlap: true` is let through.
    Roles sharing one spec (calibration falling back to train) are checked once. `names`: how
    messages name each role (default `data.<role>`).
    """
    names = names or {}
    if "evaluation" not in entries:
        return
    eval_spec, eval_data = entries["evaluation"]
    eval_rows: set[bytes] | None = None
    seen: dict[int, str] = {}
    for role in sorted(entries, key=lambda r: r != "train"):
        spec, data = entries[role]
        if role == "evaluation" or spec.allow_overlap or id(spec) in seen:
            seen.setdefault(id(spec), role)
            continue
        seen[id(spec)] = role
        entry = names.get(role, f"data.{role}")
        fix = (
            "a report must not gate on data it was tuned on; use another split or file, "
            f"or set allow_overlap: true on {entry.split()[0]}"
        )
        if _same_origin(spec, eval_spec):
            where = f"split {spec.split}" if spec.split is not None else str(spec.path)
            raise UserError(f"{entry} is the evaluation data ({spec.source} {where}): {fix}")
        if eval_rows is None:
            eval_rows = _row_hashes(eval_data)
        shared = sum(
            hashlib.blake2b(row, digest_size=16).digest() in eval_rows for row in _row_bytes(data)
        )
        if shared:
            raise UserError(
                f"{entry} shares {shared} of its {len(data)} rows ({data.description}) with "
                f"data.evaluation ({eval_data.description}): {fix}"
            )


def entry_names(recipe: Recipe, roles: Iterable[str]) -> dict[str, str]:
    """How messages name each role's entry: `data.calibration`, or `data.train (used for
    calibration)` when a role falls back to another entry."""
    section = recipe.data
    out = {}
    for role in roles:
        if getattr(section, role, None) is not None:
            out[role] = f"data.{role}"
            continue
        spec = {"calibration": section.train}.get(role)
        owner = next((f for f in type(section).model_fields if getattr(section, f) is spec), None)
        out[role] = f"data.{owner} (used for {role})" if owner else f"data.{role}"
    return out
