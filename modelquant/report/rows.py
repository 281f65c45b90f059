"""The comparison rows every human-facing renderer shows, computed once from a Report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelquant.latency_profile import BatchLatency, op_rows
from modelquant.report.model import DataParallelInfo, Gate, ModelResult, Report, Speedup


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt_ms(ms: float) -> str:
    """Milliseconds to three significant digits (at least one decimal below 100 ms)."""
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_speedup(speed: Speedup) -> str:
    return f"{speed.value:.2f}x [{speed.ci95[0]:.2f}, {speed.ci95[1]:.2f}]"


def fmt_points(fraction: float) -> str:
    """An accuracy fraction (0.0067) in points (0.67 pt)."""
    return f"{fraction * 100:.2f} pt"


def fmt_metric(metric: str, value: float) -> str:
    """A task metric's value: accuracy in percent, a cosine to four places."""
    return f"{value:.4f}" if metric == "cosine" else f"{value:.2%}"


def fmt_metric_delta(metric: str, points: float) -> str:
    """Compressed minus baseline (`Deltas.accuracy_pt`, in points of the metric)."""
    return f"{points / 100:+.4f}" if metric == "cosine" else f"{points:+.2f} pt"


def _similarity_rows(b: ModelResult, c: ModelResult) -> list[tuple[str, str, str, str]]:
    """Feature extraction: the cosine's tail and the nearest-neighbour agreement."""
    s = c.similarity
    if s is None:
        return []
    ref = "1 (the reference)"
    return [
        ("cosine p5 (cpu)", ref, f"{s['cosine_p5']:.4f}", ""),
        ("cosine min (cpu)", ref, f"{s['cosine_min']:.4f}", ""),
        ("same nearest neighbour", "100% (the reference)", f"{s['neighbour_agreement']:.2%}", ""),
    ]


def fmt_gate(gate: Gate, value: float) -> str:
    """A gate's threshold or value in its unit, rounded for people (JSON keeps full precision)."""
    if gate.unit == "fraction":
        return fmt_points(value)
    if gate.unit == "ratio":
        return f"{value:.3f}x"
    if gate.unit == "speedup":
        return f"{value:.2f}x"
    if gate.unit == "cosine":
        return f"{value:.4f}"
    if gate.unit == "share":
        return f"{value:.1%}"
    return f"{value:.4g}"


def gate_cells(gate: Gate) -> tuple[str, str]:
    """(threshold, value) cells; a gate without a value says it was not measured (the detail
    says why)."""
    value = "not measured" if gate.value is None else fmt_gate(gate, gate.value)
    return fmt_gate(gate, gate.threshold), value


def _latency(result: ModelResult, backend: str, bs: str) -> str:
    entry = result.backends.get(backend)
    if entry is None:
        return f"not run: {backend} not evaluated"
    if entry.skipped:
        return f"skipped: {entry.skipped}"
    lat = entry.latency_ms.get(bs)
    if lat is None:
        return entry.untimed.get(bs, "not timed")
    return f"{fmt_ms(lat.p50)} ms (p90 {fmt_ms(lat.p90)})"


def _parity(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "not measured"
    text = f"max |diff| {parity['max_abs_diff']:.3g}"
    if parity.get("max_steps") is not None:
        text += f" ({parity['max_steps']:.0f} steps)"
    if parity.get("top1_agreement") is not None:
        text += f", top-1 agree {parity['top1_agreement']:.1%}"
    return text


MAX_LISTED = 5


def fmt_list(values: list[Any]) -> str:
    """Names, up to MAX_LISTED of them, then "+N more"; "none" when empty."""
    if not values:
        return "none"
    shown = ", ".join(map(str, values[:MAX_LISTED]))
    more = len(values) - MAX_LISTED
    return f"{shown} +{more} more" if more > 0 else shown


def _short(value: Any, nested: bool = False) -> str:
    """A detail value as people read it: floats rounded, long lists cut, nested tables counted."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        if set(value) == {"before", "after"}:
            return f"{_short(value['before'], True)}->{_short(value['after'], True)}"
        if nested:
            return _entries(len(value))
        return ", ".join(f"{k}={_short(v, True)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        if value and all(isinstance(v, dict | list) for v in value):
            return _entries(len(value))
        if nested and all(isinstance(v, int) for v in value):
            return "x".join(map(str, value))
        return fmt_list(value)
    return str(value)


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'} (in report.json)"


_OWN_SECTION = frozenset({"gate", "fallback", "layers", "auto", "transformer_layers"})
"""Details shown in their own table (gates, fallback rounds, per-layer sensitivity, the
candidates of quantize mode auto, heads and widths of a pruned transformer)."""


STEP_HEADER = ["after", "metric", "agreement", "cosine p5 / min", "parameters", "run by"]


def step_rows(report: Report) -> list[list[str]]:
    """The model as loaded, then after each stage, on the evaluation data: the metric, the
    agreement with the baseline (top-1 class, or nearest neighbour), the cosine's tail for
    embeddings, the parameter count. Empty when no stage was scored."""
    steps = [(i, s) for i, s in enumerate(report.stages, 1) if s.quality is not None]
    if not steps:
        return []
    base = report.baseline
    tail = "1 / 1" if base.metric == "cosine" else ""
    rows = [
        [
            "loaded model",
            fmt_metric(base.metric, base.accuracy),
            "100.00%",
            tail,
            f"{base.params:,}",
            "onnxruntime cpu",
        ]
    ]
    for i, stage in steps:
        q = stage.quality
        assert q is not None
        cos = f"{q.cosine_p5:.4f} / {q.cosine_min:.4f}" if q.cosine_p5 is not None else ""
        rows.append(
            [
                f"{i} {stage.name}",
                fmt_metric(q.metric, q.value),
                f"{q.agreement:.2%}",
                cos,
                f"{q.params:,}",
                q.runtime,
            ]
        )
    return rows


TRANSFORMER_HEADER = [
    "layer",
    "heads before",
    "heads after",
    "heads removed",
    "FFN before",
    "FFN after",
]


def transformer_tables(report: Report) -> list[tuple[str, list[list[str]]]]:
    """(title, rows) per stage that pruned a transformer: heads and feed-forward width per layer
    before and after, with the original indexes of the heads removed."""
    found = []
    for i, stage in enumerate(report.stages, 1):
        layers = stage.details.get("transformer_layers")
        if not isinstance(layers, dict):
            continue
        rows = [
            [
                str(n),
                str(v["heads_before"]),
                str(v["heads_after"]),
                ", ".join(map(str, v.get("heads_removed", []))) or "none",
                str(v["ffn_before"]),
                str(v["ffn_after"]),
            ]
            for n, v in sorted(layers.items(), key=lambda kv: int(kv[0]))
        ]
        found.append((f"stage {i} {stage.name}: attention heads and FFN width per layer", rows))
    return found


def data_parallel_line(info: DataParallelInfo) -> str:
    """The environment line of a run whose torch stages trained under torchrun."""
    batch = ", ".join(str(b) for b in info.per_rank_batch_size) or "none trained"
    return (
        f"data-parallel training: {info.world_size} ranks ({info.backend}, {info.strategy}), "
        f"gradient compression {info.gradient_compression}, per-rank batch {batch}"
    )


def stage_notes(settings: dict[str, Any], details: dict[str, Any]) -> str:
    """What a stage reported beyond its settings, as short key: value pairs."""
    notes = [
        f"{key}: {_short(value)}"
        for key, value in details.items()
        if key not in _OWN_SECTION and not (key in settings and settings[key] == value)
    ]
    fallback = details.get("fallback")
    if isinstance(fallback, dict):
        kept = fallback.get("kept_higher") or {}
        verdict = "within budget" if fallback.get("met") else "budget missed"
        notes.insert(
            0,
            f"fallback: {verdict} after {fallback.get('rounds_taken', 0)} round(s), "
            f"{len(kept)} layer(s) in higher precision",
        )
    auto = details.get("auto")
    if isinstance(auto, dict) and auto.get("candidates"):
        notes.insert(
            0,
            f"mode auto: {auto.get('winner') or 'no winner'} of "
            f"{len(auto['candidates'])} candidate(s)",
        )
    return "; ".join(notes)


def fallback_rows(report: Report) -> list[list[str]]:
    """One row per fallback round of any stage: round, layers moved, metric, drop, size; the
    kept round marked."""
    rows: list[list[str]] = []
    for stage in report.stages:
        fallback = stage.details.get("fallback")
        if not isinstance(fallback, dict):
            continue
        for r in fallback.get("rounds", []):
            moved = r.get("moved", {})
            rows.append(
                [
                    str(r["round"])
                    + (" (kept)" if r["round"] == fallback.get("kept_round") else ""),
                    ", ".join(f"{n} -> {p}" for n, p in moved.items()) or "none (all quantized)",
                    f"{r['metric']:.2%}",
                    f"{r['drop'] * 100:.2f} pt",
                    fmt_bytes(r["size_bytes"]),
                ]
            )
    return rows


@dataclass
class AutoTable:
    """The candidates of one `quantize: {mode: auto}` search, as every renderer shows them."""

    title: str
    header: list[str]
    rows: list[list[str]]
    lines: list[str] = field(default_factory=list)
    """What the table is measured on, then the winner's reason."""


_SETTING_WORDS = {("per_channel", True): "per-channel", ("per_channel", False): "per-tensor"}


def _settings_cell(settings: dict[str, Any]) -> str:
    """A candidate's settings in a few words: 'static qdq uint8 per-channel Conv/Gemm/MatMul'."""
    words = []
    for key, value in settings.items():
        if isinstance(value, bool):
            words.append(_SETTING_WORDS.get((key, value), f"{key}={str(value).lower()}"))
        elif isinstance(value, list):
            words.append("/".join(map(str, value)) or f"{key}=none")
        elif value is not None:
            words.append(str(value))
    return " ".join(words)


def _auto_metric(metric: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return fmt_metric("cosine" if metric == "cosine" else "top1", float(value))


def _auto_drop(metric: str, drop: Any) -> str:
    if not isinstance(drop, int | float):
        return "n/a"
    return f"{drop:.4f}" if metric == "cosine" else f"{drop * 100:.2f} pt"


def _auto_speedup(candidate: dict[str, Any], bs: str) -> str:
    value = (candidate.get("speedup") or {}).get(bs)
    if value is None:
        return "not timed"
    ci = (candidate.get("speedup_ci95") or {}).get(bs)
    return f"{value:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def auto_tables(report: Report) -> list[AutoTable]:
    """One table per quantize stage that searched (`details["auto"]`): a row per candidate
    (metric, drop, size, speedup per batch size), the winner marked, then the reason."""
    tables = []
    for stage in report.stages:
        auto = stage.details.get("auto")
        if not isinstance(auto, dict) or not auto.get("candidates"):
            continue
        metric = str(auto.get("metric", "top1"))
        batch_sizes = [str(b) for b in auto.get("batch_sizes", [])]
        if not batch_sizes:
            seen = {bs for c in auto["candidates"] for bs in (c.get("speedup") or {})}
            batch_sizes = sorted(seen, key=int)
        rows = []
        for c in auto["candidates"]:
            name = str(c.get("name", "?"))
            marks = [
                m
                for m, on in (
                    ("winner", name == auto.get("winner")),
                    ("fixed default", name == auto.get("fixed_default")),
                )
                if on
            ]
            label = name + (f" ({', '.join(marks)})" if marks else "")
            settings = _settings_cell(c.get("settings") or {})
            if c.get("error"):
                rows.append(
                    [
                        label,
                        settings,
                        f"failed: {c['error']}",
                        "n/a",
                        "n/a",
                        *(["not timed"] * len(batch_sizes)),
                        "no",
                    ]
                )
                continue
            ratio = c.get("size_ratio")
            rows.append(
                [
                    label,
                    settings,
                    _auto_metric(metric, c.get("metric")),
                    _auto_drop(metric, c.get("drop")),
                    f"{ratio:.3f}x" if isinstance(ratio, int | float) else "n/a",
                    *(_auto_speedup(c, bs) for bs in batch_sizes),
                    "yes" if c.get("within_budget") else "no",
                ]
            )
        lines = []
        budget = auto.get("budget")
        if isinstance(budget, int | float):
            source = f" (from {auto['budget_from']})" if auto.get("budget_from") else ""
            line = f"budget: {_auto_drop(metric, budget)} drop{source}"
            if isinstance(auto.get("float_metric"), int | float):
                line += f"; float model {_auto_metric(metric, auto['float_metric'])}"
            threads = auto.get("threads")
            timed = "; speedup = float latency / candidate latency, timed at batch " + (
                ", ".join(batch_sizes) or "none"
            )
            if threads:
                timed += f" with {threads} thread(s)"
            lines.append(line + timed + ", alternated in blocks")
        if auto.get("reason"):
            lines.append(f"winner {auto.get('winner')}: {auto['reason']}")
        tables.append(
            AutoTable(
                title="quantize mode: auto (validation data)",
                header=[
                    "candidate",
                    "settings",
                    metric,
                    "drop",
                    "size",
                    *(f"speedup b{bs}" for bs in batch_sizes),
                    "within budget",
                ],
                rows=rows,
                lines=lines,
            )
        )
    return tables


def latency_batches(report: Report) -> list[BatchLatency]:
    """The profiled batch sizes of the report's latency section (those with a profile)."""
    profile = report.latency_profile
    if profile is None:
        return []
    return [b for b in profile.batches if b.compressed is not None]


def latency_rows(batch: BatchLatency, limit: int | None = None) -> list[list[str]]:
    """(op type, baseline ms, compressed ms, share) of one profiled batch size."""
    return op_rows(batch, limit)


def comparison_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(what, baseline, compressed, delta) rows: accuracy, size, params, latency per backend."""
    b, c, d = report.baseline, report.compressed, report.deltas
    rows = [
        (
            f"{b.metric.replace('_', ' ')} (cpu)",
            fmt_metric(b.metric, b.accuracy),
            fmt_metric(c.metric, c.accuracy),
            fmt_metric_delta(b.metric, d.accuracy_pt),
        ),
        *_similarity_rows(b, c),
        ("ONNX size", fmt_bytes(b.size_bytes), fmt_bytes(c.size_bytes), f"{d.size_ratio:.3f}x"),
        ("size gzipped", fmt_bytes(b.gzip_bytes), fmt_bytes(c.gzip_bytes), f"{d.gzip_ratio:.3f}x"),
        (
            "parameters (non-zero)",
            f"{b.params:,} ({b.nonzero_params:,})",
            f"{c.params:,} ({c.nonzero_params:,})",
            f"{d.params_ratio:.3f}x",
        ),
    ]
    if c.agreement is not None and c.similarity is None:
        rows.append(("agrees with baseline", "n/a: the reference", f"{c.agreement:.2%}", ""))
    for backend in report.recipe.get("evaluate", {}).get("backends", []):
        entry = c.backends.get(backend)
        if entry is not None and entry.skipped:
            rows.append((f"{backend}", "skipped", "skipped", entry.skipped))
            continue
        label = f"{backend} (emulated)" if entry is not None and entry.emulated else backend
        if backend != "cpu" and entry is not None and entry.accuracy is not None:
            base_entry = b.backends.get(backend)
            base_acc = base_entry.accuracy if base_entry is not None else None
            ran = f" ({entry.model})" if entry.model else ""
            rows.append(
                (
                    f"{c.metric} on {label}",
                    "not scored" if base_acc is None else fmt_metric(c.metric, base_acc),
                    f"{fmt_metric(c.metric, entry.accuracy)}{ran}",
                    ""
                    if base_acc is None
                    else fmt_metric_delta(c.metric, (entry.accuracy - base_acc) * 100),
                )
            )
            rows.append(
                (
                    f"{backend} vs cpu, same file",
                    _parity(base_entry.parity if base_entry is not None else None),
                    _parity(entry.parity),
                    "",
                )
            )
        for bs in report.recipe.get("evaluate", {}).get("batch_sizes", []):
            speed = d.speedup.get(backend, {}).get(str(bs))
            delta = fmt_speedup(speed) if speed else "no speedup: not timed for both"
            rows.append(
                (
                    f"{label} p50, batch {bs}",
                    _latency(b, backend, str(bs)),
                    _latency(c, backend, str(bs)),
                    delta,
                )
            )
    return rows
