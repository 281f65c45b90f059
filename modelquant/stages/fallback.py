"""Accuracy-aware fallback: the quantize stage's rounds that return the most sensitive layers to
higher precision until the task metric on the validation data is within the recipe's budget.

The schedule escalates and grows at once, so a solution that exists is reached in few rounds:
round 1 gives the worst layer 16-bit activations (w8a16); every later round moves the layers the
previous round held at w8a16 to float and gives the next group, twice as large, w8a16:

    round 1: L1 -> w8a16
    round 2: L1 -> fp32, L2 -> w8a16
    round 3: L1, L2 -> fp32, L3, L4 -> w8a16
    round 4: L1..L4 -> fp32, L5..L8 -> w8a16

Where 16-bit activations do not exist (dynamic int8, or a scheme without activation types) each
round moves twice as many layers straight to float (1, 2, 4, 8, ...).

A round within budget that holds layers at w8a16 is followed (rounds left) by one more without
them: 16-bit Q/DQ runs as simulated float on CPUs, so a layer there without need costs latency.
Of the rounds within budget, the one with the fewest layers moved is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FallbackMode = Literal["auto", "fp32", "off"]


class FallbackConfig(BaseModel):
    """The budget and how layers are returned to higher precision to meet it."""

    model_config = ConfigDict(extra="forbid")

    accuracy_budget: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Largest task-metric drop allowed on data.validation (a fraction: 0.005 is "
        "half a point); unset: no fallback rounds.",
    )
    fallback: FallbackMode = Field(
        "auto",
        description="auto: the worst layers get 16-bit activations first, then float; fp32: "
        "straight to float; off: measure the drop and report it, change nothing.",
    )
    max_rounds: int = Field(
        4, ge=1, le=12, description="Fallback rounds at most (each one quantizes and scores)."
    )

    @field_validator("fallback", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` (or `no`) as false.
        return "off" if value is False else value


def schedule(
    ranked: list[str], rounds: int, mode: FallbackMode, w8a16: bool
) -> list[dict[str, str]]:
    """Node -> precision ('w8a16' or 'fp32') per round, for layers ranked worst first; a round
    that would change nothing (every layer already in float) ends the schedule."""
    if mode == "off" or not ranked:
        return []
    plans: list[dict[str, str]] = []
    for r in range(1, rounds + 1):
        if mode == "auto" and w8a16:
            to_float = ranked[: 2 ** (r - 2)] if r > 1 else []
            to_w8a16 = ranked[len(to_float) : 2 ** (r - 1)]
        else:
            to_float = ranked[: 2 ** (r - 1)]
            to_w8a16 = []
        plan = dict.fromkeys(to_float, "fp32") | dict.fromkeys(to_w8a16, "w8a16")
        if plans and plan == plans[-1]:
            break
        plans.append(plan)
    return plans


def trimmed(moved: dict[str, str]) -> dict[str, str] | None:
    """A round within budget that gave layers 16-bit activations, without them (they go back to
    int8): 16-bit Q/DQ runs as simulated float on CPUs, so a layer kept at w8a16 without need
    costs latency. None when there is nothing to trim."""
    kept = {n: p for n, p in moved.items() if p != "w8a16"}
    return kept if kept and kept != moved else None


@dataclass
class Round:
    """One quantization of the map and its score."""

    index: int
    moved: dict[str, str]
    metric: float
    drop: float
    size_bytes: int
    path: Path

    def summary(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "moved": dict(self.moved),
            "metric": self.metric,
            "drop": self.drop,
            "size_bytes": self.size_bytes,
        }


@dataclass
class Outcome:
    """The rounds taken and the one kept."""

    budget: float
    float_metric: float
    rounds: list[Round] = field(default_factory=list)
    missed_because: str = "out of rounds"
    """Said when the budget is missed: out of rounds, fallback off, nothing left to move."""

    @property
    def best(self) -> Round:
        """Within budget: the round that met it with the fewest layers moved (the smaller model
        on a tie); else the round with the smallest drop (the smaller model on a tie)."""
        met = [r for r in self.rounds if self.within(r)]
        if met:
            return min(met, key=lambda r: (len(r.moved), r.size_bytes))
        return min(self.rounds, key=lambda r: (r.drop, r.size_bytes))

    def within(self, r: Round) -> bool:
        return r.drop <= self.budget + 1e-9

    def gate(self, metric: str) -> dict[str, Any]:
        """The verdict as a report gate (a Gate's fields): the kept round's drop on the
        validation data against the budget."""
        best = self.best
        met = self.within(best)
        return {
            "name": "quantize.accuracy_budget",
            "threshold": self.budget,
            "value": best.drop,
            "passed": met,
            "detail": (
                f"{metric} on validation: float {self.float_metric:.2%} -> {best.metric:.2%} "
                f"after {len(self.rounds) - 1} fallback round(s)"
                + ("" if met else f"; {self.missed_because}, the best model is published")
            ),
            "unit": "fraction",
        }

    def details(self, ranking: list[dict[str, Any]], metric: str) -> dict[str, Any]:
        best = self.best
        met = self.within(best)
        rounds_taken = len(self.rounds) - 1
        return {
            "accuracy_budget": self.budget,
            "metric": metric,
            "float_metric": self.float_metric,
            "met": met,
            "rounds": [r.summary() for r in self.rounds],
            "rounds_taken": rounds_taken,
            "first_met_round": next((r.index for r in self.rounds if self.within(r)), None),
            "kept_round": best.index,
            "kept_higher": dict(best.moved),
            "ranking": ranking,
        }
