"""The comparison rows every human-facing renderer shows, computed once from a Report."""

from __future__ import annotations

from typing import Any

from modelquant.report.model import ModelResult, Report


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _latency(result: ModelResult, backend: str, bs: str) -> str:
    entry = result.backends.get(backend)
    if entry is None or entry.skipped:
        return "skipped"
    lat = entry.latency_ms.get(bs)
    return "-" if lat is None else f"{lat.p50:.3f} ms (p90 {lat.p90:.3f})"


def _parity(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "-"
    text = f"max |diff| {parity['max_abs_diff']:.3g}"
    if parity.get("max_steps") is not None:
        text += f" ({parity['max_steps']:.0f} steps)"
    if parity.get("top1_agreement") is not None:
        text += f", top-1 agree {parity['top1_agreement']:.1%}"
    return text


def stage_notes(settings: dict[str, Any], details: dict[str, Any]) -> str:
    """What a stage reported beyond its settings, as short key=value pairs."""
    parts = []
    for key, value in details.items():
        if key in settings and settings[key] == value:
            continue
        if isinstance(value, dict):
            value = ", ".join(
                f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list)
            )
        elif isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, list):
            value = f"[{len(value)}]" if len(value) > 3 else ", ".join(map(str, value)) or "none"
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def comparison_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(what, baseline, compressed, delta) rows: accuracy, size, params, latency per backend."""
    b, c, d = report.baseline, report.compressed, report.deltas
    rows = [
        (
            f"{b.metric.replace('_', ' ')} (cpu)",
            f"{b.accuracy:.2%}",
            f"{c.accuracy:.2%}",
            f"{d.accuracy_pt:+.2f} pt",
        ),
        ("ONNX size", fmt_bytes(b.size_bytes), fmt_bytes(c.size_bytes), f"{d.size_ratio:.3f}x"),
        ("size gzipped", fmt_bytes(b.gzip_bytes), fmt_bytes(c.gzip_bytes), f"{d.gzip_ratio:.3f}x"),
        (
            "parameters (non-zero)",
            f"{b.params:,} ({b.nonzero_params:,})",
            f"{c.params:,} ({c.nonzero_params:,})",
            f"{d.params_ratio:.3f}x",
        ),
    ]
    if c.agreement is not None:
        rows.append(("agrees with baseline", "", f"{c.agreement:.2%}", ""))
    for backend in report.recipe.get("evaluate", {}).get("backends", []):
        entry = c.backends.get(backend)
        if entry is not None and entry.skipped:
            rows.append((f"{backend}", "skipped", "skipped", entry.skipped))
            continue
        label = f"{backend} (emulated)" if entry is not None and entry.emulated else backend
        if backend != "cpu" and entry is not None and entry.accuracy is not None:
            base_acc = b.backends[backend].accuracy or 0.0
            ran = f" ({entry.model})" if entry.model else ""
            rows.append(
                (
                    f"top1 on {label}",
                    f"{base_acc:.2%}",
                    f"{entry.accuracy:.2%}{ran}",
                    f"{(entry.accuracy - base_acc) * 100:+.2f} pt",
                )
            )
            rows.append(
                (
                    f"{backend} vs cpu, same file",
                    _parity(b.backends[backend].parity),
                    _parity(entry.parity),
                    "",
                )
            )
        for bs in report.recipe.get("evaluate", {}).get("batch_sizes", []):
            speed = d.speedup.get(backend, {}).get(str(bs))
            delta = (
                f"{speed.value:.2f}x [{speed.ci95[0]:.2f}, {speed.ci95[1]:.2f}]" if speed else ""
            )
            rows.append(
                (
                    f"{label} p50, batch {bs}",
                    _latency(b, backend, str(bs)),
                    _latency(c, backend, str(bs)),
                    delta,
                )
            )
    return rows
