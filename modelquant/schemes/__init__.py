"""The registry of quantization schemes: one config class and one handler per scheme name, and
how the precision (and mode) a recipe names picks a scheme.

A scheme module registers its handler once:

    @register_scheme("int8_static", precision="int8", mode="static", config=Int8StaticConfig)
    def quantize(source, out, plan, ctx) -> dict: ...

and adding a precision is that module plus one import line at the bottom of this file.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.stages.base import StageContext


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger at WARNING and its histogram
    calibrators print progress to stdout, which must stay clean for --json."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def check_precision(value: str) -> str:
    """A recipe's precision must be a registered one (pydantic validators call this)."""
    if value not in registered_precisions():
        raise ValueError(
            f"unknown precision '{value}' (registered: {', '.join(registered_precisions())})"
        )
    return value


class SchemeConfig(BaseModel):
    """Base of every scheme's settings: unknown keys are errors, and so are NaN and infinity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


C = TypeVar("C", bound=SchemeConfig)


@dataclass(frozen=True)
class LayerSettings:
    """What a layer rule of the precision map asks for one node, beyond the stage's settings
    (None: the stage's setting)."""

    precision: str
    per_channel: bool | None = None
    symmetric: bool | None = None
    calibration: str | None = None
    """A calibration method name (minmax, percentile, entropy) for this node's activations."""
    activations: str | None = None
    """An activation type for this node's activations (e.g. uint16: the w8a16 precision)."""


@dataclass(frozen=True)
class QuantPlan(Generic[C]):
    """What the quantize stage decided for one pass of a handler, on the graph it quantizes.

    A model with one precision is one pass of its scheme (`only` None: every node the scheme can
    quantize, less `kept_float`). A precision map with several precisions runs one pass per scheme,
    in phase order; a scheme that a rule picked quantizes exactly `only`.
    """

    config: C
    """The scheme's settings."""
    kept_float: tuple[str, ...] = ()
    """Node names (of the graph handed to the handler) this pass must leave alone: kept in float
    or given to another scheme."""
    only: tuple[str, ...] | None = None
    """When set, the node names this pass quantizes, and no other."""
    layers: Mapping[str, LayerSettings] = field(default_factory=dict)
    """Per-node settings from the layer rules, for nodes this pass quantizes."""


Handler = Callable[[Path, Path, QuantPlan[C], "StageContext"], dict[str, Any]]
Applied = Callable[[Any, Any, set[str]], bool]
"""`applied(node_before, model_after, weights)`: whether the scheme's precision reached this node
(a NodeProto of the graph handed in, the ModelProto written, that graph's initializer names)."""

PHASE_WEIGHTS = 0
"""Weight-only rewrites of float ops (int4 MatMulNBits) run first, on the float graph."""
PHASE_QDQ = 1
"""Calibrated or dynamic Q/DQ insertion (int8, fp8) runs next."""
PHASE_CAST = 2
"""Float-type conversion (fp16) runs last, on the nodes no other pass touched."""


@dataclass(frozen=True)
class Scheme(Generic[C]):
    """A registered scheme: name, the precision and mode that pick it, config and handler."""

    name: str
    precision: str
    mode: str | None
    """The recipe's `mode` that picks it (None: the precision's only scheme, any mode)."""
    config: type[C]
    handler: Handler[C]
    keeps_float: bool = False
    """True for the float 'scheme' (fp32): nodes given its precision are left unquantized."""
    phase: int = PHASE_QDQ
    """When its pass runs in a precision map with several schemes (PHASE_*)."""
    applied: Applied | None = None
    """How to see in the written graph that a node got this precision (None: the quantize
    stage's integer-op check)."""
    layer_keys: frozenset[str] = frozenset()
    """The layer-rule settings (`LayerSettings` fields besides precision) the scheme honours;
    a rule that sets another one for its layers is refused before any pass runs."""

    def check_layers(self, layers: Mapping[str, LayerSettings]) -> None:
        """UserError naming the rule settings these layers ask for that the scheme ignores."""
        asked = sorted(
            {k for layer in layers.values() for k, v in vars(layer).items() if v is not None}
            - {"precision"}
            - self.layer_keys
        )
        if asked:
            takes = ", ".join(sorted(self.layer_keys)) or "none"
            mode = f" ({self.mode} mode)" if self.mode else ""
            raise UserError(
                f"quantize overrides set {', '.join(asked)} on {self.precision}{mode} layers, "
                f"which scheme '{self.name}' does not take (its rule settings: {takes}); drop "
                "them from those rules"
            )

    def quantize(
        self, source: Path, out: Path, plan: QuantPlan[C], ctx: StageContext
    ) -> dict[str, Any]:
        """Write `source` quantized under `plan` to `out`; what the report should say."""
        return self.handler(source, out, plan, ctx)


_REGISTRY: dict[str, Scheme[Any]] = {}


def register_scheme(
    name: str,
    *,
    precision: str,
    config: type[C],
    mode: str | None = None,
    keeps_float: bool = False,
    phase: int = PHASE_QDQ,
    applied: Applied | None = None,
    layer_keys: frozenset[str] = frozenset(),
) -> Callable[[Handler[C]], Handler[C]]:
    """Function decorator: make `handler` the scheme `name` (once), picked by `precision` and
    `mode` in a recipe's quantize stage, with settings validated by `config`."""

    def decorate(handler: Handler[C]) -> Handler[C]:
        if name in _REGISTRY:
            raise ValueError(f"quantization scheme '{name}' is registered twice")
        clash = [s.name for s in _REGISTRY.values() if s.precision == precision and s.mode == mode]
        if clash:
            raise ValueError(
                f"scheme '{name}' and '{clash[0]}' both claim precision '{precision}', "
                f"mode '{mode}'"
            )
        _REGISTRY[name] = Scheme(
            name, precision, mode, config, handler, keeps_float, phase, applied, layer_keys
        )
        return handler

    return decorate


def registered_schemes() -> dict[str, Scheme[Any]]:
    """Scheme name -> Scheme, in registration order."""
    return dict(_REGISTRY)


def registered_precisions() -> list[str]:
    """The precisions a recipe may name (each picks one or more schemes)."""
    return list(dict.fromkeys(s.precision for s in _REGISTRY.values()))


def float_precisions() -> set[str]:
    """Precisions that mean 'keep in float' in a layer rule."""
    return {s.precision for s in _REGISTRY.values() if s.keeps_float}


def scheme_for(precision: str, mode: str | None = None) -> Scheme[Any]:
    """The scheme a recipe's `precision` (and `mode`) picks; ValueError naming what exists."""
    candidates = [s for s in _REGISTRY.values() if s.precision == precision]
    if not candidates:
        raise ValueError(
            f"unknown precision '{precision}' (registered: {', '.join(registered_precisions())})"
        )
    for scheme in candidates:
        if scheme.mode == mode:
            return scheme
    modeless = [s for s in candidates if s.mode is None]
    if modeless:
        return modeless[0]
    modes = ", ".join(str(s.mode) for s in candidates)
    raise ValueError(f"precision '{precision}' has no mode '{mode}' (it has: {modes})")


# One line per scheme: importing the module registers it.
from modelquant.schemes import fp8, fp16, fp32, int4, int8_dynamic, int8_static  # noqa: E402

__all__ = [
    "PHASE_CAST",
    "PHASE_QDQ",
    "PHASE_WEIGHTS",
    "LayerSettings",
    "QuantPlan",
    "Scheme",
    "SchemeConfig",
    "float_precisions",
    "fp8",
    "fp16",
    "fp32",
    "int4",
    "int8_dynamic",
    "int8_static",
    "register_scheme",
    "registered_precisions",
    "registered_schemes",
    "scheme_for",
]
