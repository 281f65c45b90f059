"""Measure baseline and compressed ONNX side by side: accuracy, size and latency per backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelquant import metrics
from modelquant.backends import bench, get_backend
from modelquant.data import Dataset
from modelquant.models import onnx_file
from modelquant.recipe import EvaluateConfig
from modelquant.report.model import (
    BackendResult,
    BackendStatus,
    Deltas,
    ModelResult,
    Speedup,
)


def fixed_batch(session: Any) -> int | None:
    """The batch size a session's first input is fixed to, or None when the batch is free."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def predict(session: Any, data: Dataset, batch_size: int) -> np.ndarray:
    """First output over the whole data set; a fixed-batch model gets its last batch padded."""
    names = [i.name for i in session.get_inputs()]
    fixed = fixed_batch(session)
    step = fixed or batch_size
    outputs = []
    for batch, _ in data.batches(step):
        n = len(next(iter(batch.values())))
        feed = {name: batch[name] for name in names}
        if fixed and n < fixed:
            feed = {
                k: np.concatenate([v, np.repeat(v[-1:], fixed - n, axis=0)])
                for k, v in feed.items()
            }
        outputs.append(session.run(None, feed)[0][:n])
    return np.concatenate(outputs)


def describe_model(path: Path, accuracy: float, metric: str) -> ModelResult:
    params, nonzero = onnx_file.param_counts(path)
    return ModelResult(
        path=str(path),
        metric=metric,
        accuracy=accuracy,
        size_bytes=onnx_file.size_bytes(path),
        gzip_bytes=onnx_file.gzip_bytes(path),
        params=params,
        nonzero_params=nonzero,
    )


def evaluate_pair(
    baseline_path: Path,
    compressed_path: Path,
    data: Dataset,
    cfg: EvaluateConfig,
    statuses: dict[str, BackendStatus],
    log: Callable[[str], None] = lambda _: None,
    timer: bench.Timer | None = None,
) -> tuple[ModelResult, ModelResult, Deltas]:
    """Accuracy on every available backend (cpu is the reference), latency alternated in blocks."""
    if data.labels is None:
        from modelquant.errors import UserError

        raise UserError("evaluation data has no labels; classification accuracy needs them")
    models = {"baseline": baseline_path, "compressed": compressed_path}
    results: dict[str, dict[str, BackendResult]] = {"baseline": {}, "compressed": {}}
    reference: dict[str, float] = {}
    agreement: float | None = None
    speedups: dict[str, dict[str, Speedup]] = {}
    eval_batch = 32
    backends = list(dict.fromkeys(["cpu", *cfg.backends]))  # cpu always: the reference accuracy
    for name in backends:
        backend = get_backend(name)
        ok, reason = backend.available()
        statuses[name] = BackendStatus(
            available=ok,
            reason=reason,
            execution_provider=backend.execution_provider,
            versions=backend.versions() if ok else {},
        )
        if not ok:
            for role in models:
                results[role][name] = BackendResult(skipped=reason)
            continue
        sessions = {role: backend.session(path, cfg.threads) for role, path in models.items()}
        outputs = {role: predict(s, data, eval_batch) for role, s in sessions.items()}
        for role, out in outputs.items():
            acc = metrics.top1(out, data.labels)
            results[role][name] = BackendResult(
                accuracy=acc,
                emulated=backend.emulated,
                execution_provider=backend.execution_provider,
            )
            if name == "cpu":
                reference[role] = acc
        if name == "cpu":
            agreement = metrics.agreement(outputs["compressed"], outputs["baseline"])
        if name not in cfg.backends:
            continue
        speedups[name] = {}
        for bs in cfg.batch_sizes:
            runnable = {}
            for role, session in sessions.items():
                fixed = fixed_batch(session)
                if fixed is not None and fixed != bs:
                    results[role][name].notes.append(
                        f"batch {bs} not timed: model fixed to {fixed}"
                    )
                    continue
                feed = {i.name: data.sample_batch(bs)[i.name] for i in session.get_inputs()}
                runnable[role] = (session, feed)
            log(f"timing {name} batch {bs}: {', '.join(runnable)}")
            runs = {role: (lambda s=s, f=f: s.run(None, f)) for role, (s, f) in runnable.items()}
            timed = bench.time_alternating(
                runs,
                warmup=cfg.warmup,
                repeats=cfg.repeats,
                block=cfg.block,
                **({"timer": timer} if timer else {}),
            )
            for role, samples in timed.items():
                results[role][name].latency_ms[str(bs)] = bench.summarize(samples, cfg.threads)
            if len(timed) == 2:
                point, lo, hi = bench.speedup_interval(timed["baseline"], timed["compressed"])
                speedups[name][str(bs)] = Speedup(value=point, ci95=(lo, hi))
        if not speedups[name]:
            del speedups[name]
    base = describe_model(baseline_path, reference["baseline"], metrics.TOP1.name)
    comp = describe_model(compressed_path, reference["compressed"], metrics.TOP1.name)
    base.backends = {k: v for k, v in results["baseline"].items() if k in cfg.backends}
    comp.backends = {k: v for k, v in results["compressed"].items() if k in cfg.backends}
    comp.agreement = agreement
    deltas = Deltas(
        accuracy_pt=(comp.accuracy - base.accuracy) * 100,
        size_ratio=comp.size_bytes / base.size_bytes,
        gzip_ratio=comp.gzip_bytes / base.gzip_bytes,
        params_ratio=comp.params / base.params if base.params else 1.0,
        speedup=speedups,
    )
    return base, comp, deltas
