"""The stage registry: importing this package registers every built-in technique."""

from __future__ import annotations

from modelquant.stages import (  # noqa: F401  (each module registers its stage)
    analyze,
    distill,
    export,
    prune,
    quantize,
)
from modelquant.stages.base import (
    Stage,
    StageConfig,
    StageContext,
    register_stage,
    registered_stages,
)

__all__ = ["Stage", "StageConfig", "StageContext", "register_stage", "registered_stages"]
