"""The `export` stage: torch module to ONNX, checked by onnx.checker and against torch's outputs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from modelquant.errors import StageError, UserError
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.state import ModelState, export_state, fold_batchnorm, opset_note, torch_forward

DEFAULT_ATOL = 1e-4
HF_ATOL = 1e-3


class ExportConfig(StageConfig):
    opset: int | None = Field(
        None,
        ge=13,
        le=21,
        description="ONNX opset to export with (default: 17, or 20 for a model with GELU, so that "
        "it is one Gelu op, when the installed onnxruntime runs it; an hf model: optimum's "
        "choice for its type).",
    )
    fold_batchnorm: bool = Field(
        True,
        description="Fold each BatchNorm that directly follows a Conv or Linear into its "
        "weights before exporting (torch.fx and torch's fuse_conv_bn_eval / "
        "fuse_linear_bn_eval); the report names the folded layers.",
    )
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free ('batch').")
    batch_size: int = Field(
        1, gt=0, description="Fixed batch size of the exported model when dynamic_batch is false."
    )
    atol: float | None = Field(
        None,
        gt=0,
        description="Largest allowed |torch - onnxruntime| on evaluation batches (default 1e-4; "
        f"an hf model {HF_ATOL:g}: a transformer's hidden states reach magnitudes near 10, where "
        "float32 kernels differ in the fourth decimal).",
    )
    check_samples: int = Field(
        256, gt=0, description="Evaluation samples compared between torch and onnxruntime."
    )
    output_names: list[str] | None = Field(
        None, description="Names of the graph outputs (default: 'output' or 'output_<i>')."
    )


@register_stage("export")
class Export(Stage):
    """Export the torch model to ONNX (TorchScript exporter, one self-contained file)."""

    Config = ExportConfig
    needs = "torch"
    produces = "onnx"
    data_roles: ClassVar[tuple[str, ...]] = ("evaluation",)
    config: ExportConfig

    def artifact_name(self) -> str:
        return "model.fp32.onnx"

    def run(self, state: ModelState, ctx: StageContext) -> ModelState:
        import onnxruntime as ort

        from modelquant.models import onnx_file

        assert state.module is not None
        cfg = self.config
        data = ctx.data("evaluation").take(cfg.check_samples)
        batch = cfg.batch_size if not cfg.dynamic_batch else min(32, len(data))
        path = ctx.work_dir / "model.onnx"
        folded: list[str] = []
        exported = state
        if cfg.fold_batchnorm and state.hf is None:
            module, folded = fold_batchnorm(state.module)
            exported = state.replace(module=module)
        try:
            exporter = export_state(
                exported,
                data.sample_batch(batch),
                path,
                opset=cfg.opset,
                dynamic_batch=cfg.dynamic_batch,
                output_names=cfg.output_names,
            )
        except UserError:
            raise
        except Exception as exc:  # the exporters raise many types; all mean "cannot export"
            raise StageError("export", f"the ONNX export failed: {exc}") from exc
        onnx_file.check(path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        atol = cfg.atol or (HF_ATOL if state.hf is not None else DEFAULT_ATOL)
        names = [i.name for i in session.get_inputs()]
        for inputs, _ in data.batches(batch, drop_last=not cfg.dynamic_batch):
            expected = torch_forward(state.module, inputs)
            got = session.run(None, {n: inputs[n] for n in names})[0]
            worst = max(worst, float(np.max(np.abs(expected - got))))
        ctx.details.update(
            exporter=exporter,
            opset=onnx_file.opset(path),
            opset_reason=opset_note(path, cfg.opset) if state.hf is None else "optimum's choice",
            batchnorm_folded=folded,
            dynamic_batch=cfg.dynamic_batch,
            max_abs_diff=worst,
            atol=atol,
            compared_samples=len(data),
        )
        if worst > atol:
            raise StageError(
                "export",
                f"onnxruntime differs from torch by {worst:.3g} > atol {atol:g}; "
                "the model uses an op the exporter does not translate faithfully",
            )
        return state.replace(onnx_path=path)
