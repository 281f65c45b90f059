"""Model specs: where a model comes from (a factory plus checkpoint, or an ONNX file)."""

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

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.factory is None) == (self.onnx is None):
            raise ValueError("give exactly one of 'factory' (with 'checkpoint') or 'onnx'")
        if self.factory is not None and not re.fullmatch(r"[\w.]+:\w+", self.factory):
            raise ValueError(
                f"factory must look like 'package.module:function', not {self.factory!r}"
            )
        if self.onnx is not None and self.checkpoint is not None:
            raise ValueError("'checkpoint' goes with 'factory'; an ONNX file carries its weights")
        return self
