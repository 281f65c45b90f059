"""report.html: one self-contained page rendered from the Report alone: the comparison, the gates,
accuracy vs latency per backend, a stage timeline, the per-layer sensitivity when an analysis ran,
and the environment. Inline CSS; plots drawn by matplotlib as inline SVG; no script, no link, no
image or font to fetch, so the file opens anywhere without a network."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelquant.report import register_renderer
from modelquant.report.model import LatencyStats, ModelResult, Report
from modelquant.report.rows import (
    STEP_HEADER,
    TRANSFORMER_HEADER,
    auto_tables,
    comparison_rows,
    data_parallel_line,
    fallback_rows,
    fmt_bytes,
    fmt_metric,
    gate_cells,
    latency_batches,
    latency_rows,
    stage_notes,
    step_rows,
    transformer_tables,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
"""No creation date (determinism) and no RDF block (it names URLs, though it loads none)."""

MAX_LAYERS = 40
"""Layers drawn in a sensitivity chart (worst first); report.json keeps them all."""

_COLOURS = {"baseline": "#4c72b0", "compressed": "#dd8452"}
_VARIANT_COLOURS = ("#55a868", "#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1150px; margin: 0 auto; padding: 1.5em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #d5d5d5; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { display: inline-block; padding: .1em .6em; border-radius: .3em; color: #fff;
          font-weight: 600; }
.passed, .pass { background: #2e7d32; color: #fff; }
.gate_failed, .fail { background: #c62828; color: #fff; }
td.pass, td.fail { font-weight: 600; text-align: center; }
.note { color: #555; font-size: .92em; } figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; } figcaption { color: #555; font-size: .92em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: .2em; }
.warning { background: #fff4d6; border-left: 4px solid #e0a800; padding: .4em .8em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _plain(text: str) -> str:
    """Text for matplotlib: a `$` would start math mode."""
    return text.replace("$", r"\$")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: int = 0) -> str:
    """An escaped table; columns from `numeric` on are right-aligned (0: none)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if numeric and i >= numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _svg(fig: Figure) -> str:
    """The figure as an inline <svg> element (the XML prolog and DOCTYPE dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    return text[text.index("<svg") :].strip()


def _figure(fig_id: str, fig: Figure, caption: str) -> str:
    return f'<figure id="{_e(fig_id)}">{_svg(fig)}<figcaption>{_e(caption)}</figcaption></figure>'


# --- accuracy vs latency ---------------------------------------------------------------------


@dataclass
class _Point:
    label: str
    colour: str
    value: float
    latency: LatencyStats


def _models(report: Report) -> list[tuple[str, str, ModelResult]]:
    """(label, colour, result): baseline, compressed, then every variant."""
    found = [
        ("baseline", _COLOURS["baseline"], report.baseline),
        ("compressed", _COLOURS["compressed"], report.compressed),
    ]
    for i, (name, result) in enumerate(report.variants.items()):
        found.append((f"variant {name}", _VARIANT_COLOURS[i % len(_VARIANT_COLOURS)], result))
    return found


def _backends(report: Report) -> list[str]:
    """The recipe's backends in its order, then any other a result names."""
    names = list(report.recipe.get("evaluate", {}).get("backends", []))
    for _, _, result in _models(report):
        names += [b for b in result.backends if b not in names]
    return names


def _batch_sizes(report: Report, backend: str) -> list[str]:
    sizes = [str(b) for b in report.recipe.get("evaluate", {}).get("batch_sizes", [])]
    for _, _, result in _models(report):
        entry = result.backends.get(backend)
        if entry is not None:
            sizes += [b for b in entry.latency_ms if b not in sizes]
    return sorted(sizes, key=lambda b: int(b) if b.isdigit() else 0)


def _points(report: Report, backend: str, bs: str) -> tuple[list[_Point], list[str]]:
    """The models timed on `backend` at batch `bs` (one point per file that ran: a variant that
    is also what `compressed` ran there shares its point), and why the others are missing."""
    points: dict[str, _Point] = {}
    missing: list[str] = []
    for label, colour, result in _models(report):
        entry = result.backends.get(backend)
        if entry is None:
            continue
        if entry.skipped:
            missing.append(f"{label}: skipped ({entry.skipped})")
            continue
        lat = entry.latency_ms.get(bs)
        if lat is None:
            missing.append(f"{label}: {entry.untimed.get(bs, 'not timed')}")
            continue
        value = entry.accuracy if entry.accuracy is not None else None
        if value is None and backend == "cpu":
            value = result.accuracy
        if value is None:
            missing.append(f"{label}: timed but not scored on {backend}")
            continue
        ran = entry.model or result.path
        if ran in points:
            points[ran].label += f" = {label}"
            continue
        points[ran] = _Point(f"{label} ({ran})", colour, value, lat)
    return list(points.values()), missing


def _metric_label(metric: str) -> str:
    if metric == "top1":
        return "top-1 accuracy"
    if metric == "cosine":
        return "mean cosine to the baseline"
    return metric.replace("_", " ")


def _accuracy_latency(report: Report) -> str:
    """One figure per backend with anything timed, one panel per batch size."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    metric = report.compressed.metric
    parts: list[str] = []
    untimed: list[str] = []
    for backend in _backends(report):
        panels = []
        missing: list[str] = []
        for bs in _batch_sizes(report, backend):
            points, why = _points(report, backend, bs)
            missing += [f"batch {bs}, {w}" for w in why]
            if points:
                panels.append((bs, points))
        emulated = any(
            (r.backends.get(backend) is not None and r.backends[backend].emulated)
            for _, _, r in _models(report)
        )
        if not panels:
            reasons = "; ".join(dict.fromkeys(missing)) or "no model was timed"
            untimed.append(f"{backend}: {reasons}")
            continue
        width = max(6.5, 4.4 * len(panels) + 0.6)
        fig = Figure(figsize=(width, 4.0), layout="constrained")
        axes: list[Axes] = list(fig.subplots(1, len(panels), squeeze=False, sharey=True)[0])
        values = [p.value for _, points in panels for p in points]
        span = max(max(values) - min(values), 0.02)
        top = max(values) + span * 0.6
        if metric in ("top1", "cosine"):  # neither goes above 1
            top = min(top, 1.0 + span * 0.1)
        axes[0].set_ylim(min(values) - span * 0.6, top)
        axes[0].set_ylabel(_metric_label(metric))
        if metric == "top1":
            axes[0].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
        labels: dict[str, Any] = {}
        for ax, (bs, points) in zip(axes, panels, strict=True):
            for p in points:
                lo, hi = p.latency.ci95
                drawn = ax.errorbar(
                    [p.latency.p50],
                    [p.value],
                    xerr=[[max(p.latency.p50 - lo, 0.0)], [max(hi - p.latency.p50, 0.0)]],
                    fmt="o",
                    markersize=7,
                    capsize=4,
                    color=p.colour,
                )
                labels.setdefault(_plain(p.label), drawn)
            right = max(max(p.latency.ci95[1], p.latency.p50) for p in points)
            ax.set_xlim(0, right * 1.15)
            ax.set_title(f"batch {bs}")
            ax.set_xlabel("p50 latency (ms); bars: 95 % interval")
        fig.legend(
            list(labels.values()),
            list(labels),
            loc="outside lower center",
            ncols=max(1, min(len(labels), int(width // 3.9))),
        )
        title = f"{backend}" + (" (latency emulated)" if emulated else "")
        fig.suptitle(_plain(f"{title}: {_metric_label(metric)} vs latency"))
        caption = (
            f"{backend}: each point is one model file; further left is faster, higher is better."
        )
        if emulated:
            caption += (
                f" {backend} is emulated here: its latency says nothing about the device's "
                "speed, only its numerics."
            )
        if missing:
            caption += " Not drawn: " + "; ".join(dict.fromkeys(missing)) + "."
        parts.append(_figure(f"accuracy-latency-{backend}", fig, caption))
    if not parts:
        parts.append('<p class="note">No latency was measured, so there is no plot.</p>')
    if untimed:
        parts.append('<p class="note">Not plotted: ' + _e("; ".join(untimed)) + ".</p>")
    return "".join(parts)


# --- stage timeline --------------------------------------------------------------------------


def _timeline(report: Report) -> str:
    from matplotlib.figure import Figure

    stages = report.stages
    if not stages:
        return '<p class="note">The recipe has no stages.</p>'
    fig = Figure(figsize=(9, 0.45 * len(stages) + 1.3), layout="constrained")
    ax = fig.subplots()
    start = 0.0
    total = sum(s.seconds for s in stages) or 1.0
    for i, s in enumerate(stages):
        colour = "#b0b0b0" if s.cached else "#4c72b0"
        ax.barh(i, s.seconds, left=start, color=colour, hatch="//" if s.cached else None)
        text = f"{s.seconds:.2f} s" + (" (cached)" if s.cached else "")
        ax.text(start + s.seconds + total * 0.01, i, text, va="center", fontsize=8)
        start += s.seconds
    ax.set_yticks(
        range(len(stages)), labels=[_plain(f"{i} {s.name}") for i, s in enumerate(stages, 1)]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, total * 1.22)
    ax.set_xlabel("seconds from the first stage")
    ax.set_title("stage timeline")
    cached = sum(s.cached for s in stages)
    caption = (
        f"{len(stages)} stage(s), {sum(s.seconds for s in stages):.2f} s in all; "
        f"{cached} taken from the cache (grey, hatched). Exporting the baseline and measuring "
        "are not shown."
    )
    return _figure("timeline", fig, caption)


# --- per-layer sensitivity -------------------------------------------------------------------


def _sensitivity_sources(report: Report) -> list[tuple[str, list[dict[str, Any]]]]:
    """(title, layers worst first) for every analysis in the stages' details: the analyze
    stage's `layers`, the quantize fallback's `ranking`."""
    found = []
    for i, stage in enumerate(report.stages, 1):
        layers = stage.details.get("layers")
        if isinstance(layers, list) and layers and all(isinstance(x, dict) for x in layers):
            found.append((f"stage {i} {stage.name}: per-layer sensitivity", layers))
        fallback = stage.details.get("fallback")
        ranking = fallback.get("ranking") if isinstance(fallback, dict) else None
        if isinstance(ranking, list) and ranking:
            found.append((f"stage {i} {stage.name}: fallback ranking (worst first)", ranking))
    return found


def _sensitivity(report: Report) -> str:
    from matplotlib.figure import Figure

    parts = []
    for n, (title, layers) in enumerate(_sensitivity_sources(report), 1):
        shown = layers[:MAX_LAYERS]
        names = [_plain(str(x.get("layer") or x.get("node") or "?")) for x in shown]
        panels: list[tuple[str, list[float], str]] = []
        if any(x.get("metric_delta") is not None for x in shown):
            drops = [
                -x["metric_delta"] * 100 if x.get("metric_delta") is not None else float("nan")
                for x in shown
            ]
            panels.append(("metric drop with only this layer quantized (points)", drops, "#c44e52"))
        sqnr = [
            x["activation_sqnr_db"] if x.get("activation_sqnr_db") is not None else float("nan")
            for x in shown
        ]
        panels.append(("own activation SQNR (dB; lower: more sensitive)", sqnr, "#4c72b0"))
        fig = Figure(
            figsize=(4.6 * len(panels) + 2.2, 0.28 * len(shown) + 1.5), layout="constrained"
        )
        axes: list[Axes] = list(fig.subplots(1, len(panels), squeeze=False, sharey=True)[0])
        for ax, (label, values, colour) in zip(axes, panels, strict=True):
            bars = ax.barh(range(len(shown)), values, color=colour)
            texts = ["not measured" if math.isnan(v) else f"{v:.2f}" for v in values]
            ax.bar_label(bars, labels=texts, padding=2, fontsize=7)
            ax.margins(x=0.15)
            ax.set_xlabel(label)
            ax.axvline(0, color="#333", linewidth=0.6)
        axes[0].set_yticks(range(len(shown)), labels=names)
        axes[0].invert_yaxis()
        fig.suptitle(_plain(title))
        caption = f"{title}: {len(layers)} layer(s)"
        if len(layers) > len(shown):
            caption += f", the worst {len(shown)} drawn (report.json has all)"
        parts.append(_figure(f"sensitivity-{n}", fig, caption + "."))
    return "".join(parts)


# --- tables ----------------------------------------------------------------------------------


def _gates(report: Report) -> str:
    if not report.gates:
        return '<p class="note">No gates set.</p>'
    rows = []
    for g in report.gates:
        threshold, value = gate_cells(g)
        verdict = '<td class="pass">pass</td>' if g.passed else '<td class="fail">FAIL</td>'
        rows.append(
            f"<tr><td>{_e(g.name)}</td><td class='num'>{_e(threshold)}</td>"
            f"<td class='num'>{_e(value)}</td>{verdict}<td>{_e(g.detail)}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("gate", "threshold", "value", "result", "detail"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _variants(report: Report) -> str:
    if not report.variants:
        return ""
    rows = []
    for name, v in report.variants.items():
        scored = ", ".join(
            f"{b}: {fmt_metric(v.metric, e.accuracy)}"
            for b, e in v.backends.items()
            if e.accuracy is not None
        )
        rows.append([name, v.path, fmt_bytes(v.size_bytes), scored or "not scored"])
    return "<h3>Variants</h3>" + _table(["variant", "file", "size", v.metric], rows)


def _threads(report: Report) -> str:
    seen: dict[str, None] = {}
    for _, _, result in _models(report):
        for backend, entry in result.backends.items():
            for stats in entry.latency_ms.values():
                if stats.threads is not None:
                    source = f" ({stats.threads_source})" if stats.threads_source else ""
                    seen[f"{backend}: {stats.threads}{source}"] = None
    return ", ".join(seen) or "not recorded (nothing was timed)"


def _environment(report: Report) -> str:
    env = report.environment
    items = [
        f"CPU: {env.cpu} ({env.cores} cores)",
        f"instruction-set flags: {', '.join(env.cpu_flags) or 'none found'}",
        f"intra-op threads: {_threads(report)}",
        f"python {env.python}, torch {env.torch}, onnx {env.onnx}, onnxruntime {env.onnxruntime}",
        f"platform: {env.platform}",
    ]
    if env.distributed is not None:
        items.append(data_parallel_line(env.distributed))
    for name, status in env.backends.items():
        state = "available" if status.available else f"unavailable: {status.reason}"
        versions = ", ".join(f"{k} {v}" for k, v in status.versions.items())
        items.append(f"backend {name}: {state}" + (f" ({versions})" if versions else ""))
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _latency_note(report: Report) -> str:
    timed = any(e.latency_ms for _, _, r in _models(report) for e in r.backends.values())
    if not timed:
        return ""
    return (
        '<p class="note">Speedup is baseline p50 / compressed p50 with its 95 % interval; the '
        "models were timed in one process, alternating in blocks, each block's cold first run "
        "left out.</p>"
    )


def _warnings(report: Report) -> str:
    if not report.warnings:
        return ""
    items = "".join(f'<p class="warning">{_e(w)}</p>' for w in report.warnings)
    return f'<section id="warnings">{items}</section>'


def _auto(report: Report) -> str:
    parts = []
    for auto in auto_tables(report):
        parts.append(f"<h3>{_e(auto.title)}</h3>")
        parts.append(_table(auto.header, auto.rows, numeric=2))
        parts += [f'<p class="note">{_e(line)}</p>' for line in auto.lines]
    if not parts:
        return ""
    return '<section id="auto"><h2>Quantize mode: auto</h2>' + "".join(parts) + "</section>"


def _latency(report: Report) -> str:
    batches = latency_batches(report)
    if not batches or report.latency_profile is None:
        return ""
    parts = [
        '<section id="latency"><h2>Latency explained</h2>',
        f'<p class="note">{_e(report.latency_profile.note)}</p>',
    ]
    for batch in batches:
        assert batch.compressed is not None
        parts.append(f"<h3>Batch {batch.batch_size}</h3><p><strong>{_e(batch.advice)}</strong></p>")
        parts.append(
            _table(["op type", "baseline ms", "compressed ms", "share"], latency_rows(batch), 1)
        )
        if batch.causes:
            causes = "".join(f"<li>{_e(c.text)}; {_e(c.advice)}</li>" for c in batch.causes)
            parts.append(f"<ul>{causes}</ul>")
        nodes = [
            [n.node, n.op_type, f"{n.us / 1000:.3f}", f"{n.share * 100:.0f} %"]
            for n in batch.compressed.top_nodes[:5]
        ]
        parts.append(
            _table(["top node (as onnxruntime ran it)", "op type", "ms", "share"], nodes, 2)
        )
    return "".join(parts) + "</section>"


@register_renderer("html", "report.html")
def render_html(report: Report) -> str:
    import matplotlib

    name = str(report.recipe.get("name", ""))
    status = "passed" if report.status == "passed" else "gate_failed"
    status_text = "all gates passed" if status == "passed" else "a gate failed"
    with matplotlib.rc_context(
        {
            # Text stays text (small, searchable, drawn in the viewer's sans-serif) and ids
            # are salted with a constant, so the same report always gives the same file.
            "svg.fonttype": "none",
            "svg.hashsalt": "modelquant-report",
            "font.family": "sans-serif",
            "font.size": 9,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    ):
        accuracy_latency = _accuracy_latency(report)
        timeline = _timeline(report)
        sensitivity = _sensitivity(report)
    rounds = fallback_rows(report)
    stage_rows = [
        [
            str(i),
            s.name,
            f"{s.seconds:.2f}" + (" (cached)" if s.cached else ""),
            stage_notes(s.settings, s.details),
        ]
        for i, s in enumerate(report.stages, 1)
    ]
    body = [
        f"<header><h1>modelquant report: {_e(name)}</h1>",
        f'<p><span class="status {status}">{_e(status_text)}</span> · modelquant '
        f"{_e(report.modelquant_version)} · {_e(report.created)}</p></header>",
        _warnings(report),
        '<section id="summary"><h2>Baseline vs compressed</h2>',
        _table(["", "baseline", "compressed", "delta"], comparison_rows(report), numeric=1),
        _latency_note(report),
        _variants(report),
        "</section>",
        f'<section id="gates"><h2>Gates</h2>{_gates(report)}</section>',
        f'<section id="accuracy-latency"><h2>Accuracy vs latency</h2>{accuracy_latency}</section>',
        '<section id="stages"><h2>Stages</h2>',
        timeline,
        _table(["#", "stage", "seconds", "details"], stage_rows) if stage_rows else "",
        "</section>",
    ]
    steps = step_rows(report)
    if steps:
        body += [
            '<section id="steps"><h2>After each stage</h2>',
            '<p class="note">The model as each stage left it, scored on the evaluation data '
            "against the baseline (agreement: the same top-1 class, or for embeddings the same "
            "nearest neighbour).</p>",
            _table(STEP_HEADER, steps),
            "</section>",
        ]
    for title, layer_rows in transformer_tables(report):
        body += [
            f'<section class="transformer"><h3>{_e(title)}</h3>',
            _table(TRANSFORMER_HEADER, layer_rows),
            "</section>",
        ]
    if rounds:
        body += [
            '<section id="fallback"><h2>Accuracy-aware fallback</h2>',
            '<p class="note">Each round quantizes the model with the layers listed in higher '
            "precision and scores it on the validation data.</p>",
            _table(
                ["round", "layers in higher precision", "validation metric", "drop", "size"], rounds
            ),
            "</section>",
        ]
    body += [_auto(report), _latency(report)]
    if sensitivity:
        body.append(
            f'<section id="sensitivity"><h2>Per-layer sensitivity</h2>{sensitivity}</section>'
        )
    body += [
        f'<section id="environment"><h2>Environment</h2>{_environment(report)}</section>',
        '<section id="artifacts"><h2>Files</h2>',
        _table(["what", "file (in the output folder)"], list(report.artifacts.items())),
        "</section>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>modelquant report: {_e(name)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
