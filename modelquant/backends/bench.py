"""One latency method for all backends: warm-up, runs alternated in blocks, block-bootstrap CIs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant import progress
from modelquant.report.model import LatencyStats, Speedup

if TYPE_CHECKING:
    from modelquant.backends import Backend
    from modelquant.data import Dataset
    from modelquant.recipe import EvaluateConfig

Timer = Callable[[], int]
Feeds = Callable[[Any, int], dict[str, np.ndarray]]
"""(session, batch size) -> the inputs one timed run is fed."""


def feeds_from(data: Dataset) -> Feeds:
    """Feeds of `batch size` samples of `data` (repeated when it has fewer), by input name: what
    every timed or profiled run of a real model is fed."""

    def feeds(session: Any, batch_size: int) -> dict[str, np.ndarray]:
        batch = data.sample_batch(batch_size)
        return {i.name: batch[i.name] for i in session.get_inputs()}

    return feeds


BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Timed:
    """One model's timed runs, in the blocks they ran in (milliseconds).

    `blocks[k]` are the warm runs of its k-th block; `cold[k]` is that block's first run, right
    after the other model ran: it pays for refilling the cache, so it is reported, never used.
    """

    blocks: list[np.ndarray]
    cold: np.ndarray

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0)


def time_alternating(
    runs: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    block: int,
    timer: Timer = time.perf_counter_ns,
    on_block: Callable[[int], None] | None = None,
) -> dict[str, Timed]:
    """Each callable's `repeats` warm runs, timed in alternating blocks of `block` runs.

    Alternating whole blocks (A x block, B x block, ...) rather than run by run keeps each model's
    weights in cache while it is timed: run-by-run alternation of two large models evicts the
    cache and inflated FP32 latency by 60-100 % on this project's reference machine. Each block
    starts with one extra run that is timed apart (`Timed.cold`) and left out of the statistics.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    cold: dict[str, list[float]] = {name: [] for name in runs}
    done = 0
    while done < repeats:
        todo = min(block, repeats - done)
        for name, fn in runs.items():
            start = timer()
            fn()
            cold[name].append((timer() - start) / 1e6)
            times = []
            for _ in range(todo):
                start = timer()
                fn()
                times.append((timer() - start) / 1e6)
            blocks[name].append(np.asarray(times, dtype=np.float64))
            if on_block is not None:  # between blocks, outside every timed run
                on_block(todo)
        done += todo
    return {name: Timed(blocks[name], np.asarray(cold[name], dtype=np.float64)) for name in runs}


def _block_bootstrap_medians(timed: Mapping[str, Timed], seed: int) -> dict[str, np.ndarray]:
    """Bootstrap medians of each model, resampling whole blocks, the same block indices for all.

    Runs within a block share the machine's state (load, frequency, cache), so they are not
    independent draws; and block k of each model ran side by side in time, so they are resampled
    as one tuple. Resampling single runs i.i.d. gives intervals far too narrow under load.
    """
    if min(len(t.blocks) for t in timed.values()) < 2:
        # One block says nothing about the spread between blocks; its runs, resampled one by
        # one, are the only spread there is (too narrow under load: time more blocks).
        timed = {
            name: Timed([t.samples[i : i + 1] for i in range(len(t.samples))], t.cold)
            for name, t in timed.items()
        }
    n_blocks = min(len(t.blocks) for t in timed.values())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_blocks, size=(BOOTSTRAP_RESAMPLES, n_blocks))
    medians = {}
    for name, t in timed.items():
        width = max(len(b) for b in t.blocks[:n_blocks])
        padded = np.full((n_blocks, width), np.nan)
        for k, b in enumerate(t.blocks[:n_blocks]):
            padded[k, : len(b)] = b
        draws = padded[idx].reshape(BOOTSTRAP_RESAMPLES, -1)
        medians[name] = np.nanmedian(draws, axis=1)
    return medians


def _ci(values: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def summarize(
    timed: Timed,
    threads: int | None,
    seed: int = 0,
    *,
    medians: np.ndarray | None = None,
    threads_source: str = "",
) -> LatencyStats:
    """p50, p90, mean of the warm runs, and a 95 % block-bootstrap interval of the median.

    `medians`: bootstrap medians drawn together with another model's (see `paired`); default
    draws this model's blocks alone.
    """
    samples = timed.samples
    if medians is None:
        medians = _block_bootstrap_medians({"m": timed}, seed)["m"]
    return LatencyStats(
        p50=float(np.median(samples)),
        p90=float(np.percentile(samples, 90)),
        mean=float(np.mean(samples)),
        runs=len(samples),
        ci95=_ci(medians),
        threads=threads,
        threads_source=threads_source,
        blocks=len(timed.blocks),
        cold_p50=float(np.median(timed.cold)) if len(timed.cold) else None,
    )


def paired(
    timed: Mapping[str, Timed],
    threads: int | None,
    seed: int = 0,
    threads_source: str = "",
) -> tuple[dict[str, LatencyStats], Speedup | None]:
    """Each model's statistics and, for "baseline" and "compressed", the speedup's interval.

    One block bootstrap over the (baseline block, compressed block) tuples gives both medians'
    intervals and the ratio's: the ratio of two medians drawn from the same blocks.
    """
    stats, speeds = paired_all(timed, threads, seed, threads_source)
    return stats, speeds.get("compressed")


def paired_all(
    timed: Mapping[str, Timed],
    threads: int | None,
    seed: int = 0,
    threads_source: str = "",
) -> tuple[dict[str, LatencyStats], dict[str, Speedup]]:
    """`paired` for any number of models: each one's statistics and, for every role besides
    "baseline", its speedup over the baseline, all from one block bootstrap."""
    medians = _block_bootstrap_medians(timed, seed)
    stats = {
        name: summarize(t, threads, medians=medians[name], threads_source=threads_source)
        for name, t in timed.items()
    }
    if "baseline" not in timed:
        return stats, {}
    speeds = {
        role: Speedup(
            value=stats["baseline"].p50 / stats[role].p50,
            ci95=_ci(medians["baseline"] / medians[role]),
        )
        for role in timed
        if role != "baseline"
    }
    return stats, speeds


def speedup_interval(
    baseline: Timed, compressed: Timed, seed: int = 0
) -> tuple[float, float, float]:
    """(median ratio baseline/compressed, 95 % block-bootstrap low, high)."""
    _, speed = paired({"baseline": baseline, "compressed": compressed}, None, seed)
    assert speed is not None
    return speed.value, speed.ci95[0], speed.ci95[1]


def physical_cores() -> int:
    """Physical cores this process may run on: what onnxruntime sizes its intra-op pool to by
    default (it counts cores, not hyper-threads). Falls back to the logical CPU count."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return len(allowed) or 1
    for entry in text.split("\n\n"):
        pairs = (line.partition(":") for line in entry.splitlines())
        fields = {k.strip(): v.strip() for k, _, v in pairs}
        if "processor" not in fields or int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return len(cores) or len(allowed) or 1


def effective_threads(threads: int | None) -> tuple[int, str]:
    """(intra-op threads a session runs with, where that number comes from).

    onnxruntime's SessionOptions read 0 when unset (its own choice), even after the session
    opened, so the count is computed the way onnxruntime picks it: one per physical core.
    """
    if threads is not None:
        return threads, "set"
    return physical_cores(), "onnxruntime default: one per physical core (computed, not read)"


def fixed_batch(session: Any) -> int | None:
    """The batch size a session's first input is fixed to, or None when the batch is free."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


@dataclass
class Opened:
    """A session and the batch size it must be fed (None: any)."""

    session: Any
    batch: int | None


def open_session(backend: Backend, path: Path, threads: int | None, batch: int) -> Opened:
    """Open `path` on `backend`; static-shape backends get a free batch dimension set to `batch`."""
    static = backend.static_shapes
    session = backend.session(path, threads, batch_size=batch if static else None)
    fixed = fixed_batch(session)
    return Opened(session, fixed if fixed is not None else (batch if static else None))


def _run(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


@dataclass
class Latency:
    """What `measure_latency` measured on one backend.

    `stats[role][batch]`: latency of each model timed at that batch size; `speedups[batch]`:
    baseline over compressed where both ran; `untimed[role][batch]`: why a batch size was not
    timed for that model.
    """

    stats: dict[str, dict[str, LatencyStats]] = field(default_factory=dict)
    speedups: dict[str, Speedup] = field(default_factory=dict)
    role_speedups: dict[str, dict[str, Speedup]] = field(default_factory=dict)
    """`role_speedups[role][batch]`: every model's speedup over "baseline" (`speedups` is the
    "compressed" one's)."""
    untimed: dict[str, dict[str, str]] = field(default_factory=dict)


def measure_latency(
    models: Mapping[str, Path],
    backend: Backend,
    batch_sizes: Sequence[int],
    feeds: Feeds,
    cfg: EvaluateConfig,
    *,
    timer: Timer | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Latency:
    """Latency of each model (role -> file) per batch size, alternated in blocks in one process.

    The one timing path of `compress`, `evaluate` and `benchmark`. Roles "baseline" and
    "compressed" also get the speedup of the second over the first. When several models are
    given and one cannot run a batch size (a fixed batch), none is timed there: one model alone
    gives no comparison, and on an emulator it would cost minutes.

    Each batch size is a `progress` task (its start line, `timing cpu batch 32 (baseline,
    compressed)`, is the progress line); `log` is kept for callers and no longer used.
    """
    threads, source = effective_threads(cfg.threads)
    result = Latency(stats={role: {} for role in models}, untimed={role: {} for role in models})
    emulated = backend.emulated
    repeats = min(cfg.repeats, cfg.npu.repeats) if emulated else cfg.repeats
    warmup = min(cfg.warmup, 2) if emulated else cfg.warmup
    for bs in batch_sizes:
        runs: dict[str, Callable[[], object]] = {}
        for role, path in models.items():
            opened = open_session(backend, path, cfg.threads, bs)
            if opened.batch is not None and opened.batch != bs:
                result.untimed[role][str(bs)] = (
                    f"not timed: {path.name} is fixed to batch {opened.batch}"
                )
                continue
            runs[role] = _run(opened.session, feeds(opened.session, bs))
        if len(runs) < len(models):
            for role in runs:
                result.untimed[role][str(bs)] = (
                    "not timed: the other model cannot run this batch size here"
                )
            continue
        with progress.task(  # the progress line ("timing cpu batch 32 (baseline, compressed)")
            f"timing {backend.name} batch {bs} ({', '.join(runs)})",
            total=repeats * len(runs),
            unit="runs",
        ) as bar:
            timed = time_alternating(
                runs,
                warmup=warmup,
                repeats=repeats,
                block=min(cfg.block, repeats),
                on_block=bar.advance,
                **({"timer": timer} if timer else {}),
            )
        stats, speeds = paired_all(timed, threads, threads_source=source)
        for role, s in stats.items():
            result.stats[role][str(bs)] = s
        for role, speed in speeds.items():
            result.role_speedups.setdefault(role, {})[str(bs)] = speed
        if "compressed" in speeds:
            result.speedups[str(bs)] = speeds["compressed"]
    return result
