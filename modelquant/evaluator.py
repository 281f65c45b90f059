"""Measure baseline and compressed ONNX side by side: accuracy, size and latency per backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelquant import metrics
from modelquant.backends import Backend, BackendUnavailable, bench, get_backend
from modelquant.backends.bench import Opened, fixed_batch, open_session
from modelquant.data import Dataset
from modelquant.errors import StageError, UserError
from modelquant.models import onnx_file
from modelquant.recipe import EvaluateConfig
from modelquant.report.model import BackendResult, BackendStatus, Deltas, ModelResult, Speedup
from modelquant.tasks import CLASSIFICATION, Task

DEFAULT_BATCH = 32
"""Evaluation batch size when none is given (the recipe's `data.evaluation.batch_size` default)."""
ROLES = ("baseline", "compressed")
__all__ = [
    "Opened",
    "evaluate_model",
    "evaluate_models",
    "fixed_batch",
    "open_session",
    "predict",
    "score",
]


def predict(
    opened: Opened, data: Dataset, batch_size: int = DEFAULT_BATCH, task: Task = CLASSIFICATION
) -> np.ndarray:
    """First output over the whole data set, reduced batch by batch as the task compares it
    (pooled embeddings); a fixed-batch model gets its last batch padded."""
    names = [i.name for i in opened.session.get_inputs()]
    step = opened.batch or batch_size
    outputs = []
    for batch, _ in data.batches(step):
        n = len(next(iter(batch.values())))
        feed = {name: batch[name] for name in names}
        if opened.batch and n < opened.batch:
            pad = opened.batch - n
            feed = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feed.items()}
        outputs.append(task.reduce(batch, opened.session.run(None, feed)[0][:n]))
    return np.concatenate(outputs)


def model_outputs(
    path: Path,
    data: Dataset,
    backend: Backend,
    *,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    task: Task = CLASSIFICATION,
) -> np.ndarray:
    """`path`'s first output over all of `data` on `backend`, fed `batch_size` samples a run,
    reduced as `task` compares it."""
    return predict(open_session(backend, path, threads, batch_size), data, batch_size, task)


def _labels(data: Dataset, task: Task = CLASSIFICATION) -> np.ndarray | None:
    if data.labels is None and task.needs_labels:
        raise UserError("evaluation data has no labels; classification accuracy needs them")
    return data.labels


def score(
    model_path: Path,
    data: Dataset,
    backend: str | Backend = "cpu",
    *,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    task: Task = CLASSIFICATION,
    reference: np.ndarray | None = None,
) -> float:
    """The task metric alone of one ONNX file on `data` (top-1 accuracy; or mean cosine to
    `reference`, the float model's reduced outputs on the same data): no latency, no size.

    Cheap enough to call per layer (sensitivity analysis); `evaluate_models` is built on the same
    pieces.
    """
    labels = _labels(data, task)
    runner = get_backend(backend) if isinstance(backend, str) else backend
    out = model_outputs(model_path, data, runner, threads=threads, batch_size=batch_size, task=task)
    return task.score(out, labels, reference)


def describe_model(path: Path, accuracy: float, metric: str = metrics.TOP1.name) -> ModelResult:
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
    cpu_outputs: dict[Path, np.ndarray] = field(default_factory=dict)
    """Each file's reduced CPU outputs on the evaluation data (what its metric was scored on)."""


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


FP8_EMULATED = "FP8 Q/DQ runs as casts around float kernels here: latency emulated, never gated on"
FP8_EMULATED_ON = ("cpu",)
"""Backends that run FP8 Q/DQ as casts around FP32 kernels (the CPU EP has no FP8 arithmetic;
TensorRT on an Ada or Hopper GPU has, so cuda is not listed; the HTP refuses FP8 outright)."""


def _fp8(path: Path, seen: dict[Path, bool]) -> bool:
    """Whether `path` holds FLOAT8 weights, read once per file."""
    if path not in seen:
        from modelquant.schemes.fp8 import float8_initializers

        seen[path] = float8_initializers(path) > 0
    return seen[path]


@dataclass
class _Measured:
    """Per role and backend: accuracy, parity and latency; cpu accuracy per role; speedups."""

    results: dict[str, dict[str, BackendResult]]
    reference: dict[str, float]
    speedups: dict[str, dict[str, Speedup]]
    agreement: float | None = None
    variant_accuracy: dict[str, float] = field(default_factory=dict)
    similarity: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Role -> cosine statistics to the baseline on the CPU (feature extraction)."""
    cpu_outputs: dict[Path, np.ndarray] = field(default_factory=dict)
    """Every file's reduced CPU outputs on all of the data, as scored."""


def _measure(
    models: dict[str, Path],
    data: Dataset,
    cfg: EvaluateConfig,
    statuses: dict[str, BackendStatus],
    variants: dict[str, Path],
    log: Callable[[str], None],
    timer: bench.Timer | None,
    batch_size: int,
    task: Task = CLASSIFICATION,
) -> _Measured:
    """Score every model on every available backend (cpu always: the reference) and time each
    model once per backend and batch size through `bench.measure_latency`. A task compared with
    the baseline (embeddings) takes the baseline's CPU outputs as the reference."""
    labels = _labels(data, task)
    measured = _Measured({role: {} for role in models}, {}, {})
    cpu = get_backend("cpu")
    cpu_outputs = measured.cpu_outputs  # every file's CPU outputs on all of `data`, once
    fp8: dict[Path, bool] = {}

    def on_cpu(path: Path) -> np.ndarray:
        if path not in cpu_outputs:
            cpu_outputs[path] = model_outputs(
                path, data, cpu, threads=cfg.threads, batch_size=batch_size, task=task
            )
        return cpu_outputs[path]

    reference_path = models.get("baseline", next(iter(models.values())))

    def scored(out: np.ndarray) -> float:
        reference = on_cpu(reference_path) if task.needs_reference else None
        return task.score(out, labels, reference)

    for backend_name in dict.fromkeys(["cpu", *cfg.backends]):
        backend = get_backend(backend_name)
        ok, reason = backend.available()
        statuses[backend_name] = BackendStatus(
            available=ok,
            reason=reason,
            execution_provider=backend.execution_provider,
            versions=backend.versions() if ok else {},
        )
        if not ok:
            for role in models:
                measured.results[role][backend_name] = BackendResult(skipped=reason)
            continue
        paths = {
            role: variants.get(backend_name, p) if role == "compressed" else p
            for role, p in models.items()
        }
        samples = data.take(cfg.npu.samples) if backend_name == "npu" else data
        fp8_files = [p.name for p in dict.fromkeys(paths.values()) if _fp8(p, fp8)]
        if backend_name == "npu" and fp8_files:
            # A known gap, not a surprise: skipped whatever npu.on_unsupported says.
            reason = (
                f"the HTP does not run FP8 (FLOAT8E4M3FN) Q/DQ ({', '.join(fp8_files)}); "
                "quantize to int8 for the NPU"
            )
            log(f"npu skipped: {reason}")
            for role in models:
                measured.results[role][backend_name] = BackendResult(skipped=reason)
            continue
        if backend_name == "npu":
            refusals = [r for p in dict.fromkeys(paths.values()) if (r := _npu_refusal(p, 1))]
            if refusals:
                if cfg.npu.on_unsupported == "fail":
                    raise StageError("evaluate", "npu: " + "; ".join(refusals))
                log(f"npu skipped: {'; '.join(refusals)}")
                for role in models:
                    measured.results[role][backend_name] = BackendResult(
                        skipped="; ".join(refusals)
                    )
                continue
        try:
            outputs = {
                role: on_cpu(p)
                if backend_name == "cpu"
                else model_outputs(
                    p, samples, backend, threads=cfg.threads, batch_size=batch_size, task=task
                )
                for role, p in paths.items()
            }
        except BackendUnavailable as exc:
            log(f"{backend_name} skipped: {exc}")
            for role in models:
                measured.results[role][backend_name] = BackendResult(skipped=str(exc))
            continue
        for role, out in outputs.items():
            fp8_here = backend_name in FP8_EMULATED_ON and _fp8(paths[role], fp8)
            res = BackendResult(
                accuracy=scored(out),
                emulated=backend.emulated or fp8_here,
                execution_provider=backend.execution_provider,
                samples=len(out),
                notes=[FP8_EMULATED] if fp8_here else [],
            )
            if paths[role] != models[role]:
                res.model = paths[role].name
            if backend_name != "cpu":
                # Same file, same samples, on the reference CPU EP: where the numerics part.
                from modelquant.backends.parity import output_scale, parity

                cpu_ref = on_cpu(paths[role])[: len(out)]
                res.parity = parity(cpu_ref, out, output_scale(paths[role]))
            measured.results[role][backend_name] = res
        if backend_name == "cpu":
            measured.reference = {
                role: measured.results[role]["cpu"].accuracy or 0.0 for role in models
            }
            if "baseline" in outputs and "compressed" in outputs:
                measured.agreement = task.agreement(outputs["compressed"], outputs["baseline"])
            for role, out in outputs.items():
                similarity = task.similarity(out, on_cpu(reference_path))
                if similarity is not None:
                    measured.similarity[role] = similarity
        if backend_name in variants and "compressed" in paths:
            measured.variant_accuracy[backend_name] = scored(on_cpu(paths["compressed"]))
        if backend_name in cfg.backends:
            latency = bench.measure_latency(
                paths,
                backend,
                cfg.batch_sizes,
                bench.feeds_from(data),
                cfg,
                timer=timer,
                log=log,
            )
            for role in paths:
                measured.results[role][backend_name].latency_ms = latency.stats[role]
                measured.results[role][backend_name].untimed = latency.untimed[role]
            if latency.speedups:
                measured.speedups[backend_name] = latency.speedups
    return measured


def evaluate_models(
    baseline_path: Path,
    compressed_path: Path,
    data: Dataset,
    cfg: EvaluateConfig,
    statuses: dict[str, BackendStatus],
    variants: dict[str, Path] | None = None,
    log: Callable[[str], None] = lambda _: None,
    timer: bench.Timer | None = None,
    batch_size: int = DEFAULT_BATCH,
    task: Task = CLASSIFICATION,
) -> Evaluation:
    """Accuracy on every available backend (cpu is the reference), latency alternated in blocks.

    A backend with a variant in `variants` (e.g. the static-shape NPU flavour) runs that file as
    the compressed model; the variant is also scored on the CPU and compared with it (parity).
    `batch_size` is what predictions are fed (the recipe's `data.evaluation.batch_size`).
    """
    variants = variants or {}
    m = _measure(
        {"baseline": baseline_path, "compressed": compressed_path},
        data,
        cfg,
        statuses,
        variants,
        log,
        timer,
        batch_size,
        task,
    )
    base = describe_model(baseline_path, m.reference["baseline"], task.metric.name)
    comp = describe_model(compressed_path, m.reference["compressed"], task.metric.name)
    base.similarity = m.similarity.get("baseline")
    comp.similarity = m.similarity.get("compressed")
    base.backends = {k: v for k, v in m.results["baseline"].items() if k in cfg.backends}
    comp.backends = {k: v for k, v in m.results["compressed"].items() if k in cfg.backends}
    comp.agreement = m.agreement
    described_variants = {}
    for backend_name, path in variants.items():
        if backend_name not in m.variant_accuracy:  # its backend was skipped
            continue
        described = describe_model(path, m.variant_accuracy[backend_name], task.metric.name)
        described.backends = {backend_name: m.results["compressed"][backend_name]}
        described_variants[backend_name] = described
    deltas = Deltas(
        accuracy_pt=(comp.accuracy - base.accuracy) * 100,
        size_ratio=comp.size_bytes / base.size_bytes,
        gzip_ratio=comp.gzip_bytes / base.gzip_bytes,
        params_ratio=comp.params / base.params if base.params else 1.0,
        speedup=m.speedups,
    )
    return Evaluation(base, comp, deltas, described_variants, m.cpu_outputs)


def evaluate_model(
    path: Path,
    data: Dataset,
    cfg: EvaluateConfig,
    statuses: dict[str, BackendStatus],
    log: Callable[[str], None] = lambda _: None,
    timer: bench.Timer | None = None,
    batch_size: int = DEFAULT_BATCH,
    task: Task = CLASSIFICATION,
) -> ModelResult:
    """One model alone (`modelquant evaluate -m`): accuracy per backend, each batch size timed
    once, size and parameters. (An embedding model alone is its own reference: its CPU cosine
    is 1 and the other backends are compared with it.)"""
    m = _measure({"model": path}, data, cfg, statuses, {}, log, timer, batch_size, task)
    result = describe_model(path, m.reference["model"], task.metric.name)
    result.backends = {k: v for k, v in m.results["model"].items() if k in cfg.backends}
    return result
