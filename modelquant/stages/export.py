"""The `export` stage: torch module to ONNX, checked by onnx.checker and against torch's outputs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from modelquant.errors import StageError
from modelquant.stages.base import Stage, StageConfig, StageContext, register_stage
from modelquant.state import ModelState, export_onnx, torch_forward


class ExportConfig(StageConfig):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset to export with.")
    dynamic_batch: bool = Field(True, description="Leave the batch dimension free ('batch').")
    batch_size: int = Field(
        1, gt=0, description="Fixed batch size of the exported model when dynamic_batch is false."
    )
    atol: float = Field(
        1e-4, gt=0, description="Largest allowed |torch - onnxruntime| on evaluation batches."
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
        try:
            export_onnx(
                state.module,
                data.sample_batch(batch),
                path,
                opset=cfg.opset,
                dynamic_batch=cfg.dynamic_batch,
                output_names=cfg.output_names,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise StageError("export", f"torch.onnx.export failed: {exc}") from exc
        onnx_file.check(path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for inputs, _ in data.batches(batch, drop_last=not cfg.dynamic_batch):
            expected = torch_forward(state.module, inputs)
            got = session.run(None, inputs)[0]
            worst = max(worst, float(np.max(np.abs(expected - got))))
        ctx.details.update(
            exporter="torchscript",
            opset=cfg.opset,
            dynamic_batch=cfg.dynamic_batch,
            max_abs_diff=worst,
            atol=cfg.atol,
            compared_samples=len(data),
        )
        if worst > cfg.atol:
            raise StageError(
                "export",
                f"onnxruntime differs from torch by {worst:.3g} > atol {cfg.atol:g}; "
                "the model uses an op the exporter does not translate faithfully",
            )
        return state.replace(onnx_path=path)
