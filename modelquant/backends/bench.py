"""One latency method for all backends: warm-up, block-alternated timed runs, bootstrap CIs."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from modelquant.report.model import LatencyStats

Timer = Callable[[], int]
BOOTSTRAP_RESAMPLES = 2000


def time_alternating(
    runs: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    block: int,
    timer: Timer = time.perf_counter_ns,
) -> dict[str, np.ndarray]:
    """Milliseconds per run for each callable, timed in alternating blocks of `block` runs.

    Alternating whole blocks (A x block, B x block, ...) rather than run by run keeps each model's
    weights in cache while it is timed: run-by-run alternation of two large models evicts the
    cache and inflated FP32 latency by 60-100 % on this project's reference machine.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in runs.items():
            todo = min(block, repeats - len(times[name]))
            for _ in range(todo):
                start = timer()
                fn()
                times[name].append((timer() - start) / 1e6)
    return {name: np.asarray(t, dtype=np.float64) for name, t in times.items()}


def _bootstrap_medians(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(samples), size=(BOOTSTRAP_RESAMPLES, len(samples)))
    return np.median(samples[idx], axis=1)


def summarize(samples: np.ndarray, threads: int | None, seed: int = 0) -> LatencyStats:
    """p50, p90, mean and a 95 % bootstrap interval of the median."""
    medians = _bootstrap_medians(samples, np.random.default_rng(seed))
    return LatencyStats(
        p50=float(np.median(samples)),
        p90=float(np.percentile(samples, 90)),
        mean=float(np.mean(samples)),
        runs=len(samples),
        ci95=(float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))),
        threads=threads,
    )


def speedup_interval(
    baseline: np.ndarray, compressed: np.ndarray, seed: int = 0
) -> tuple[float, float, float]:
    """(median ratio baseline/compressed, 95 % bootstrap low, high)."""
    rng = np.random.default_rng(seed)
    ratio = _bootstrap_medians(baseline, rng) / _bootstrap_medians(compressed, rng)
    point = float(np.median(baseline) / np.median(compressed))
    return point, float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))
