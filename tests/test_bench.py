"""The latency method: block alternation, interval statistics, gating on the lower bound."""

from __future__ import annotations

import itertools
from collections.abc import Callable

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
    # each block: one cold run (after the other model ran), then `block` timed runs
    assert "".join(calls[4:]) == "aaaabbbbaaaabbbb"
    assert len(timed["a"].samples) == len(timed["b"].samples) == 6
    assert len(timed["a"].cold) == len(timed["a"].blocks) == 2


def test_stub_timer_gives_exact_statistics() -> None:
    ticks = itertools.count(step=1_000_000)  # each timer() call 1 ms after the previous
    timed = bench.time_alternating(
        {"a": lambda: None}, warmup=0, repeats=5, block=2, timer=lambda: next(ticks)
    )
    stats = bench.summarize(timed["a"], threads=1)
    assert stats.p50 == stats.mean == 1.0 and stats.ci95 == (1.0, 1.0) and stats.runs == 5
    assert stats.blocks == 3  # 2 + 2 + 1


def test_a_single_block_still_gets_an_interval() -> None:
    durations = iter([5, 1, 2, 3, 4, 5])  # the cold run, then 5 timed runs (ms)
    clock = [0]

    def run() -> None:
        clock[0] += next(durations) * 1_000_000

    timed = bench.time_alternating({"a": run}, warmup=0, repeats=5, block=5, timer=lambda: clock[0])
    stats = bench.summarize(timed["a"], threads=1)
    assert stats.blocks == 1 and stats.p50 == 3.0
    assert stats.ci95[0] < 3.0 < stats.ci95[1]  # not a zero-width interval from one block


class FakeMachine:
    """A clock whose runs take `base[model] x load`; the load changes whenever the machine
    switches model (a neighbour's job starting or stopping on the timescale of a block), and the
    first run after a switch pays `cold` times more (the cache refills)."""

    def __init__(self, base: dict[str, float], sigma: float, cold: float = 1.0) -> None:
        self.base, self.sigma, self.cold = base, sigma, cold
        self.rng = np.random.default_rng(1)
        self.now = 0
        self.last: str | None = None
        self.load = 1.0

    def timer(self) -> int:
        return self.now

    def run(self, model: str) -> Callable[[], None]:
        def fn() -> None:
            factor = 1.0
            if model != self.last:
                self.load = float(np.exp(self.rng.normal(0, self.sigma)))
                self.last = model
                factor = self.cold
            noise = 1 + self.rng.normal(0, 0.01)
            self.now += int(self.base[model] * self.load * factor * noise * 1e6)

        return fn


def _iid_speedup_interval(base: np.ndarray, comp: np.ndarray) -> tuple[float, float]:
    """The old method: every run resampled on its own, the two models independently."""
    rng = np.random.default_rng(0)
    idx_b = rng.integers(0, len(base), size=(2000, len(base)))
    idx_c = rng.integers(0, len(comp), size=(2000, len(comp)))
    ratio = np.median(base[idx_b], axis=1) / np.median(comp[idx_c], axis=1)
    return float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))


def test_block_paired_interval_is_honest_under_correlated_load() -> None:
    """30 simulated measurements whose load drifts block by block: the block-paired 95 %
    interval holds the true ratio (2.0) nearly every time, the old i.i.d. one about half the
    time, because it counts 120 correlated runs as 120 independent ones."""
    covered = iid_covered = 0
    widths, iid_widths = [], []
    for seed in range(30):
        machine = FakeMachine({"baseline": 2.0, "compressed": 1.0}, sigma=0.3)
        machine.rng = np.random.default_rng(seed)
        timed = bench.time_alternating(
            {role: machine.run(role) for role in ("baseline", "compressed")},
            warmup=0,
            repeats=120,
            block=10,
            timer=machine.timer,
        )
        stats, speed = bench.paired(timed, threads=1)
        assert speed is not None
        point, (lo, hi) = speed.value, speed.ci95
        iid_lo, iid_hi = _iid_speedup_interval(
            timed["baseline"].samples, timed["compressed"].samples
        )
        assert lo <= point <= hi
        covered += lo < 2.0 < hi
        iid_covered += iid_lo < 2.0 < iid_hi
        widths.append(hi - lo)
        iid_widths.append(iid_hi - iid_lo)
        if seed == 0:
            assert bench.speedup_interval(timed["baseline"], timed["compressed"]) == (point, lo, hi)
        assert stats["baseline"].ci95[0] <= stats["baseline"].p50 <= stats["baseline"].ci95[1]
    assert covered >= 26, covered
    assert iid_covered <= 22, iid_covered
    assert np.mean(widths) > 2 * np.mean(iid_widths)


def test_first_run_of_each_block_is_reported_cold_and_not_used() -> None:
    machine = FakeMachine({"baseline": 2.0, "compressed": 1.0}, sigma=0.0, cold=10.0)
    timed = bench.time_alternating(
        {role: machine.run(role) for role in ("baseline", "compressed")},
        warmup=1,
        repeats=20,
        block=5,
        timer=machine.timer,
    )
    stats, speed = bench.paired(timed, threads=1)
    assert stats["baseline"].runs == 20 and stats["baseline"].blocks == 4
    assert max(timed["baseline"].samples) < 2.1  # no 20 ms cold run among the used ones
    assert stats["baseline"].cold_p50 is not None and stats["baseline"].cold_p50 > 19
    assert stats["compressed"].p90 < 1.1 and speed is not None and 1.9 < speed.value < 2.1


def test_threads_are_reported_even_when_unset() -> None:
    threads, source = bench.effective_threads(None)
    assert threads == bench.physical_cores() >= 1 and "physical core" in source
    assert bench.effective_threads(3) == (3, "set")


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
