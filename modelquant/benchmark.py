"""Ad-hoc latency of one or two ONNX models on random inputs (`modelquant benchmark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from modelquant.backends import BACKEND_NAMES, bench, get_backend
from modelquant.errors import UserError

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


def run_benchmark(
    models: list[Path],
    backends: list[str],
    batch_sizes: list[int],
    *,
    threads: int | None,
    warmup: int,
    repeats: int,
    block: int,
) -> dict[str, Any]:
    """Per backend and batch size: each model's latency statistics, and the speedup of the
    second model over the first when two are given."""
    from modelquant.environment import environment
    from modelquant.evaluator import open_session
    from modelquant.models import onnx_file

    for path in models:
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        onnx_file.check(path)
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown or not backends:
        raise UserError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}")
    env = environment()
    result: dict[str, Any] = {
        "models": [str(p) for p in models],
        "cpu": env.cpu,
        "cpu_flags": env.cpu_flags,
        "threads": threads,
        "backends": {},
    }
    for name in backends:
        backend = get_backend(name)
        ok, reason = backend.available()
        if not ok:
            result["backends"][name] = {"skipped": reason}
            continue
        entry: dict[str, Any] = {"emulated": backend.emulated, "batch": {}}
        for bs in batch_sizes:
            runs = {}
            notes = []
            for path in models:
                opened = open_session(backend, path, threads, bs)
                if opened.batch is not None and opened.batch != bs:
                    notes.append(f"{path.name} is fixed to batch {opened.batch}")
                    continue
                feed = random_feed(opened.session, bs)
                runs[str(path)] = lambda s=opened.session, f=feed: s.run(None, f)
            if not runs:
                entry["batch"][str(bs)] = {"notes": notes}
                continue
            timed = bench.time_alternating(runs, warmup=warmup, repeats=repeats, block=block)
            row: dict[str, Any] = {
                model: bench.summarize(samples, threads).model_dump()
                for model, samples in timed.items()
            }
            if len(timed) == 2:
                first, second = timed.values()
                point, lo, hi = bench.speedup_interval(first, second)
                row["speedup"] = {"value": point, "ci95": [lo, hi]}
            if notes:
                row["notes"] = notes
            entry["batch"][str(bs)] = row
        result["backends"][name] = entry
    return result


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"latency · {result['cpu']} · flags {' '.join(result['cpu_flags'])}",
        title_justify="left",
    )
    for col in ("backend", "batch", "model", "p50 ms", "p90 ms", "95% CI of p50", "speedup"):
        table.add_column(col)
    for name, entry in result["backends"].items():
        if "skipped" in entry:
            table.add_row(name, "", "", "", "", "", f"skipped: {entry['skipped']}")
            continue
        label = f"{name} (emulated)" if entry["emulated"] else name
        for bs, row in entry["batch"].items():
            speed = row.get("speedup")
            for model in result["models"]:
                stats = row.get(model)
                if stats is None:
                    continue
                sp = ""
                if speed and model == result["models"][-1]:
                    sp = f"{speed['value']:.2f}x [{speed['ci95'][0]:.2f}, {speed['ci95'][1]:.2f}]"
                table.add_row(
                    label,
                    bs,
                    Path(model).name,
                    f"{stats['p50']:.3f}",
                    f"{stats['p90']:.3f}",
                    f"[{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}]",
                    sp,
                )
            for note in row.get("notes", []):
                table.add_row(label, bs, "", "", "", "", note)
    console.print(table)
    if any(e.get("emulated") for e in result["backends"].values()):
        console.print("emulated: latency of a simulator on this CPU, not of the device")
