"""Measure baseline and compressed ONNX side by side: accuracy, size and latency per backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelquant import metrics
from modelquant.backends import Backend, bench, get_backend
from modelquant.data import Dataset
from modelquant.errors import StageError, UserError
from modelquant.models import onnx_file
from modelquant.recipe import EvaluateConfig
from modelquant.report.model import BackendResult, BackendStatus, Deltas, ModelResult, Speedup

EVAL_BATCH = 32
ROLES = ("baseline", "compressed")


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


def predict(opened: Opened, data: Dataset, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """First output over the whole data set; a fixed-batch model gets its last batch padded."""
    names = [i.name for i in opened.session.get_inputs()]
    step = opened.batch or batch_size
    outputs = []
    for batch, _ in data.batches(step):
        n = len(next(iter(batch.values())))
        feed = {name: batch[name] for name in names}
        if opened.batch and n < opened.batch:
            pad = opened.batch - n
            feed = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feed.items()}
        outputs.append(opened.session.run(None, feed)[0][:n])
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


@dataclass
class Evaluation:
    """What `evaluate_models` measured."""

    baseline: ModelResult
    compressed: ModelResult
    deltas: Deltas
    variants: dict[str, ModelResult] = field(default_factory=dict)


def _npu_refusal(path: Path, batch: int) -> str | None:
    """Why the HTP would not run `path` (the refused nodes by name and op type), or None."""
    from modelquant.backends import npu

    try:
        refused = npu.unsupported_nodes(path, batch)
    except npu.NpuError as exc:
        return f"{path.name}: {exc}"
    if not refused:
        return None
    listed = ", ".join(f"{n.name} ({n.op_type})" for n in refused[:20])
    more = f" and {len(refused) - 20} more" if len(refused) > 20 else ""
    return f"the HTP refuses {len(refused)} node(s) of {path.name}: {listed}{more}"


def evaluate_models(
    baseline_path: Path,
    compressed_path: Path,
    data: Dataset,
    cfg: EvaluateConfig,
    statuses: dict[str, BackendStatus],
    variants: dict[str, Path] | None = None,
    log: Callable[[str], None] = lambda _: None,
    timer: bench.Timer | None = None,
) -> Evaluation:
    """Accuracy on every available backend (cpu is the reference), latency alternated in blocks.

    A backend with a variant in `variants` (e.g. the static-shape NPU flavour) runs that file as
    the compressed model; the variant is also scored on the CPU and compared with it (parity).
    """
    if data.labels is None:
        raise UserError("evaluation data has no labels; classification accuracy needs them")
    labels = data.labels
    variants = variants or {}
    results: dict[str, dict[str, BackendResult]] = {role: {} for role in ROLES}
    variant_results: dict[str, dict[str, BackendResult]] = {b: {} for b in variants}
    variant_accuracy: dict[str, float] = {}
    reference: dict[str, float] = {}
    agreement: float | None = None
    speedups: dict[str, dict[str, Speedup]] = {}
    cpu = get_backend("cpu")
    cpu_outputs: dict[Path, np.ndarray] = {}  # every file's CPU outputs on all of `data`, once

    def on_cpu(path: Path) -> np.ndarray:
        if path not in cpu_outputs:
            cpu_outputs[path] = predict(open_session(cpu, path, cfg.threads, EVAL_BATCH), data)
        return cpu_outputs[path]

    for backend_name in dict.fromkeys(["cpu", *cfg.backends]):  # cpu always: the reference
        backend = get_backend(backend_name)
        ok, reason = backend.available()
        statuses[backend_name] = BackendStatus(
            available=ok,
            reason=reason,
            execution_provider=backend.execution_provider,
            versions=backend.versions() if ok else {},
        )
        if not ok:
            for role in ROLES:
                results[role][backend_name] = BackendResult(skipped=reason)
            continue
        paths = {
            "baseline": baseline_path,
            "compressed": variants.get(backend_name, compressed_path),
        }
        samples = data.take(cfg.npu.samples) if backend_name == "npu" else data
        if backend_name == "npu":
            refusals = [r for p in dict.fromkeys(paths.values()) if (r := _npu_refusal(p, 1))]
            if refusals:
                if cfg.npu.on_unsupported == "fail":
                    raise StageError("evaluate", "npu: " + "; ".join(refusals))
                log(f"npu skipped: {'; '.join(refusals)}")
                for role in ROLES:
                    results[role][backend_name] = BackendResult(skipped="; ".join(refusals))
                continue
        opened = {
            role: open_session(backend, p, cfg.threads, EVAL_BATCH) for role, p in paths.items()
        }
        outputs = {role: predict(o, samples) for role, o in opened.items()}
        if backend_name == "cpu":
            cpu_outputs.update({paths[role]: out for role, out in outputs.items()})
        for role, out in outputs.items():
            res = BackendResult(
                accuracy=metrics.top1(out, labels[: len(out)]),
                emulated=backend.emulated,
                execution_provider=backend.execution_provider,
                samples=len(out),
            )
            if paths[role] != (baseline_path if role == "baseline" else compressed_path):
                res.model = paths[role].name
            if backend_name != "cpu":
                # Same file, same samples, on the reference CPU EP: where the numerics part.
                from modelquant.backends.parity import output_scale, parity

                cpu_ref = on_cpu(paths[role])[: len(out)]
                res.parity = parity(cpu_ref, out, output_scale(paths[role]))
            results[role][backend_name] = res
        if backend_name == "cpu":
            reference = {role: results[role]["cpu"].accuracy or 0.0 for role in ROLES}
            agreement = metrics.agreement(outputs["compressed"], outputs["baseline"])
        if backend_name in variants:
            variant_accuracy[backend_name] = metrics.top1(on_cpu(paths["compressed"]), labels)
            variant_results[backend_name][backend_name] = results["compressed"][backend_name]
        if backend_name in cfg.backends:
            speedups[backend_name] = _time(backend, paths, data, cfg, results, log, timer)
            if not speedups[backend_name]:
                del speedups[backend_name]
    base = describe_model(baseline_path, reference["baseline"], metrics.TOP1.name)
    comp = describe_model(compressed_path, reference["compressed"], metrics.TOP1.name)
    base.backends = {k: v for k, v in results["baseline"].items() if k in cfg.backends}
    comp.backends = {k: v for k, v in results["compressed"].items() if k in cfg.backends}
    comp.agreement = agreement
    described_variants = {}
    for backend_name, path in variants.items():
        if backend_name not in variant_accuracy:  # its backend was skipped
            continue
        described = describe_model(path, variant_accuracy[backend_name], metrics.TOP1.name)
        described.backends = variant_results[backend_name]
        described_variants[backend_name] = described
    deltas = Deltas(
        accuracy_pt=(comp.accuracy - base.accuracy) * 100,
        size_ratio=comp.size_bytes / base.size_bytes,
        gzip_ratio=comp.gzip_bytes / base.gzip_bytes,
        params_ratio=comp.params / base.params if base.params else 1.0,
        speedup=speedups,
    )
    return Evaluation(base, comp, deltas, described_variants)


def _time(
    backend: Backend,
    paths: dict[str, Path],
    data: Dataset,
    cfg: EvaluateConfig,
    results: dict[str, dict[str, BackendResult]],
    log: Callable[[str], None],
    timer: bench.Timer | None,
) -> dict[str, Speedup]:
    """Latency per batch size, baseline and compressed alternated in blocks; their speedups."""
    speedups: dict[str, Speedup] = {}
    for bs in cfg.batch_sizes:
        runs = {}
        sample = data.sample_batch(bs)
        for role, path in paths.items():
            opened = open_session(backend, path, cfg.threads, bs)
            if opened.batch is not None and opened.batch != bs:
                results[role][backend.name].notes.append(
                    f"batch {bs} not timed: {path.name} is fixed to batch {opened.batch}"
                )
                continue
            feed: dict[str, Any] = {i.name: sample[i.name] for i in opened.session.get_inputs()}
            runs[role] = lambda s=opened.session, f=feed: s.run(None, f)
        if len(runs) < len(paths):
            # One model alone gives no comparison; on an emulator it would cost minutes.
            for role in runs:
                results[role][backend.name].notes.append(
                    f"batch {bs} not timed: the other model cannot run it here"
                )
            continue
        log(f"timing {backend.name} batch {bs}: {', '.join(runs)}")
        repeats = min(cfg.repeats, cfg.npu.repeats) if backend.emulated else cfg.repeats
        timed = bench.time_alternating(
            runs,
            warmup=min(cfg.warmup, 2) if backend.emulated else cfg.warmup,
            repeats=repeats,
            block=min(cfg.block, repeats),
            **({"timer": timer} if timer else {}),
        )
        for role, samples in timed.items():
            results[role][backend.name].latency_ms[str(bs)] = bench.summarize(samples, cfg.threads)
        if len(timed) == 2:
            point, lo, hi = bench.speedup_interval(timed["baseline"], timed["compressed"])
            speedups[str(bs)] = Speedup(value=point, ci95=(lo, hi))
    return speedups
