"""Model specs: where a model comes from (a factory plus checkpoint, an ONNX file, or a Hugging Face
folder with a task)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """Where the model comes from: a Python factory plus a checkpoint, or an ONNX file."""

    factory: str | None = Field(
        None, description="Python factory 'package.module:function' that builds the torch module."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    checkpoint: Path | None = Field(
        None, description="Weights for the factory's module: .safetensors, or .pt (weights only)."
    )
    onnx: Path | None = Field(None, description="An existing ONNX model file instead of a factory.")
    hf: str | None = Field(
        None,
        description="A Hugging Face model: a local folder in Hugging Face layout, or a packaged "
        "model's short name (all-MiniLM-L6-v2); exported with optimum. Nothing is downloaded.",
    )
    task: str | None = Field(
        None,
        description="With hf: the exporter's task (feature-extraction, text-classification, "
        "...); default feature-extraction.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("factory", "onnx", "hf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'factory' (with 'checkpoint'), 'onnx' or 'hf'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.task is not None and self.hf is None:
            raise ValueError("'task' goes with 'hf' (the recipe's own task: picks the metric)")
        if self.hf is not None and (self.checkpoint is not None or self.kwargs):
            raise ValueError("an hf model folder carries its weights; remove checkpoint/kwargs")
        if self.factory is not None and not re.fullmatch(r"[\w.]+:\w+", self.factory):
            raise ValueError(
                f"factory must look like 'package.module:function', not {self.factory!r}"
            )
        if self.onnx is not None and self.checkpoint is not None:
            raise ValueError("'checkpoint' goes with 'factory'; an ONNX file carries its weights")
        return self
