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

    from modelquant.data import Batch, Dataset
    from modelquant.models.hf import HfModel
    from modelquant.tasks import Task


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


def first_output(out: Any) -> torch.Tensor:
    """A model's first output: the first field of a transformers ModelOutput, the first of a
    tuple or list, or the tensor itself."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return out[0] if isinstance(out, tuple | list) else out


def torch_forward(module: torch.nn.Module, batch: Batch) -> np.ndarray:
    """Run a torch module on a numpy batch (inputs in the batch's order); first output as numpy."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in batch.items()}
    with torch.no_grad():
        if takes_names(module):
            out = module(**tensors)
        else:
            out = module(*tensors.values())
    return first_output(out).detach().cpu().numpy()


def torch_outputs(
    module: torch.nn.Module, data: Dataset, task: Task, batch_size: int
) -> np.ndarray:
    """`module`'s first output over all of `data` in eval mode, reduced as `task` compares it
    (pooled embeddings): what `evaluator.predict` gives for an ONNX file."""
    module.eval()
    return np.concatenate(
        [task.reduce(batch, torch_forward(module, batch)) for batch, _ in data.batches(batch_size)]
    )


DEFAULT_OPSET = 17
"""The opset torch modules are exported with when the recipe gives none (see `GELU_OPSET`)."""
GELU_OPSET = 20
"""The first opset with a single `Gelu` op. Opset 17 spells GELU as Div, Erf, Add, Mul, Mul: five
elementwise ops that a quantizer may wrap in Q/DQ pairs one by one, and that onnxruntime only
fuses back into one kernel when nothing sits between them. A model whose opset-17 export holds
`Erf` is exported again at this opset when the installed onnxruntime runs it (and LayerNorm is a
single `LayerNormalization` op from opset 17 on, so the default already has it)."""


def takes_names(module: torch.nn.Module) -> bool:
    """A transformers model is fed by input name (input_ids, attention_mask, ...): the data's
    column order need not be its forward's argument order."""
    return hasattr(module, "main_input_name") and hasattr(module, "config")


def export_onnx(
    module: torch.nn.Module,
    sample: Batch,
    path: Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    output_names: list[str] | None = None,
) -> Path:
    """Export with the TorchScript exporter (`dynamo=False`) to one self-contained file, at
    `opset`, or with None at `DEFAULT_OPSET`, or `GELU_OPSET` for a model with GELU (`opset_note`
    says which and why).

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

    def write(version: int) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo; we choose it knowingly.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=version,
                input_names=names,
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )

    write(opset or DEFAULT_OPSET)
    if opset is None and _has_op(path, "Erf") and runs_gelu_op():
        write(GELU_OPSET)
    return path


def _has_op(path: Path, op_type: str) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type == op_type for n in graph.node)


def runs_gelu_op() -> bool:
    """Whether the installed onnxruntime's CPU EP has a kernel for the ai.onnx `Gelu` op (opset
    20), read from its own kernel registry."""
    from onnxruntime.capi import _pybind_state

    return any(
        k.op_name == "Gelu" and k.domain == "" and k.provider == "CPUExecutionProvider"
        for k in _pybind_state.get_all_opkernel_def()
    )


def opset_note(path: Path, asked: int | None) -> str:
    """Why the file has its opset: the recipe's, or the default and why."""
    from modelquant.models import onnx_file

    got = onnx_file.opset(path)
    if asked is not None:
        return f"opset {got}: the recipe's"
    if got == GELU_OPSET:
        return (
            f"opset {got}: GELU as one Gelu op (opset {DEFAULT_OPSET} spells it Div, Erf, Add, "
            "Mul, Mul, which a quantizer wraps in Q/DQ pairs one by one)"
        )
    return f"opset {got}: the default"


def fold_batchnorm(module: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """A copy of `module` (in eval mode) with each BatchNorm that directly follows a Conv or
    Linear folded into its weights, through torch.fx and torch's own `fuse_conv_bn_eval` /
    `fuse_linear_bn_eval`; and the names of the folded BatchNorms. A module torch.fx cannot trace
    comes back unchanged with no names (the ONNX side may still fold: onnxruntime's optimizer in
    the quantize stage's pre-processing)."""
    import copy

    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    model = copy.deepcopy(module).eval()
    try:
        traced = fx.symbolic_trace(model)
    except Exception:
        return module, []
    modules = dict(traced.named_modules())
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    folded: list[str] = []
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), bns):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fused: nn.Module = fuse_conv_bn_eval(layer, bn)
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_module(traced, str(prev.target), fused)
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
        folded.append(str(node.target))
    if not folded:
        return module, []
    traced.graph.lint()
    traced.recompile()
    return traced.eval(), folded


def _set_module(root: torch.nn.Module, target: str, module: torch.nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


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
        opset=opset,
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
