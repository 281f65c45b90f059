"""The `modelquant` command line: parses flags, runs the pipeline, renders, picks the exit code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperArgument, TyperGroup

from modelquant import __version__, progress
from modelquant.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STAGE_FAILED,
    EXIT_TERMINATED,
    GateFailed,
    ModelquantError,
    Terminated,
    UserError,
    current_step,
    describe_step,
    reset_step,
    step,
)


def _plain_metavars(params: list[Any]) -> None:
    """Help without Python types: flags (`--json`, `--help`) show no `<bool>`, lists show their
    element type (`<path>`) rather than `<list[Path]>`."""
    for param in params:
        if param is None or getattr(param, "metavar", "") is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        desc = getattr(param, "type_descriptor", None)
        if desc is not None and getattr(desc, "is_list", False) and hasattr(param, "_bare_type"):
            (element,) = typing.get_args(desc.annotation) or (str,)
            label = f"<{param._bare_type(element).lower()}>"
            if isinstance(param, TyperArgument):  # its name already ends in "..."

                def shown(ctx: Any, label: str = label) -> str:
                    return label

                param.display_type_rich = shown  # type: ignore[method-assign]
            else:
                param.metavar = f"{label}..."


class _Group(TyperGroup):
    """The command groups, with plain metavars in every `--help`."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, TyperGroup):
            _plain_metavars([*command.params, command.get_help_option(ctx)])
        return command

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        _plain_metavars(params)
        return params


app = typer.Typer(
    cls=_Group,
    help="Compress a trained model with one recipe (prune, distill, quantize, export) and measure "
    "accuracy, latency and size against the original.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(
    cls=_Group,
    help="List, show, validate recipes; print the recipe JSON Schema.",
    no_args_is_help=True,
)
app.add_typer(recipes_app, name="recipes")

# Lines read by programs and CI logs (a pipe, a file, `CI` set) must not wrap at rich's default
# 80 columns; an explicit COLUMNS still wins, and a terminal keeps its own width.
WIDE = 200


def _width(stream: TextIO) -> int | None:
    if "COLUMNS" in os.environ:
        return None
    isatty = getattr(stream, "isatty", lambda: False)
    return WIDE if os.environ.get("CI") or not isatty() else None


# With `CI` set, no colour or other escape codes even where the CI log claims to be a terminal.
_COLOR: typing.Any = None if progress.ci() else "auto"
out = Console(width=_width(sys.stdout), color_system=_COLOR)
err = Console(stderr=True, width=_width(sys.stderr), color_system=_COLOR)


def _recipe_path(value: Path) -> Path:
    """A recipe file as given, or else the file of that name in ./recipes or the bundled ones."""
    if value.exists():
        return value
    try:
        return _find_recipe(str(value))
    except UserError:
        return value  # the command's own "recipe file not found" names it


RecipeArg = Annotated[
    Path,
    typer.Argument(
        help="Recipe YAML file, or the name of a bundled recipe (see `recipes list`).",
        show_default=False,
        callback=_recipe_path,
        metavar="RECIPE",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe field: key.path=value (repeatable).",
        metavar="KEY=VALUE",
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.", metavar="DIR")]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", help="Show tracebacks of internal errors (exit codes stay the same)."),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Reuse the finished stages in the output folder whose content key matches (said on "
        "the console), also from another recipe's run there; the rest run.",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Overwrite an output folder that holds another recipe's run."),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print only the final line and errors."),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        help="Append every progress line, with a timestamp, to this file (also with --quiet).",
        metavar="FILE",
    ),
]


BaselineReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline-report",
        help="A report.json of an earlier run (or its folder) to compare with: the compressed "
        "model's metric, size, speedup and latency become gates (baseline_accuracy_drop, "
        "baseline_size_growth, baseline_speedup_loss and, on the same CPU and thread count "
        "only, baseline_latency_regression per backend and batch); thresholds in the recipe's "
        "gates.baseline or --set gates.baseline.max_speedup_loss=0.2.",
        metavar="OLD.json",
    ),
]


def _hold_report(path: Path | None) -> str | None:
    """The text of a report file (or a folder's report.json), or None when it cannot be read
    (loading it later says why)."""
    if path is None:
        return None
    try:
        return (path / "report.json" if path.is_dir() else path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _baseline_report(path: Path | None, text: str | None):  # type: ignore[no-untyped-def]
    if path is None:
        return None
    from modelquant.report.diff import load_report

    with step("reading the baseline report"):
        return load_report(path, text)


def _check_baseline_metric(old: Any, spec: Any) -> None:
    """A baseline report of another metric is refused before anything runs."""
    from modelquant.report.diff import check_same_metric
    from modelquant.tasks import get_task

    check_same_metric(old.compressed.metric, get_task(spec.metric_task).metric.name)


def _print_version() -> None:
    from importlib import metadata

    out.print(f"modelquant {__version__}", highlight=False)
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-qnn", "onnxruntime-gpu"):
        try:
            out.print(f"{dist} {metadata.version(dist)}", highlight=False)
        except metadata.PackageNotFoundError:
            pass


def _version_flag(value: bool) -> None:
    if value:
        _print_version()
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_flag,
            is_eager=True,
            help="Print the versions of modelquant and the libraries it drives, then exit.",
        ),
    ] = False,
) -> None:
    pass


def _progress(message: str) -> None:
    """A progress line on stderr (stdout stays clean for --json) through the command's reporter:
    dim on a terminal, plain in CI or a pipe, none with --quiet, always in --log-file."""
    progress.current().line(message)


def _say(markup: str) -> None:
    """A line the user must see (the final line, an error) on stderr, also in --log-file."""
    from rich.text import Text

    err.print(markup, highlight=False, soft_wrap=True)
    progress.current().record(Text.from_markup(markup).plain)


SIGNAL_GRACE_S = 5.0
"""A second Ctrl-C (or SIGTERM) this soon after the first is ignored, so that the cleanup the
first one started (removing partial files) finishes; a later one exits at once."""


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM `Terminated` where they land (so both unwind
    through the same cleanup); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []

    def handle(signum: int, frame: object) -> None:
        code = EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED
        if not first:
            first.append(time.monotonic())
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if time.monotonic() - first[0] >= SIGNAL_GRACE_S:
            os._exit(code)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run_guarded(  # type: ignore[no-untyped-def]
    fn,
    debug: bool,
    *,
    quiet: bool = False,
    log_file: Path | None = None,
    resume_hint: bool = False,
) -> None:
    """Run a command's work; turn every way it can end into the exit-code contract.

    Only `GateFailed` exits 1. Bad input exits 2. Ctrl-C exits 130 and SIGTERM 143, with one line
    naming the step (and, with `resume_hint`, how to continue). Anything else, expected
    (`StageError`) or not (a bug, a library raising something new), exits 3 with one line naming
    the step it happened in; `--debug` shows the traceback instead. Progress goes through a
    reporter (`modelquant.progress`) made for `quiet` and `log_file`.
    """
    from modelquant import distributed
    from modelquant.pipeline.artifacts import process_rank

    if process_rank() != 0:  # under torchrun the console and the log file are rank 0's
        quiet, log_file = True, None
    reset_step()
    with _signals(), contextlib.ExitStack() as stack:
        code, line, exited = EXIT_OK, "", False
        error: BaseException | None = None
        try:
            try:
                mode = progress.choose_mode(quiet, sys.stderr)
                stack.enter_context(progress.reporting(progress.Reporter(err, mode, log_file)))
                fn()
            except typer.Exit as exc:
                code, exited = exc.exit_code, True
            except ModelquantError as exc:
                if debug:
                    raise
                code, line, error = exc.exit_code, f"[red]{exc.label}:[/] {escape(str(exc))}", exc
            except KeyboardInterrupt as exc:
                if debug:
                    raise
                word = "terminated" if isinstance(exc, Terminated) else "interrupted"
                hint = "; rerun with --resume to continue" if resume_hint else ""
                line = f"[red]{word}[/] during {escape(describe_step(current_step()))}{hint}"
                code = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
                error = exc
            except Exception as exc:
                if debug:
                    raise
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                line = (
                    f"[red]internal error[/] during {escape(current_step())}: "
                    f"{type(exc).__name__}: {escape(first)} (rerun with --debug for the traceback)"
                )
                code, error = EXIT_STAGE_FAILED, exc
            # Under torchrun every rank ends with rank 0's code; a failure names its rank.
            plain = Text.from_markup(line).plain if line else None
            code, said = distributed.conclude(code, plain, error)
            if said != plain:
                line = escape(said) if said else ""
            elif line and process_rank() != 0:  # failed before it joined the others
                line = f"rank {process_rank()}: {line}"
            if line:
                _say(line)
            if code != EXIT_OK or exited:
                raise typer.Exit(code) from None
        finally:  # --debug re-raised: the other ranks still learn that this one stopped
            distributed.conclude(EXIT_STAGE_FAILED, f"internal error during {current_step()}", None)


def _load(recipe: Path, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from modelquant.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


@app.command()
def compress(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report JSON to stdout.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate recipe, files and data; print the plan.")
    ] = False,
    baseline_report: BaselineReportOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    log_file: LogFileOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run a recipe: stages, then baseline vs compressed on each backend, then gates.

    Finished stages are cached by content in the output folder and reused when nothing they read
    changed ("cached"; with --resume, "reused from the earlier run" with the key). An output
    folder holding another recipe's run is refused unless --force or --resume.

    Exit codes: 0 all gates passed, 1 a gate failed, 2 bad input, 3 a stage failed or an
    unexpected error (one line naming the step; --debug for the traceback), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM).
    """

    def work() -> None:
        from modelquant import distributed
        from modelquant.pipeline import Pipeline
        from modelquant.pipeline.artifacts import peek_out_dir, process_rank

        held = _hold_report(baseline_report)  # before the clear: it may be this folder's report
        if not dry_run:  # first thing: no earlier success may outlive this run, however it ends
            _claim_out_dir(peek_out_dir(recipe, out_dir), recipe, force=force, resume=resume)
        old = _baseline_report(baseline_report, held)
        with step("reading the recipe"):
            spec = _load(recipe, overrides)
            if old is not None:
                _check_baseline_metric(old, spec)
        world = None
        if not dry_run:  # under torchrun: join the other ranks (None in a single process)
            with step("joining the other ranks"):
                world = distributed.start(spec.train.distributed)
        pipeline = Pipeline(
            spec, recipe, out_dir, log=_progress, resume=resume, force=force, world=world
        )
        if dry_run:
            lines = pipeline.check()
            if process_rank() == 0:
                for line in lines:
                    out.print(line, highlight=False)
                err.print("[green]plan is valid[/] (dry run: nothing was run)")
            return
        if pipeline.follows:  # ranks other than 0 train alongside rank 0, then wait for it
            pipeline.follow()
            return
        report = pipeline.run()
        if old is not None:
            from modelquant.gates import with_baseline

            with step("comparing with the baseline report"):
                report = with_baseline(report, old, spec.gates.baseline, str(baseline_report))
        with step("writing the report"):
            pipeline.write_report(report)
        with step("printing the report"):
            if as_json:
                sys.stdout.write(report.model_dump_json(indent=2) + "\n")
            elif not quiet:
                from modelquant.report.console import render_console

                render_console(report, out)
        if not (quiet or as_json):  # either way report.json carries them
            for line in report.warnings:
                _say(f"[yellow]warning:[/] {escape(line)}")
        failed = [g for g in report.gates if not g.passed]
        if failed:
            names = "; ".join(f"{g.name} ({g.detail or g.value})" for g in failed)  # _fail escapes
            raise GateFailed(
                f"{len(failed)} gate(s) failed: {names}. Report: {pipeline.out_dir / 'report.json'}"
            )
        _say(f"[green]done[/]: all gates passed. Report: {pipeline.out_dir / 'report.json'}")

    _run_guarded(work, debug, quiet=quiet or as_json, log_file=log_file, resume_hint=True)
    raise typer.Exit(EXIT_OK)


def _claim_out_dir(target: Path | None, recipe: Path, *, force: bool, resume: bool) -> None:
    """Before anything else: refuse an output folder holding another recipe's run (unless
    --force or --resume), else remove the reports of the earlier run there (so that none
    outlives this run, however it ends). The pipeline checks again, with the validated recipe."""
    from modelquant.pipeline import ownership
    from modelquant.pipeline.artifacts import clear_reports

    if target is None:
        return
    identity = ownership.peek_identity(recipe)
    marker = ownership.read_marker(target)
    if marker is not None and not identity.same_as(marker) and not (force or resume):
        if identity.name is None:
            return  # the recipe cannot be read: its own error says why; the folder stays as is
        raise ownership.refusal(target, marker)
    clear_reports(target)


def _publish(
    pipeline: Any,
    role: str,
    name: str,
    doc: Any,
    as_json: bool,
    quiet: bool,
    render: Callable[[Any, Console], None],
) -> bool:
    """Write an analysis document into the output folder (rank 0, atomically, marked in the
    folder's marker) and show it: as JSON on stdout (then False: nothing more to print) or
    rendered unless quiet."""
    from modelquant.pipeline.artifacts import process_rank, write_atomic

    with step(f"writing {name}"):
        if process_rank() == 0:
            write_atomic(pipeline.out_dir / name, doc.model_dump_json(indent=2) + "\n")
            pipeline.artifacts.published[role] = name
            pipeline.artifacts.finish()
    if as_json:
        sys.stdout.write(doc.model_dump_json(indent=2) + "\n")
        return False
    if not quiet:
        render(doc, out)
    return True


@app.command()
def analyze(
    recipe: RecipeArg,
    out_dir: OutOpt = None,
    overrides: SetOpt = None,
    accuracy: Annotated[
        bool,
        typer.Option(
            "--accuracy",
            help="Also score top-1 on data.validation with only that layer quantized (all "
            "others float): one quantization and one evaluation per layer.",
        ),
    ] = False,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", help="Calibration samples whose activations are compared (in memory)."
        ),
    ] = 64,
    latency: Annotated[
        bool,
        typer.Option(
            "--latency",
            help="Instead of the sensitivity: run the recipe's stages as compress does, time and "
            "profile baseline and compressed on the CPU at evaluate.batch_sizes, print time per "
            "op type, the top nodes, the known causes of a slowdown and one line of advice; "
            "write latency.json.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print sensitivity JSON (latency JSON with --latency).")
    ] = False,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    log_file: LogFileOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Per-layer sensitivity of the recipe's quantize stage, worst first: a table, sensitivity.json.

    Activation and weight SQNR (dB) of every layer the stage quantizes, through onnxruntime's
    qdq_loss_debug; with --accuracy, top-1 with only that layer quantized. Runs the stages before
    quantize (cached like compress, same output folder), then the stage's own quantization.

    With --latency, only the latency analysis runs (no sensitivity): the recipe's own stages
    (cached like compress, same output folder), then baseline and compressed timed alternated in
    blocks and profiled with onnxruntime's profiler on the CPU (evaluate.batch_sizes,
    evaluate.threads); latency.json in the output folder. Works on any recipe that gives an
    ONNX model.

    Exit codes: 0 done, 2 bad input (e.g. the sensitivity of a recipe without a quantize stage),
    3 a stage failed or an unexpected error.
    """
    if latency:
        _run_guarded(
            lambda: _analyze_latency(
                recipe,
                out_dir,
                overrides,
                as_json=as_json,
                accuracy=accuracy,
                quiet=quiet,
                resume=resume,
                force=force,
            ),
            debug,
            quiet=quiet or as_json,
            log_file=log_file,
            resume_hint=True,
        )
        return

    def work() -> None:
        from modelquant.pipeline import Pipeline, ownership
        from modelquant.pipeline.artifacts import peek_out_dir, process_rank
        from modelquant.sensitivity import SENSITIVITY_FILE, render
        from modelquant.stages.analyze import Analyze, analysis_recipe, sensitivity_from_details

        if samples < 1:
            raise UserError(f"--samples must be at least 1, got {samples}")
        stale = peek_out_dir(recipe, out_dir)
        if not (force or resume):  # another recipe's folder is refused before anything changes
            ownership.foreign_marker(
                stale, ownership.peek_identity(recipe), force=False, resume=False
            )
        if stale is not None and process_rank() == 0:  # no old result outlives a failed rerun
            (stale / SENSITIVITY_FILE).unlink(missing_ok=True)
        with step("reading the recipe"):
            spec = _load(recipe, overrides)
            plan = analysis_recipe(spec, accuracy, samples)
        pipeline = Pipeline(
            plan, recipe, out_dir, log=_progress, resume=resume, force=force, command="analyze"
        )
        # The folder is marked with the recipe as written, not the analysis recipe made of it.
        pipeline.artifacts.identity = ownership.RecipeIdentity.of(recipe, spec.name)
        pipeline.artifacts.recipe_hash = ownership.recipe_hash(spec)
        pipeline.artifacts.keeps_reports = True  # a compress report in that folder stays valid
        stage = pipeline.stages[-1]
        assert isinstance(stage, Analyze)
        result = pipeline.run_stages()
        doc = sensitivity_from_details(result.state.lineage[-1].details)
        doc.recipe = spec.name
        doc.model = result.compressed.name  # the published file the stage analysed
        if not _publish(pipeline, "sensitivity", SENSITIVITY_FILE, doc, as_json, quiet, render):
            return
        target = pipeline.out_dir / SENSITIVITY_FILE
        _say(f"[green]done[/]: {len(doc.layers)} layers. Sensitivity: {escape(str(target))}")

    _run_guarded(work, debug, quiet=quiet or as_json, log_file=log_file, resume_hint=True)


def _analyze_latency(
    recipe: Path,
    out_dir: Path | None,
    overrides: list[str] | None,
    *,
    as_json: bool,
    accuracy: bool,
    quiet: bool,
    resume: bool,
    force: bool,
) -> None:
    """`analyze --latency`: the recipe's stages, then both models timed and profiled on the CPU."""
    from modelquant.backends import bench, get_backend
    from modelquant.latency_profile import (
        LATENCY_FILE,
        auto_details,
        explain,
        precision_label,
        render,
    )
    from modelquant.pipeline import Pipeline, ownership
    from modelquant.pipeline.artifacts import peek_out_dir, process_rank

    if accuracy:
        raise UserError(
            "--accuracy belongs to the sensitivity analysis and --latency replaces it; drop one"
        )
    stale = peek_out_dir(recipe, out_dir)
    if not (force or resume):  # another recipe's folder is refused before anything changes
        ownership.foreign_marker(stale, ownership.peek_identity(recipe), force=False, resume=False)
    if stale is not None and process_rank() == 0:  # no old result outlives a failed rerun
        (stale / LATENCY_FILE).unlink(missing_ok=True)
    with step("reading the recipe"):
        spec = _load(recipe, overrides)
    pipeline = Pipeline(
        spec, recipe, out_dir, log=_progress, resume=resume, force=force, command="analyze"
    )
    pipeline.artifacts.keeps_reports = True  # a compress report in that folder stays valid
    result = pipeline.run_stages()
    assert result.baseline.onnx_path is not None
    baseline, compressed = result.baseline.onnx_path, result.compressed
    cfg = spec.evaluate
    data = pipeline.plan.data("evaluation")
    lineage = result.state.lineage
    with step("timing baseline and compressed"):
        timed = bench.measure_latency(
            {"baseline": baseline, "compressed": compressed},
            get_backend("cpu"),
            cfg.batch_sizes,
            bench.feeds_from(data),
            cfg,
        )
    with step("profiling baseline and compressed"):  # after the timing, never among it
        doc = explain(
            baseline,
            compressed,
            data,
            cfg.batch_sizes,
            threads=bench.effective_threads(cfg.threads)[0],
            speedups=timed.speedups,
            auto=auto_details([r.details for r in lineage]),
            label=precision_label([(r.name, r.settings) for r in lineage]),
            recipe=spec.name,
            runs=50,
            max_seconds=1.0,
            log=_progress,
        )
    if not _publish(pipeline, "latency", LATENCY_FILE, doc, as_json, quiet, render):
        return
    target = pipeline.out_dir / LATENCY_FILE
    _say(
        f"[green]done[/]: {len(doc.batches)} batch size(s) profiled. Latency: {escape(str(target))}"
    )


@app.command()
def export(
    recipe: RecipeArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    overrides: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Export the recipe's torch model (factory + checkpoint) to ONNX, with its export settings."""

    def work() -> None:
        from modelquant.models import load_model, onnx_file
        from modelquant.pipeline import Pipeline

        spec = _load(recipe, overrides)
        if spec.model.onnx is not None:
            raise UserError(
                "export needs a torch model (model.factory or model.hf); this recipe names an "
                "ONNX file"
            )
        pipeline = Pipeline(spec, recipe)
        state = load_model(spec.model, list(pipeline.base_dirs))
        tmp = output.with_name(f".{output.name}.tmp")
        assert state.module is not None
        exporter = pipeline.export(state, tmp)
        onnx_file.check(tmp)
        tmp.replace(output)
        err.print(
            f"[green]wrote[/] {output} ({onnx_file.size_bytes(output):,} bytes, "
            f"opset {onnx_file.opset(output)}, {exporter} exporter)"
        )

    _run_guarded(work, debug)


@app.command()
def evaluate(
    recipe: RecipeArg,
    model: Annotated[Path, typer.Option("--model", "-m", help="ONNX model to measure.")],
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Accuracy and latency of one ONNX model on the recipe's evaluation data and backends."""

    def work() -> None:
        from rich.table import Table

        from modelquant.data import load_dataset
        from modelquant.models import onnx_file
        from modelquant.report.model import BackendStatus

        spec = _load(recipe, overrides)
        if not model.is_file():
            raise UserError(f"model file not found: {model}")
        onnx_file.check(model)
        from modelquant.data.checks import ModelSignature, check_against_model
        from modelquant.evaluator import evaluate_model
        from modelquant.pipeline.plan import Plan
        from modelquant.report.rows import fmt_ms
        from modelquant.tasks import get_task

        # The plan resolves the entry as a run would (text: the hf model's tokenizer).
        entry = Plan(spec, (recipe.resolve().parent,), _progress).resolved_spec("evaluation")
        data = check_against_model(
            "evaluation",
            load_dataset(entry, recipe.resolve().parent),
            ModelSignature.from_onnx(model),
            spec.metric_task,
            _progress,
        )
        statuses: dict[str, BackendStatus] = {}
        # One model, timed once per backend and batch size (the pipeline's timing path).
        result = evaluate_model(
            model,
            data,
            spec.evaluate,
            statuses,
            batch_size=spec.data.evaluation.batch_size,
            task=get_task(spec.metric_task),
        )
        if as_json:
            sys.stdout.write(result.model_dump_json(indent=2) + "\n")
            return
        table = Table(title=str(model), title_justify="left")
        for col in ("backend", "accuracy", "batch", "p50 ms", "p90 ms", "95% CI of p50"):
            table.add_column(col)
        for name, res in result.backends.items():
            if res.skipped:
                table.add_row(name, "skipped", "", escape(res.skipped), "", "")
                continue
            label = f"{name} (emulated)" if res.emulated else name
            acc = f"{res.accuracy:.2%}" if res.accuracy is not None else "not scored"
            for bs in spec.evaluate.batch_sizes:
                lat = res.latency_ms.get(str(bs))
                if lat is None:
                    why = res.untimed.get(str(bs), "not timed")
                    table.add_row(label, acc, str(bs), escape(why), "", "")
                    continue
                table.add_row(
                    label,
                    acc,
                    str(bs),
                    fmt_ms(lat.p50),
                    fmt_ms(lat.p90),
                    f"[{fmt_ms(lat.ci95[0])}, {fmt_ms(lat.ci95[1])}]",
                )
        out.print(table)
        threads = next(
            (
                f" · {lat.threads} thread(s) ({lat.threads_source})"
                for res in result.backends.values()
                for lat in res.latency_ms.values()
            ),
            "",
        )
        out.print(
            f"size {result.size_bytes:,} bytes · params {result.params:,}{threads}",
            highlight=False,
        )

    _run_guarded(work, debug)


@app.command()
def backends(
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """What can run here: each backend, whether it is available and why not, and its versions."""
    from rich.table import Table

    from modelquant.backends import backend_table

    rows = backend_table()
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="backends", title_justify="left")
    for col in ("backend", "available", "execution provider", "versions / reason"):
        table.add_column(col)
    for row in rows:
        avail = "[green]yes[/]" if row["available"] else "[red]no[/]"
        if row["available"] and row["emulated"]:
            avail += " (emulated)"
        detail = (
            ", ".join(f"{k} {v}" for k, v in row["versions"].items())
            if row["available"]
            else row["reason"]
        )
        table.add_row(row["name"], avail, row["execution_provider"], escape(detail))
    out.print(table)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def benchmark(
    models: Annotated[
        list[Path],
        typer.Argument(help="One ONNX model, or two to compare (baseline first)."),
    ],
    backend: Annotated[str, typer.Option("--backend", "-b", help="Backends, comma-separated.")] = (
        "cpu"
    ),
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated.")] = "1,32",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads.")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed runs per model and batch size.")] = 100,
    block: Annotated[int, typer.Option(help="Runs of one model before switching.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Latency of one or two ONNX models on random inputs, alternated in blocks, with intervals."""

    def work() -> None:
        from modelquant.benchmark import run_benchmark

        if not 1 <= len(models) <= 2:
            raise UserError("benchmark takes one model, or two to compare")
        try:
            sizes = [int(b) for b in _csv(batch_sizes)]
        except ValueError:
            raise UserError(f"--batch-sizes must be integers, got {batch_sizes!r}") from None
        result = run_benchmark(
            models,
            _csv(backend),
            sizes,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            block=block,
        )
        if as_json:
            sys.stdout.write(result.model_dump_json(indent=2) + "\n")
            return
        from modelquant.benchmark import render

        render(result, out)

    _run_guarded(work, debug)


report_app = typer.Typer(
    cls=_Group,
    help="Compare two reports (diff); render a report.json as Markdown, JUnit or HTML (render).",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")


def _fraction_flag(flag: str, value: float | None, what: str, at_most_one: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (at_most_one and 1 < value < float("inf")):
        raise UserError(f"{flag} is {what}, got {value:g} (inf turns the check off)")


@report_app.command("diff")
def report_diff(
    old: Annotated[
        Path,
        typer.Argument(
            help="The stored baseline report.json (or its run folder).",
            show_default=False,
            metavar="OLD",
        ),
    ],
    new: Annotated[
        Path,
        typer.Argument(
            help="The new report.json (or its run folder).", show_default=False, metavar="NEW"
        ),
    ],
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            help="Largest allowed drop of the compressed model's metric, as a fraction like "
            "gates.max_accuracy_drop (0.01 = 1 point). Default 0.01; inf: not judged.",
            metavar="X",
        ),
    ] = None,
    max_latency_regression: Annotated[
        float | None,
        typer.Option(
            help="Largest allowed slowdown of absolute p50 per backend and batch size (0.10 = "
            "10 % slower), called only when the new 95 % interval's low end exceeds the old "
            "one's high end times (1 + R), and judged only when both reports come from the same "
            "CPU and thread count. Default 0.10; inf: not judged.",
            metavar="R",
        ),
    ] = None,
    max_speedup_loss: Annotated[
        float | None,
        typer.Option(
            help="Largest allowed loss of the compressed model's speedup over its baseline model "
            "(measured within each run, so comparable across machines) per backend and batch "
            "size (0.10 = 10 % lower), called only when the new 95 % interval's high end is "
            "below the old one's low end times (1 - S). Default 0.10; inf: not judged.",
            metavar="S",
        ),
    ] = None,
    max_size_growth: Annotated[
        float | None,
        typer.Option(
            help="Largest allowed growth of the compressed ONNX file (0.05 = 5 % larger). "
            "Default 0.05; inf: not judged.",
            metavar="G",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Compare NEW with OLD: the compressed model's metric, size, speedup and latency per backend
    and batch.

    A table (old, new, delta, threshold, verdict), notes when the two were measured on different
    CPUs or thread counts (absolute latency is then not judged; the speedup is), and the exit
    code. Exit codes: 0 no threshold crossed, 1 one was
    (the line names it), 2 bad input (a file that is not a report, reports of different
    metrics).
    """

    def work() -> None:
        from modelquant.report.diff import (
            Thresholds,
            diff_reports,
            failure_lines,
            load_report,
            render_diff,
        )

        _fraction_flag(
            "--max-accuracy-drop", max_accuracy_drop, "a fraction (0.01 = 1 point)", True
        )
        _fraction_flag(
            "--max-latency-regression", max_latency_regression, "a fraction (0.10 = 10 % slower)"
        )
        _fraction_flag("--max-size-growth", max_size_growth, "a fraction (0.05 = 5 % larger)")
        _fraction_flag(
            "--max-speedup-loss", max_speedup_loss, "a fraction (0.10 = 10 % lower speedup)", True
        )
        given = {
            "max_accuracy_drop": max_accuracy_drop,
            "max_latency_regression": max_latency_regression,
            "max_size_growth": max_size_growth,
            "max_speedup_loss": max_speedup_loss,
        }
        thresholds = Thresholds.model_validate(
            {k: (None if v == float("inf") else v) for k, v in given.items() if v is not None}
        )
        diff = diff_reports(load_report(old), load_report(new), thresholds, str(old), str(new))
        if as_json:
            sys.stdout.write(diff.model_dump_json(indent=2) + "\n")
        else:
            render_diff(diff, out)
        if diff.failed:
            raise GateFailed(
                f"{len(diff.failed)} threshold(s) crossed against {old}: "
                + "; ".join(failure_lines(diff))
            )
        err.print(f"[green]no threshold crossed[/] against {escape(str(old))}", highlight=False)

    _run_guarded(work, debug)


@report_app.command("render")
def report_render(
    report: Annotated[
        Path,
        typer.Argument(
            help="A report.json (or its run folder).", show_default=False, metavar="REPORT"
        ),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="A report format: md, junit, json, html (those output.formats accepts).",
            metavar="FORMAT",
        ),
    ] = "md",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="File to write (default: stdout).", metavar="FILE"),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Render a report.json in another format, from the report alone (nothing is rerun).

    Writes the file atomically (a temp name, then a rename). Unlike compress, it does not append
    to $GITHUB_STEP_SUMMARY. Exit codes: 0 written, 2 bad input.
    """

    def work() -> None:
        from modelquant.pipeline.artifacts import write_atomic
        from modelquant.report import file_renderers
        from modelquant.report.diff import load_report

        renderers = file_renderers()
        if fmt not in renderers:
            raise UserError(
                f"unknown report format '{fmt}'; use one of: {', '.join(sorted(renderers))}"
            )
        text = renderers[fmt][1](load_report(report))
        if out_file is None:
            sys.stdout.write(text)
            return
        if out_file.is_dir():
            raise UserError(f"--out {out_file} is a folder; give a file name")
        try:
            write_atomic(out_file, text)
        except OSError as exc:
            raise UserError(
                f"cannot write {out_file} ({exc.strerror or type(exc).__name__}); give --out a "
                "file in a folder you can write to"
            ) from None
        err.print(f"[green]wrote[/] {escape(str(out_file))} ({fmt})", highlight=False)

    _run_guarded(work, debug)


@app.command()
def version() -> None:
    """Print modelquant's version and the versions of the libraries it drives (= --version)."""
    _print_version()


BUNDLED_RECIPES = Path(__file__).resolve().parent / "recipes"


def _recipe_dirs() -> list[Path]:
    """./recipes first (a checkout or a project's own), then the recipes shipped in the package."""
    dirs = [Path.cwd() / "recipes", BUNDLED_RECIPES]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def _find_recipe(name: str) -> Path:
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    for d in _recipe_dirs():
        for path in (d / name, d / f"{name}.yaml"):
            if path.is_file():
                return path
    raise UserError(f"no recipe named '{name}' (see `modelquant recipes list`)")


@recipes_app.command("list")
def recipes_list() -> None:
    """List the recipes in ./recipes and those shipped with modelquant: file, name, description."""
    import yaml

    seen = set()
    for d in _recipe_dirs():
        for path in sorted(d.glob("*.yaml")):
            if path.name in seen:
                continue
            seen.add(path.name)
            text = path.read_text(encoding="utf-8")
            first = text.splitlines()[:1]
            about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError:
                loaded = None
            name = loaded.get("name", path.stem) if isinstance(loaded, dict) else "(invalid YAML)"
            out.print(f"{path.stem:28} {name!s:28} {about}", highlight=False, markup=False)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name or file.", metavar="NAME")],
) -> None:
    """Print a recipe file exactly as it is (`recipes show NAME > my.yaml` copies it)."""

    def show() -> None:
        sys.stdout.write(_find_recipe(name).read_text(encoding="utf-8"))
        sys.stdout.flush()

    _run_guarded(show, False)


@recipes_app.command("validate")
def recipes_validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files.", show_default=False)],
) -> None:
    """Validate recipe files (syntax, keys, types); exit 2 if any is invalid."""
    from modelquant.recipe import load_recipe

    bad = 0
    for path in files:
        try:
            load_recipe(path)
            out.print(f"[green]ok[/]  {path}", highlight=False)
        except UserError as exc:
            bad += 1
            err.print(f"[red]bad input:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(UserError.exit_code)


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the JSON Schema of the recipe format."""
    from modelquant.recipe import recipe_json_schema

    sys.stdout.write(json.dumps(recipe_json_schema(), indent=2) + "\n")


def main() -> None:
    app()
