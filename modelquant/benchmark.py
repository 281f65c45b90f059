"""Ad-hoc latency of one or two ONNX models on random inputs (`modelquant benchmark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelquant.backends import BACKEND_NAMES, bench, get_backend
from modelquant.errors import UserError
from modelquant.report.model import LatencyStats, Speedup

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def random_feed(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every graph input: the batch axis set to `batch`, values drawn from a seed."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            else:
                raise UserError(
                    f"input '{spec.name}' has a free dimension '{dim}' at axis {axis}; "
                    "benchmark fixes only the batch axis (export with a fixed shape)"
                )
        dtype = _DTYPES.get(spec.type)
        if dtype is None:
            raise UserError(
                f"input '{spec.name}' has type {spec.type}, which benchmark cannot fill"
            )
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=dtype)
    return feed


class BenchmarkBackend(BaseModel):
    """One backend's latencies: the shapes `compress` and `evaluate` report (LatencyStats,
    Speedup), keyed by role ("model" alone, or "baseline" and "compressed")."""

    model_config = ConfigDict(extra="forbid")
    skipped: str | None = None
    emulated: bool = False
    execution_provider: str | None = None
    latency_ms: dict[str, dict[str, LatencyStats]] = Field(default_factory=dict)
    """Role -> batch size (as a string) -> latency."""
    speedup: dict[str, Speedup] = Field(default_factory=dict)
    """Batch size -> baseline p50 / compressed p50 (with interval)."""
    untimed: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Role -> batch size -> why it was not timed."""


class BenchmarkResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, str] = Field(description="Role -> ONNX file.")
    cpu: str
    cpu_flags: list[str]
    threads: int = Field(description="Intra-op threads the sessions ran with.")
    threads_source: str
    backends: dict[str, BenchmarkBackend]


def roles_of(models: list[Path]) -> dict[str, Path]:
    """One model is "model"; two are "baseline" then "compressed" (speedup = first / second)."""
    if len(models) == 1:
        return {"model": models[0]}
    return {"baseline": models[0], "compressed": models[1]}


def run_benchmark(
    models: list[Path],
    backends: list[str],
    batch_sizes: list[int],
    *,
    threads: int | None,
    warmup: int,
    repeats: int,
    block: int,
    timer: bench.Timer | None = None,
) -> BenchmarkResult:
    """Per backend and batch size: each model's latency statistics, and the speedup of the
    second model over the first when two are given (through `bench.measure_latency`)."""
    from pydantic import ValidationError

    from modelquant.environment import environment
    from modelquant.models import onnx_file
    from modelquant.recipe import EvaluateConfig, NpuEvaluateConfig

    for path in models:
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        onnx_file.check(path)
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown or not backends:
        raise UserError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}")
    try:
        cfg = EvaluateConfig(
            backends=backends,
            batch_sizes=batch_sizes,
            warmup=warmup,
            repeats=repeats,
            block=block,
            threads=threads,
            npu=NpuEvaluateConfig(repeats=repeats),  # the user's count, also on the emulator
        )
    except ValidationError as exc:
        raise UserError(f"benchmark settings: {exc.errors()[0]['msg']}") from None
    env = environment()
    effective, source = bench.effective_threads(threads)
    roles = roles_of(models)
    result = BenchmarkResult(
        models={role: str(p) for role, p in roles.items()},
        cpu=env.cpu,
        cpu_flags=env.cpu_flags,
        threads=effective,
        threads_source=source,
        backends={},
    )
    for name in backends:
        backend = get_backend(name)
        ok, reason = backend.available()
        if not ok:
            result.backends[name] = BenchmarkBackend(skipped=reason)
            continue
        latency = bench.measure_latency(
            roles,
            backend,
            batch_sizes,
            lambda session, bs: random_feed(session, bs),
            cfg,
            timer=timer,
        )
        result.backends[name] = BenchmarkBackend(
            emulated=backend.emulated,
            execution_provider=backend.execution_provider,
            latency_ms=latency.stats,
            speedup=latency.speedups,
            untimed={role: u for role, u in latency.untimed.items() if u},
        )
    return result


def render(result: BenchmarkResult, console: Console) -> None:
    from modelquant.report.rows import fmt_ms, fmt_speedup

    table = Table(
        title=f"latency · {result.cpu} · flags {' '.join(result.cpu_flags)} · "
        f"{result.threads} thread(s) ({result.threads_source})",
        title_justify="left",
    )
    for col in ("backend", "batch", "model", "p50 ms", "p90 ms", "95% CI of p50", "speedup"):
        table.add_column(col)
    for name, entry in result.backends.items():
        if entry.skipped:
            table.add_row(name, "", "", "", "", "", escape(f"skipped: {entry.skipped}"))
            continue
        label = f"{name} (emulated)" if entry.emulated else name
        sizes: set[str] = set()
        for per_role in entry.latency_ms.values():
            sizes.update(per_role)
        for untimed in entry.untimed.values():
            sizes.update(untimed)
        for bs in sorted(sizes, key=int):
            speed = entry.speedup.get(bs)
            for role, path in result.models.items():
                stats = entry.latency_ms.get(role, {}).get(bs)
                model = escape(Path(path).name)
                if stats is None:
                    why = entry.untimed.get(role, {}).get(bs, "not timed")
                    table.add_row(label, bs, model, escape(why), "", "", "")
                    continue
                sp = "reference" if role == "baseline" else ""
                if role == "compressed":
                    sp = fmt_speedup(speed) if speed else "no speedup: the baseline was not timed"
                table.add_row(
                    label,
                    bs,
                    model,
                    fmt_ms(stats.p50),
                    fmt_ms(stats.p90),
                    f"[{fmt_ms(stats.ci95[0])}, {fmt_ms(stats.ci95[1])}]",
                    escape(sp),
                )
    console.print(table)
    if any(e.emulated for e in result.backends.values()):
        console.print("emulated: latency of a simulator on this CPU, not of the device")
