"""`ModelState`: the model in hand (torch module and/or ONNX file), its lineage, and export."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from modelquant.data import Batch
    from modelquant.models.hf import HfModel


@dataclass(frozen=True)
class StageRecord:
    """One stage that ran: its name, settings, wall time, what it reported, whether cached."""

    name: str
    settings: dict[str, Any]
    seconds: float
    details: dict[str, Any]
    cached: bool = False


@dataclass(frozen=True)
class ModelState:
    """What the pipeline carries between stages. At least one of `module` and `onnx_path` is set."""

    module: torch.nn.Module | None = None
    onnx_path: Path | None = None
    lineage: tuple[StageRecord, ...] = ()
    variants: dict[str, Path] = field(default_factory=dict)
    """Backend-specific flavours of the ONNX model (e.g. a static-shape NPU variant)."""
    hf: HfModel | None = None
    """Set for a Hugging Face model: its folder and task (export goes through optimum)."""

    def replace(self, **changes: Any) -> ModelState:
        return dataclasses.replace(self, **changes)

    @property
    def form(self) -> str:
        return "onnx" if self.onnx_path is not None else "torch"


def torch_forward(module: torch.nn.Module, batch: Batch) -> np.ndarray:
    """Run a torch module on a numpy batch (inputs in the batch's order); first output as numpy."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in batch.items()}
    with torch.no_grad():
        if _takes_names(module):
            out = module(**tensors)
        else:
            out = module(*tensors.values())
    if hasattr(out, "to_tuple"):  # a transformers ModelOutput: its first field
        out = out.to_tuple()[0]
    if isinstance(out, tuple | list):
        out = out[0]
    return out.detach().cpu().numpy()


DEFAULT_OPSET = 17
"""The opset torch modules are exported with when the recipe gives none."""


def _takes_names(module: torch.nn.Module) -> bool:
    """A transformers model is fed by input name (input_ids, attention_mask, ...): the data's
    column order need not be its forward's argument order."""
    return hasattr(module, "main_input_name") and hasattr(module, "config")


def export_onnx(
    module: torch.nn.Module,
    sample: Batch,
    path: Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    output_names: list[str] | None = None,
) -> Path:
    """Export with the TorchScript exporter (`dynamo=False`) to one self-contained file.

    The dynamo exporter (torch 2.13's default) writes weights to a side `.onnx.data` file even for
    small models, emits opset 20 and was 20-40x slower to export the digits CNN with the same
    numerics, so the TorchScript path is the deliberate choice for the models modelquant targets.
    """
    import torch

    module = module.eval()
    names = list(sample)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample.values())
    with torch.no_grad():
        probe = module(*args)
    n_out = len(probe) if isinstance(probe, tuple | list) else 1
    if output_names is not None:
        from modelquant.errors import UserError

        if len(output_names) != n_out:
            raise UserError(
                f"export output_names lists {len(output_names)} name(s), and the model has "
                f"{n_out} output(s): give one name per output"
            )
        clash = sorted(set(output_names) & set(names)) or (
            sorted({n for n in output_names if output_names.count(n) > 1})
        )
        if clash:
            raise UserError(
                f"export output_names: {clash} used twice (inputs: {names}); give each output "
                "its own name"
            )
    outputs = output_names or (["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])
    dynamic_axes = {n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; we choose it knowingly.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path


def export_state(
    state: ModelState,
    sample: Batch,
    path: Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    output_names: list[str] | None = None,
) -> str:
    """Export the state's torch module with the exporter its kind takes; returns the exporter's
    name. A Hugging Face model goes through optimum (its task's inputs, batch and sequence axes
    free; `dynamic_batch` and `output_names` are the exporter's own), any other torch module
    through `export_onnx`."""
    assert state.module is not None
    if state.hf is not None:
        from modelquant.models import hf

        hf.export(state.module, state.hf, path, opset)
        return "optimum"
    export_onnx(
        state.module,
        sample,
        path,
        opset=opset or DEFAULT_OPSET,
        dynamic_batch=dynamic_batch,
        output_names=output_names,
    )
    return "torchscript"


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a torch module."""
    total = nonzero = 0
    for p in module.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero
