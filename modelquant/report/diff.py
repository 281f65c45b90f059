"""Comparing two reports (an old, stored baseline report and a new one): the metric, the size and
the latency of the compressed model, each against a threshold, for `report diff` and for the
baseline gates of `compress --baseline-report`.

What is judged, always on the compressed model (the baseline model's rows are informative):

- metric: the drop `old - new` of the task metric on the CPU (top-1 accuracy, or mean cosine to
  the report's own FP32 model), as a fraction like `gates.max_accuracy_drop` (0.01 = 1 point);
- size: the growth `new / old - 1` of the ONNX file, as a fraction (0.05 = 5 % larger);
- speedup, per backend and batch size: `deltas.speedup` = baseline p50 / compressed p50, measured
  within ONE run (the two models alternated in blocks), so a machine that is slower or busier
  slows both models and leaves it unchanged. A regression is called when the compressed model lost
  more than the threshold S of its relative speed *beyond both intervals*:
  `new ci95 high < old ci95 low * (1 - S)`; a lower speedup the intervals do not confirm is
  "within noise". This is the latency check that holds across machines (CI runners);
- latency (absolute p50), per backend and batch size, judged only when both reports were measured
  on the same CPU (model name and instruction-set flags) with the same thread count; otherwise
  shown as "not judged: different machines (see note)" and the speedup row decides. On the same
  machine a regression is called only when the new run is slower
  than the old by more than the threshold R *and* the 95 % intervals of the two medians say so:
  `new ci95 low > old ci95 high * (1 + R)`. Each run's interval comes from its own block
  bootstrap (see backends/bench.py), so two runs whose intervals overlap by more than R are not
  told apart: a median 8 % slower whose interval reaches back over the old one's is noise, not a
  regression. The interval's low end is never above the median, so the rule implies
  `new p50 > old p50 * (1 + R)` too. A slower median that the intervals do not confirm is shown
  as "within noise". Emulated backends (the QNN HTP on x86) are shown and never judged, neither
  their latency nor their speedup.

Each run's interval covers only the noise within that run. When the two reports were measured on
different CPUs or with different thread counts, a note says so (and `--json` carries it). The
baseline model is the control: when its file is unchanged but its latency moved by more than 5 %
beyond both intervals, a note says the machine's speed differed between the runs (a load that
changes between runs is in neither run's interval, so absolute latency may show the machine even
on one CPU). The speedup cancels a machine that is uniformly faster or slower, not a load that
slows the two models unequally: measured here, one run on the shared 2-core machine put the FP32
digits CNN at batch 32 at 8.6 ms against 2.8-3.0 ms in four later runs while its INT8 model stayed
at 0.9-1.0 ms (speedup 8.4x vs 3.1x). Speedup rows whose control moved say so in their detail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelquant.errors import UserError
from modelquant.report.model import Gate, LatencyStats, ModelResult, Report, Speedup

DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_MAX_LATENCY_REGRESSION = 0.10
DEFAULT_MAX_SIZE_GROWTH = 0.05
DEFAULT_MAX_SPEEDUP_LOSS = 0.10

Verdict = Literal["ok", "better", "worse", "within noise", "not compared", "not judged"]
DIFFERENT_MACHINES = "different machines (see note)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Thresholds(_Model):
    """What counts as worse; None: that check is shown but not judged."""

    max_accuracy_drop: float | None = Field(
        DEFAULT_MAX_ACCURACY_DROP,
        ge=0,
        description="Largest allowed drop of the compressed model's metric against the baseline "
        "report, as a fraction like gates.max_accuracy_drop (0.01 = 1 point; cosine: 0.01 of "
        "cosine).",
    )
    max_latency_regression: float | None = Field(
        DEFAULT_MAX_LATENCY_REGRESSION,
        ge=0,
        description="Largest allowed slowdown of the compressed model's absolute p50 per backend "
        "and batch size, as a fraction (0.10 = 10 % slower), judged on the 95 % intervals (new "
        "low > old high * (1 + R) is a regression) and only when both reports were measured on "
        "the same CPU with the same thread count.",
    )
    max_speedup_loss: float | None = Field(
        DEFAULT_MAX_SPEEDUP_LOSS,
        ge=0,
        le=1,
        description="Largest allowed loss of the compressed model's speedup over its baseline "
        "model (measured within each run, so comparable across machines) per backend and batch "
        "size, as a fraction (0.10 = 10 % lower), judged on the 95 % intervals: new high < old "
        "low * (1 - S) is a regression.",
    )
    max_size_growth: float | None = Field(
        DEFAULT_MAX_SIZE_GROWTH,
        ge=0,
        description="Largest allowed growth of the compressed ONNX file against the baseline "
        "report, as a fraction (0.05 = 5 % larger).",
    )


class DiffRow(_Model):
    """One compared figure."""

    check: Literal["metric", "size", "latency", "speedup"] = Field(description="What is compared.")
    model: Literal["compressed", "baseline"] = Field(
        description="Which model of the two reports (only the compressed one is judged)."
    )
    backend: str | None = Field(None, description="Latency and speedup: the backend.")
    batch_size: int | None = Field(None, description="Latency and speedup: the batch size.")
    old: float | None = Field(
        None, description="The old report's value (latency: p50 ms; speedup: times faster)."
    )
    new: float | None = Field(
        None, description="The new report's value (latency: p50 ms; speedup: times faster)."
    )
    old_ci95: tuple[float, float] | None = Field(
        None, description="Latency and speedup: the old 95 % interval."
    )
    new_ci95: tuple[float, float] | None = Field(
        None, description="Latency and speedup: the new 95 % interval."
    )
    delta: float | None = Field(
        None,
        description="metric: new - old (fraction); size, latency and speedup: new / old - 1 "
        "(fraction).",
    )
    threshold: float | None = Field(None, description="The threshold this row is judged on.")
    value: float | None = Field(
        None,
        description="What is compared with the threshold: the metric's drop, the size growth, "
        "latency's new low / old high - 1 (the slowdown the intervals confirm), or the "
        "speedup's 1 - new high / old low (the loss the intervals confirm).",
    )
    verdict: Verdict = Field(
        description="ok, better, worse, within noise, not compared (missing on a side), or not "
        "judged (absolute latency from different machines: the speedup row decides)."
    )
    gated: bool = Field(description="True when a worse verdict fails the comparison.")
    emulated: bool = Field(False, description="Latency on an emulated backend (never judged).")
    detail: str = Field("", description="Why, in words (skips, emulation, threads).")

    @property
    def gate_name(self) -> str:
        """The gate this row becomes under `compress --baseline-report`."""
        if self.check == "metric":
            return "baseline_accuracy_drop"
        if self.check == "size":
            return "baseline_size_growth"
        bs = "" if self.batch_size is None else f",bs={self.batch_size}"
        if self.check == "speedup":
            return f"baseline_speedup_loss[{self.backend}{bs}]"
        return f"baseline_latency_regression[{self.backend}{bs}]"

    @property
    def failed(self) -> bool:
        return self.gated and self.verdict == "worse"


class Machines(_Model):
    """Where the two reports were measured."""

    old_cpu: str
    new_cpu: str
    old_cpu_flags: list[str]
    new_cpu_flags: list[str]
    same_cpu: bool = Field(description="Same CPU model name and the same instruction-set flags.")
    threads: list[str] = Field(
        default_factory=list,
        description="Each backend/batch whose thread counts differ: 'cpu bs=1: 1 -> 2'.",
    )


class ReportDiff(_Model):
    """The comparison of two reports: `report diff --json` prints this."""

    old: str = Field(description="The old (baseline) report.")
    new: str = Field(description="The new report.")
    metric: str = Field(description="The task metric both reports measure.")
    thresholds: Thresholds
    rows: list[DiffRow]
    machines: Machines
    notes: list[str] = Field(default_factory=list, description="What the reader should know.")
    failed: list[str] = Field(
        default_factory=list, description="Names of the crossed thresholds (as gate names)."
    )
    passed: bool


def load_report(path: Path, text: str | None = None) -> Report:
    """A report.json (or a run folder holding one); any other file is bad input naming the fix.
    `text`: the file's content when it was read already (it may have been removed since)."""
    fix = "give the report.json that `modelquant compress` wrote (or its output folder)"
    if text is None and path.is_dir():
        if not (path / "report.json").is_file():
            raise UserError(f"{path} is a folder without a report.json; {fix}")
        path = path / "report.json"
    if text is None and not path.is_file():
        raise UserError(f"report not found: {path}; {fix}")
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise UserError(f"cannot read {path} as a report ({reason}); {fix}") from None
    try:
        return Report.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise UserError(
            f"{path} is not a modelquant report ({where}: {first['msg'].lower()}); {fix}"
        ) from None


def _metric_rows(old: Report, new: Report, t: Thresholds) -> list[DiffRow]:
    # The baseline is the cosine's reference (always 1): no row of its own for embeddings.
    roles = ("compressed",) if old.baseline.metric == "cosine" else ("compressed", "baseline")
    return _model_rows(
        "metric",
        old,
        new,
        roles,
        t.max_accuracy_drop,
        lambda r: r.accuracy,
        lambda o, n: (n - o, o - n),  # (delta, drop: what grows when it gets worse)
    )


def _size_rows(old: Report, new: Report, t: Thresholds) -> list[DiffRow]:
    def growth(o: float, n: float) -> tuple[float, float]:
        g = n / o - 1 if o else 0.0
        return g, g

    return _model_rows(
        "size",
        old,
        new,
        ("compressed", "baseline"),
        t.max_size_growth,
        lambda r: float(r.size_bytes),
        growth,
    )


def _model_rows(
    check: Literal["metric", "size"],
    old: Report,
    new: Report,
    roles: tuple[str, ...],
    limit: float | None,
    value_of: Callable[[ModelResult], float],
    change: Callable[[float, float], tuple[float, float]],
) -> list[DiffRow]:
    """One row per model role of a figure of the whole model (metric, size): `change(old, new)`
    gives (delta, how much worse). The compressed model is judged against `limit` when set; the
    baseline model is shown, not judged; with no limit any worsening is "worse"."""
    rows = []
    for role in roles:
        o = value_of(getattr(old, role))
        n = value_of(getattr(new, role))
        delta, worse = change(o, n)
        gated = role == "compressed" and limit is not None
        bar = limit if gated and limit is not None else 0.0
        if worse > bar + 1e-9:
            verdict: Verdict = "worse"
        elif worse < -1e-9:
            verdict = "better"
        else:
            verdict = "ok"
        rows.append(
            DiffRow(
                check=check,
                model=role,
                old=o,
                new=n,
                delta=delta,
                threshold=limit if gated else None,
                value=worse,
                verdict=verdict,
                gated=gated,
                detail="" if gated else "not judged: the baseline model",
            )
        )
    return rows


def latency_verdict(old: LatencyStats, new: LatencyStats, limit: float) -> tuple[Verdict, float]:
    """The noise rule: (verdict, slowdown the intervals confirm = new low / old high - 1)."""
    confirmed = new.ci95[0] / old.ci95[1] - 1 if old.ci95[1] > 0 else 0.0
    if confirmed > limit:
        return "worse", confirmed
    if new.p50 > old.p50 * (1 + limit):
        return "within noise", confirmed
    if new.ci95[1] < old.ci95[0]:
        return "better", confirmed
    return "ok", confirmed


def _why_missing(result: ModelResult, backend: str, bs: str, which: str) -> str | None:
    entry = result.backends.get(backend)
    if entry is None:
        return f"{which} report did not evaluate {backend}"
    if entry.skipped:
        return f"{which} report skipped {backend}: {entry.skipped}"
    if bs not in entry.latency_ms:
        return f"{which} report did not time batch {bs}: {entry.untimed.get(bs, 'not timed')}"
    return None


def _latency_rows(old: Report, new: Report, t: Thresholds, same_cpu: bool) -> list[DiffRow]:
    rows = []
    for role in ("compressed", "baseline"):
        o: ModelResult = getattr(old, role)
        n: ModelResult = getattr(new, role)
        backends = list(dict.fromkeys([*o.backends, *n.backends]))
        for backend in backends:
            sizes: set[str] = set()
            for result in (o, n):
                entry = result.backends.get(backend)
                if entry is not None:
                    sizes.update(entry.latency_ms, entry.untimed)
            if not sizes:  # skipped or never timed on either side: one row says why
                sizes = {""}
            for bs in sorted(sizes, key=lambda s: int(s) if s else 0):
                rows.append(_latency_row(role, backend, bs, o, n, t, same_cpu))
    return rows


def _latency_row(
    role: str,
    backend: str,
    bs: str,
    o: ModelResult,
    n: ModelResult,
    t: Thresholds,
    same_cpu: bool,
) -> DiffRow:
    emulated = any(
        entry.emulated for entry in (o.backends.get(backend), n.backends.get(backend)) if entry
    )
    base: dict[str, Any] = {
        "check": "latency",
        "model": role,
        "backend": backend,
        "emulated": emulated,
    }
    if bs:
        base["batch_size"] = int(bs)
    missing = [
        why
        for why in (
            _why_missing(o, backend, bs, "the old"),
            _why_missing(n, backend, bs, "the new"),
        )
        if why
    ]
    if missing:
        had = o.backends.get(backend)
        old_stats = had.latency_ms.get(bs) if had is not None else None
        if old_stats is not None:
            base.update(old=old_stats.p50, old_ci95=old_stats.ci95)
        return DiffRow.model_validate(
            {**base, "verdict": "not compared", "gated": False, "detail": "; ".join(missing)}
        )
    old_stats = o.backends[backend].latency_ms[bs]
    new_stats = n.backends[backend].latency_ms[bs]
    # Absolute latency is comparable only on one machine: another CPU, or the same one with
    # other threads, is not like for like (the speedup row, measured within each run, decides).
    same_machine = same_cpu and old_stats.threads == new_stats.threads
    judged = role == "compressed" and not emulated and t.max_latency_regression is not None
    gated = judged and same_machine
    limit = t.max_latency_regression if gated else None
    verdict, confirmed = latency_verdict(old_stats, new_stats, limit or 0.0)
    notes = []
    if emulated:
        notes.append("emulated: never judged")
    elif role != "compressed":
        notes.append("not judged: the baseline model")
    elif not judged:
        notes.append("not judged: no threshold")
    elif not gated:
        verdict = "not judged"
        notes.append(DIFFERENT_MACHINES)
    if old_stats.threads != new_stats.threads:
        notes.append(f"threads {old_stats.threads} -> {new_stats.threads}")
    return DiffRow.model_validate(
        {
            **base,
            "old": old_stats.p50,
            "new": new_stats.p50,
            "old_ci95": old_stats.ci95,
            "new_ci95": new_stats.ci95,
            "delta": new_stats.p50 / old_stats.p50 - 1 if old_stats.p50 > 0 else None,
            "threshold": limit,
            "value": confirmed,
            "verdict": verdict,
            "gated": gated,
            "detail": "; ".join(notes),
        }
    )


def speedup_verdict(old: Speedup, new: Speedup, limit: float) -> tuple[Verdict, float]:
    """The noise rule for speedups: (verdict, loss the intervals confirm = 1 - new high / old
    low); worse when that loss exceeds `limit`."""
    confirmed = 1 - new.ci95[1] / old.ci95[0] if old.ci95[0] > 0 else 0.0
    if confirmed > limit:
        return "worse", confirmed
    if new.value < old.value * (1 - limit):
        return "within noise", confirmed
    if new.ci95[0] > old.ci95[1]:
        return "better", confirmed
    return "ok", confirmed


def _why_no_speedup(report: Report, backend: str, bs: str, which: str) -> str | None:
    if bs in report.deltas.speedup.get(backend, {}):
        return None
    for result in (report.compressed, report.baseline):
        why = _why_missing(result, backend, bs, which)
        if why:
            return why
    return f"{which} report has no {backend} speedup at batch {bs}"


def _speedup_rows(old: Report, new: Report, t: Thresholds) -> list[DiffRow]:
    """One row per backend and batch size with a speedup in either report (the compressed
    model's, over the same report's baseline model)."""
    rows = []
    backends = list(dict.fromkeys([*old.deltas.speedup, *new.deltas.speedup]))
    for backend in backends:
        sizes = {*old.deltas.speedup.get(backend, {}), *new.deltas.speedup.get(backend, {})}
        for bs in sorted(sizes, key=int):
            entries = [
                result.backends.get(backend)
                for report in (old, new)
                for result in (report.compressed, report.baseline)
            ]
            emulated = any(entry.emulated for entry in entries if entry is not None)
            base: dict[str, Any] = {
                "check": "speedup",
                "model": "compressed",
                "backend": backend,
                "batch_size": int(bs),
                "emulated": emulated,
            }
            o = old.deltas.speedup.get(backend, {}).get(bs)
            n = new.deltas.speedup.get(backend, {}).get(bs)
            if o is None or n is None:
                missing = [
                    why
                    for why in (
                        _why_no_speedup(old, backend, bs, "the old"),
                        _why_no_speedup(new, backend, bs, "the new"),
                    )
                    if why
                ]
                if o is not None:
                    base.update(old=o.value, old_ci95=o.ci95)
                rows.append(
                    DiffRow.model_validate(
                        {
                            **base,
                            "verdict": "not compared",
                            "gated": False,
                            "detail": "; ".join(missing),
                        }
                    )
                )
                continue
            gated = not emulated and t.max_speedup_loss is not None
            limit = t.max_speedup_loss if gated else None
            verdict, confirmed = speedup_verdict(o, n, limit or 0.0)
            detail = ""
            if emulated:
                detail = "emulated: never judged"
            elif not gated:
                detail = "not judged: no threshold"
            rows.append(
                DiffRow.model_validate(
                    {
                        **base,
                        "old": o.value,
                        "new": n.value,
                        "old_ci95": o.ci95,
                        "new_ci95": n.ci95,
                        "delta": n.value / o.value - 1 if o.value > 0 else None,
                        "threshold": limit,
                        "value": confirmed,
                        "verdict": verdict,
                        "gated": gated,
                        "detail": detail,
                    }
                )
            )
    return rows


def _machines(old: Report, new: Report) -> Machines:
    threads = []
    for role in ("compressed", "baseline"):
        o: ModelResult = getattr(old, role)
        n: ModelResult = getattr(new, role)
        for backend, entry in o.backends.items():
            other = n.backends.get(backend)
            if other is None:
                continue
            for bs, stats in entry.latency_ms.items():
                new_stats = other.latency_ms.get(bs)
                if new_stats is not None and new_stats.threads != stats.threads:
                    line = f"{backend} bs={bs}: {stats.threads} -> {new_stats.threads}"
                    if line not in threads:
                        threads.append(line)
    oe, ne = old.environment, new.environment
    return Machines(
        old_cpu=oe.cpu,
        new_cpu=ne.cpu,
        old_cpu_flags=oe.cpu_flags,
        new_cpu_flags=ne.cpu_flags,
        same_cpu=oe.cpu == ne.cpu and sorted(oe.cpu_flags) == sorted(ne.cpu_flags),
        threads=threads,
    )


def _moved_controls(old: Report, new: Report, rows: list[DiffRow]) -> list[DiffRow]:
    """The baseline model is the control: its latency rows that moved by more than 5 % beyond
    both intervals while its file stayed the same (the machine, not a model, changed)."""
    if old.baseline.size_bytes != new.baseline.size_bytes:
        return []
    return [
        r
        for r in rows
        if r.model == "baseline"
        and r.check == "latency"
        and r.delta is not None
        and r.old_ci95 is not None
        and r.new_ci95 is not None
        and (r.new_ci95[0] > r.old_ci95[1] * 1.05 or r.new_ci95[1] < r.old_ci95[0] / 1.05)
    ]


def _mark_moved_speedups(rows: list[DiffRow], moved: list[DiffRow]) -> None:
    """A speedup is baseline p50 / compressed p50: when the control's own p50 moved, say so on
    that speedup row (a load that slows the two models unequally moves the ratio too)."""
    by_key = {(r.backend, r.batch_size): r for r in moved}
    for row in rows:
        control = by_key.get((row.backend, row.batch_size))
        if row.check == "speedup" and control is not None and control.delta is not None:
            why = f"the baseline model's own p50 moved {control.delta:+.1%} (see note)"
            row.detail = f"{row.detail}; {why}" if row.detail else why


def _drift(moved: list[DiffRow]) -> list[str]:
    """One note when the control moved: the machine ran at another speed between the runs."""
    if not moved:
        return []
    where = "; ".join(f"{r.backend} batch {r.batch_size}: {r.delta:+.1%}" for r in moved)
    return [
        f"the baseline model's file is the same but its latency moved ({where}): the machine "
        "ran at another speed in the two runs, so the compressed model's latency rows may show "
        "the machine, not the model; the speedup rows at those batch sizes too, when the load "
        "slowed the two models unequally (a speedup is the baseline model's p50 over the "
        "compressed model's)"
    ]


def _notes(old: Report, new: Report, machines: Machines, rows: list[DiffRow]) -> list[str]:
    notes = []
    if not machines.same_cpu:
        only_old = sorted(set(machines.old_cpu_flags) - set(machines.new_cpu_flags))
        only_new = sorted(set(machines.new_cpu_flags) - set(machines.old_cpu_flags))
        flags = []
        if only_old:
            flags.append(f"only the old has {', '.join(only_old)}")
        if only_new:
            flags.append(f"only the new has {', '.join(only_new)}")
        cpus = (
            f"'{machines.old_cpu}' vs '{machines.new_cpu}'"
            if machines.old_cpu != machines.new_cpu
            else f"both '{machines.old_cpu}'"
        )
        notes.append(
            f"measured on different CPUs ({cpus}{'; ' if flags else ''}{'; '.join(flags)}): "
            f"absolute latency is the machine's as much as the model's, so its rows are not "
            "judged; the speedup rows (compressed vs baseline model within each run) decide"
        )
    if machines.threads:
        notes.append(
            f"measured with different thread counts ({'; '.join(machines.threads)}): absolute "
            "latency is not like for like, so those rows are not judged; the speedup rows decide"
        )
    old_cpu, new_cpu = old.compressed.backends.get("cpu"), new.compressed.backends.get("cpu")
    old_samples = old_cpu.samples if old_cpu is not None else None
    new_samples = new_cpu.samples if new_cpu is not None else None
    if old_samples and new_samples and old_samples != new_samples:
        notes.append(
            f"the metric was scored on {old_samples} samples in the old report and "
            f"{new_samples} in the new"
        )
    notes += _drift(_moved_controls(old, new, rows))
    if old.status != "passed":
        notes.append("the old report's own gates failed")
    return notes


def check_same_metric(old_metric: str, new_metric: str) -> None:
    """Reports of different metrics cannot be compared (bad input)."""
    if old_metric != new_metric:
        raise UserError(
            f"the two reports measure different metrics (old: {old_metric}, new: {new_metric}); "
            "compare reports of recipes with the same task"
        )


def diff_reports(
    old: Report,
    new: Report,
    thresholds: Thresholds | None = None,
    old_name: str = "old",
    new_name: str = "new",
) -> ReportDiff:
    """Compare `new` with `old` (see the module docstring for the rules)."""
    t = thresholds or Thresholds()
    check_same_metric(old.compressed.metric, new.compressed.metric)
    machines = _machines(old, new)
    rows = [
        *_metric_rows(old, new, t),
        *_size_rows(old, new, t),
        *_speedup_rows(old, new, t),
        *_latency_rows(old, new, t, machines.same_cpu),
    ]
    _mark_moved_speedups(rows, _moved_controls(old, new, rows))
    failed = [r.gate_name for r in rows if r.failed]
    return ReportDiff(
        old=old_name,
        new=new_name,
        metric=old.compressed.metric,
        thresholds=t,
        rows=rows,
        machines=machines,
        notes=_notes(old, new, machines, rows),
        failed=failed,
        passed=not failed,
    )


# ---------------------------------------------------------------- as gates of a run


def _fmt_interval(ci: tuple[float, float] | None) -> str:
    from modelquant.report.rows import fmt_ms

    return f"[{fmt_ms(ci[0])}, {fmt_ms(ci[1])}]" if ci else "?"


def _fmt_speedup_interval(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "?"


def row_detail(row: DiffRow, metric: str) -> str:
    """One line saying what was compared (the numbers), for gates and failure messages."""
    from modelquant.report.rows import fmt_metric, fmt_ms

    if row.check == "metric":
        assert row.old is not None and row.new is not None
        return f"{metric} {fmt_metric(metric, row.old)} -> {fmt_metric(metric, row.new)} (cpu)"
    if row.check == "size":
        assert row.old is not None and row.new is not None
        return f"{row.old:,.0f} -> {row.new:,.0f} bytes"
    if row.verdict == "not compared":
        return f"not compared: {row.detail}"
    assert row.old is not None and row.new is not None
    if row.check == "speedup":
        text = (
            f"speedup {row.old:.2f}x -> {row.new:.2f}x, 95% intervals "
            f"{_fmt_speedup_interval(row.old_ci95)} -> {_fmt_speedup_interval(row.new_ci95)} "
            "(judged: new high / old low)"
        )
        if row.verdict == "within noise":
            text += "; lower speedup within the measured noise"
        return text + (f"; {row.detail}" if row.detail else "")
    if row.verdict == "not judged":
        return (
            f"not judged: p50 {fmt_ms(row.old)} -> {fmt_ms(row.new)} ms measured on different "
            "machines (CPU or thread count); the speedup gates decide"
        )
    text = (
        f"p50 {fmt_ms(row.old)} -> {fmt_ms(row.new)} ms, 95% intervals "
        f"{_fmt_interval(row.old_ci95)} -> {_fmt_interval(row.new_ci95)} (judged: new low / "
        "old high)"
    )
    if row.verdict == "within noise":
        text += "; slower median within the measured noise"
    return text + (f"; {row.detail}" if row.detail else "")


def gates_from_diff(diff: ReportDiff) -> list[Gate]:
    """The judged rows as the run's gates (`compress --baseline-report`): accuracy drop as a
    fraction; size and latency as ratios new / old against 1 + the threshold (at most); speedup
    as the ratio new high / old low against 1 - the threshold (at least)."""
    t = diff.thresholds
    limits = {"latency": t.max_latency_regression, "speedup": t.max_speedup_loss}
    gates = []
    for row in diff.rows:
        if row.model != "compressed":
            continue
        if row.check in limits and row.verdict in ("not compared", "not judged"):
            # Shown as a passed gate (JUnit: skipped) when the old report had measured it:
            # absolute latency across machines, or a figure the new report lacks.
            limit = limits[row.check]
            if row.emulated or row.old is None or limit is None:
                continue
            gates.append(
                Gate(
                    name=row.gate_name,
                    threshold=1 - limit if row.check == "speedup" else 1 + limit,
                    value=None,
                    passed=True,
                    detail=row_detail(row, diff.metric),
                    unit="ratio",
                )
            )
            continue
        if not row.gated or row.threshold is None or row.value is None:
            continue
        if row.check == "metric":
            threshold, value, unit = row.threshold, row.value, "fraction"
        elif row.check == "speedup":
            threshold, value, unit = 1 - row.threshold, 1 - row.value, "ratio"
        else:
            threshold, value, unit = 1 + row.threshold, 1 + row.value, "ratio"
        gates.append(
            Gate(
                name=row.gate_name,
                threshold=threshold,
                value=value,
                passed=not row.failed,
                detail=f"{row_detail(row, diff.metric)}; against {diff.old}",
                unit=unit,
            )
        )
    return gates


# ---------------------------------------------------------------- for people


def _fmt_value(
    row: DiffRow, metric: str, value: float | None, ci: tuple[float, float] | None
) -> str:
    from modelquant.report.rows import fmt_bytes, fmt_metric, fmt_ms

    if value is None:
        return ""
    if row.check == "metric":
        return fmt_metric(metric, value)
    if row.check == "size":
        return fmt_bytes(int(value))
    if row.check == "speedup":
        return f"{value:.2f}x {_fmt_speedup_interval(ci)}"
    return f"{fmt_ms(value)} ms {_fmt_interval(ci)}"


def _fmt_delta(row: DiffRow, metric: str) -> str:
    from modelquant.report.rows import fmt_metric_delta

    if row.delta is None:
        return ""
    if row.check == "metric":
        return fmt_metric_delta(metric, row.delta * 100)
    return f"{row.delta:+.1%}"


def _fmt_threshold(row: DiffRow, metric: str) -> str:
    from modelquant.report.rows import fmt_points

    if row.threshold is None:
        return ""
    if row.check == "metric":
        limit = f"{row.threshold:.4f}" if metric == "cosine" else fmt_points(row.threshold)
        return f"drop <= {limit}"
    if row.check == "size":
        return f"growth <= {row.threshold:.0%}"
    if row.check == "speedup":
        return f"loss <= {row.threshold:.0%}"
    return f"slower <= {row.threshold:.0%}"


def row_label(row: DiffRow, metric: str) -> str:
    if row.check == "metric":
        what = f"{metric} (cpu)"
    elif row.check == "size":
        what = "ONNX size"
    else:
        bs = "" if row.batch_size is None else f", batch {row.batch_size}"
        figure = "speedup" if row.check == "speedup" else "p50"
        what = f"{row.backend}{' (emulated)' if row.emulated else ''} {figure}{bs}"
    return f"{what}, {row.model}"


def verdict_text(row: DiffRow) -> str:
    if row.verdict in ("not compared", "not judged"):
        return f"{row.verdict}: {row.detail}"
    if row.verdict == "worse":
        return "REGRESSION" if row.gated else "worse (not judged)"
    return row.verdict


def failure_lines(diff: ReportDiff) -> list[str]:
    """One line per crossed threshold, naming the metric and the numbers."""
    return [
        f"{row_label(row, diff.metric)}: {_fmt_delta(row, diff.metric)} crosses "
        f"{_fmt_threshold(row, diff.metric)} ({row_detail(row, diff.metric)})"
        for row in diff.rows
        if row.failed
    ]


def render_diff(diff: ReportDiff, console: Any) -> None:
    """The comparison as a rich table, then the notes."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{diff.old} -> {diff.new}", title_justify="left")
    for col in ("", "old", "new", "delta", "threshold", "verdict"):
        table.add_column(col, justify="right" if col in ("old", "new", "delta") else "left")
    styles = {"worse": "red", "better": "green", "within noise": "yellow", "ok": "green"}
    for row in diff.rows:
        style = styles.get(row.verdict, "dim") if row.gated or row.verdict != "worse" else ""
        verdict = escape(verdict_text(row))
        shown = row.verdict not in ("not compared", "not judged")
        detail = f" ({escape(row.detail)})" if row.detail and shown else ""
        if row.model == "baseline":
            detail = " (informative)"
        table.add_row(
            escape(row_label(row, diff.metric)),
            escape(_fmt_value(row, diff.metric, row.old, row.old_ci95)),
            escape(_fmt_value(row, diff.metric, row.new, row.new_ci95)),
            escape(_fmt_delta(row, diff.metric)),
            escape(_fmt_threshold(row, diff.metric)),
            (f"[{style}]{verdict}[/]" if style else verdict) + detail,
        )
    console.print(table)
    console.print(
        "Speedup (compressed vs baseline model, measured within each run): a regression needs "
        "the new interval's high end below the old one's low end times (1 - threshold). "
        "Latency (absolute, judged on the same CPU and thread count only): a regression needs "
        "the new interval's low end above the old one's high end times (1 + threshold). A "
        "change inside the measured noise is not one.",
        highlight=False,
    )
    for note in diff.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
