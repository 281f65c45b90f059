"""`quantize: {mode: auto}`: a few int8 schemes built, scored on the validation data and timed
against the float model at the recipe's batch sizes; the fastest within the accuracy budget is
kept, and the report lists every candidate and why the winner won."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from modelquant.backends.bench import Feeds

CandidateName = Literal[
    "static",
    "static-float-outputs",
    "static-all-ops",
    "static-per-tensor",
    "static-s8",
    "qoperator",
    "dynamic",
    "dynamic-per-tensor",
]

CANDIDATES: dict[str, dict[str, Any]] = {
    "static": {"mode": "static"},
    "static-float-outputs": {"mode": "static", "quantize_outputs": False},
    "static-all-ops": {"mode": "static", "op_types": "all"},
    "static-per-tensor": {"mode": "static", "per_channel": False},
    "static-s8": {"mode": "static", "activations": "int8"},
    "qoperator": {"mode": "static", "format": "qoperator"},
    "dynamic": {"mode": "dynamic"},
    "dynamic-per-tensor": {"mode": "dynamic", "per_channel": False},
}
"""Each candidate as the settings it changes from the stage's (static: QDQ, uint8 activations,
int8 weights per channel, the compute op types). `static` is the fixed default, what the stage
does with `mode: static`. Static ones share one calibration (its ranges are cached by content)."""
FIXED_DEFAULT = "static"
DEFAULT_BUDGET = 0.01
"""The drop allowed when neither `accuracy_budget` nor a gate names one: one point."""
_EPS = 1e-9


class AutoConfig(BaseModel):
    """How `mode: auto` searches."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[CandidateName] | None = Field(
        None,
        description="The schemes tried (default: all of them): static, static-float-outputs "
        "(quantize_outputs false), static-all-ops (op_types all), static-per-tensor, static-s8 "
        "(int8 activations), qoperator, dynamic, dynamic-per-tensor.",
    )
    warmup: int = Field(10, ge=0, description="Untimed runs per model and batch size.")
    repeats: int = Field(
        60,
        gt=0,
        description="Timed runs per candidate and batch size (alternated in blocks with the "
        "float model, as evaluate times).",
    )


@dataclass
class Candidate:
    """One scheme tried: its settings, validation metric, size and speed against float."""

    name: str
    settings: dict[str, Any]
    path: Path | None = None
    metric: float | None = None
    drop: float | None = None
    size_ratio: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)
    speedup_ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    error: str | None = None
    said: dict[str, Any] = field(default_factory=dict)

    def within(self, budget: float) -> bool:
        return self.error is None and self.drop is not None and self.drop <= budget + _EPS

    def never_slower(self) -> bool:
        return bool(self.speedup) and min(self.speedup.values()) >= 1.0

    def mean_speedup(self) -> float:
        """Geometric mean of the speedups over the timed batch sizes."""
        if not self.speedup:
            return 0.0
        return math.exp(sum(math.log(v) for v in self.speedup.values()) / len(self.speedup))

    def details(self, budget: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            "metric": self.metric,
            "drop": self.drop,
            "size_ratio": self.size_ratio,
            "latency_ms": self.latency_ms,
            "speedup": self.speedup,
            "speedup_ci95": {k: list(v) for k, v in self.speedup_ci95.items()},
            "within_budget": self.within(budget),
            "error": self.error,
        }


def candidate_settings(
    names: Sequence[str] | None, pinned: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(name, settings) of each candidate tried: its own changes under what the recipe pinned
    (a setting the recipe gives wins); candidates that come out the same are tried once."""
    seen: list[dict[str, Any]] = []
    out = []
    for name in names or list(CANDIDATES):
        settings = {**CANDIDATES[name], **pinned}
        if settings["mode"] == "dynamic":
            keep = ("mode", "weights", "per_channel", "reduce_range")
            settings = {k: v for k, v in settings.items() if k in keep} | {"mode": "dynamic"}
        if settings in seen:
            continue
        seen.append(settings)
        out.append((name, settings))
    return out


def choose(candidates: list[Candidate], budget: float) -> tuple[Candidate, str]:
    """The winner and why: among candidates within the budget, those never slower than float at
    any timed batch size first, then the highest geometric-mean speedup; with none within the
    budget, the most accurate."""
    ok = [c for c in candidates if c.within(budget)]
    if not ok:
        scored = [c for c in candidates if c.error is None and c.drop is not None]
        if not scored:
            raise ValueError("no candidate could be built")
        best = min(scored, key=lambda c: (c.drop, -c.mean_speedup()))
        assert best.drop is not None
        return best, (
            f"no candidate is within the {budget * 100:.2f} pt budget; kept the most accurate "
            f"(drop {best.drop * 100:.2f} pt)"
        )
    never = [c for c in ok if c.never_slower()]
    pool = never or ok
    best = max(pool, key=lambda c: (c.mean_speedup(), -(c.drop or 0.0)))
    speeds = ", ".join(f"{v:.2f}x at batch {bs}" for bs, v in best.speedup.items())
    why = (
        f"fastest of the {len(ok)} candidate(s) within the {budget * 100:.2f} pt budget "
        f"({speeds}; geometric mean {best.mean_speedup():.2f}x)"
    )
    if never and len(never) < len(ok):
        why += "; candidates slower than float at some batch size were ranked after"
    elif not never:
        why += "; every candidate within the budget is slower than float at some batch size"
    fixed = next((c for c in candidates if c.name == FIXED_DEFAULT), None)
    if fixed is not None and fixed is not best and fixed.speedup:
        was = ", ".join(f"{v:.2f}x" for v in fixed.speedup.values())
        why += f"; the fixed default ({FIXED_DEFAULT}) was {was}"
    return best, why


def time_candidates(
    float_path: Path,
    candidates: list[Candidate],
    batch_sizes: tuple[int, ...],
    threads: int | None,
    feeds: Feeds,
    cfg: AutoConfig,
    block: int,
    float_ms: dict[str, float],
) -> dict[str, str]:
    """Time every built candidate against the float model at each batch size through the one
    latency path (`bench.measure_latency`: all alternated in blocks in this process); fills their
    latency and speedups, and the float model's median into `float_ms`. Returns the batch sizes
    not timed and why."""
    from modelquant.backends import get_backend
    from modelquant.backends.bench import measure_latency
    from modelquant.recipe import EvaluateConfig

    built = [c for c in candidates if c.error is None and c.path is not None]
    models: dict[str, Path] = {"baseline": float_path}
    models.update((c.name, c.path) for c in built if c.path is not None)
    settings = EvaluateConfig(
        backends=["cpu"],
        batch_sizes=list(batch_sizes),
        threads=threads,
        warmup=cfg.warmup,
        repeats=cfg.repeats,
        block=min(block, cfg.repeats),
    )
    latency = measure_latency(models, get_backend("cpu"), batch_sizes, feeds, settings)
    float_ms.update({bs: s.p50 for bs, s in latency.stats["baseline"].items()})
    for c in built:
        for bs, speed in latency.role_speedups.get(c.name, {}).items():
            c.speedup[bs] = speed.value
            c.speedup_ci95[bs] = speed.ci95
            c.latency_ms[bs] = latency.stats[c.name][bs].p50
    return latency.untimed["baseline"]
