"""The comparison rows every human-facing renderer shows, computed once from a Report."""

from __future__ import annotations

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
            rows.append(
                (
                    f"accuracy on {label}",
                    f"{base_acc:.2%}",
                    f"{entry.accuracy:.2%}",
                    f"{(entry.accuracy - base_acc) * 100:+.2f} pt",
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
