"""The latency method: block alternation, interval statistics, gating on the lower bound."""

from __future__ import annotations

import itertools

import numpy as np

from modelquant.backends import bench
from modelquant.gates import judge
from modelquant.recipe import Recipe
from modelquant.report.model import Deltas, ModelResult, Speedup


def test_runs_alternate_in_blocks_after_warmup() -> None:
    calls: list[str] = []
    timed = bench.time_alternating(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        warmup=2,
        repeats=6,
        block=3,
    )
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up of each
    assert "".join(calls[4:]) == "aaabbbaaabbb"
    assert len(timed["a"]) == len(timed["b"]) == 6


def test_stub_timer_gives_exact_statistics() -> None:
    ticks = itertools.count(step=1_000_000)  # each timer() call 1 ms after the previous
    timed = bench.time_alternating(
        {"a": lambda: None}, warmup=0, repeats=5, block=2, timer=lambda: next(ticks)
    )
    stats = bench.summarize(timed["a"], threads=1)
    assert stats.p50 == stats.mean == 1.0 and stats.ci95 == (1.0, 1.0) and stats.runs == 5


def test_speedup_interval_brackets_the_point() -> None:
    rng = np.random.default_rng(0)
    base = 2.0 + rng.normal(0, 0.05, 200)
    comp = 1.0 + rng.normal(0, 0.05, 200)
    point, lo, hi = bench.speedup_interval(base, comp)
    assert lo < point < hi and 1.9 < point < 2.1


def _result(acc: float, size: int) -> ModelResult:
    return ModelResult(
        path="m.onnx",
        metric="top1",
        accuracy=acc,
        size_bytes=size,
        gzip_bytes=size,
        params=10,
        nonzero_params=10,
    )


def test_speedup_gate_is_decided_on_the_interval_lower_bound() -> None:
    recipe = Recipe.model_validate(
        {
            "name": "g",
            "model": {"onnx": "m.onnx"},
            "data": {"evaluation": {"source": "digits", "split": "test"}},
            "evaluate": {"batch_sizes": [1, 32]},
            "gates": {
                "min_speedup": {"cpu": 1.5},
                "max_accuracy_drop": 0.01,
                "max_size_ratio": 0.3,
            },
        }
    )
    # median speedup 1.6 passes a point test, but the interval reaches down to 1.4: fail.
    deltas = Deltas(
        accuracy_pt=-0.5,
        size_ratio=0.25,
        gzip_ratio=0.25,
        params_ratio=1.0,
        speedup={
            "cpu": {
                "32": Speedup(value=1.6, ci95=(1.4, 1.8)),
                "1": Speedup(value=0.5, ci95=(0.4, 0.6)),
            }
        },
    )
    gates = {g.name: g for g in judge(recipe, _result(0.98, 100), _result(0.975, 25), deltas)}
    assert not gates["min_speedup.cpu"].passed and gates["min_speedup.cpu"].value == 1.4
    assert gates["max_accuracy_drop"].passed and gates["max_size_ratio"].passed
    deltas.speedup["cpu"]["32"] = Speedup(value=1.7, ci95=(1.55, 1.8))
    deltas.size_ratio = 0.4
    gates = {g.name: g for g in judge(recipe, _result(0.98, 100), _result(0.965, 40), deltas)}
    assert gates["min_speedup.cpu"].passed
    assert not gates["max_accuracy_drop"].passed and not gates["max_size_ratio"].passed
