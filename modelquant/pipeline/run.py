"""Running a recipe: load the model, run the stages in order (cached by content), publish their
models, then (unless asked not to) measure baseline and compressed and build the report."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelquant import distributed
from modelquant.distributed import World
from modelquant.errors import StageError, UserError, step
from modelquant.pipeline import cache, ownership
from modelquant.pipeline.artifacts import Artifacts, clear_reports, default_out_dir
from modelquant.pipeline.plan import Plan
from modelquant.recipe import Recipe
from modelquant.report.model import Report
from modelquant.stages import Stage, StageContext
from modelquant.stages.export import ExportConfig
from modelquant.state import ModelState, StageRecord, export_state


@dataclass
class StagesResult:
    """What running the stages gave: the final state and the published ONNX files."""

    baseline: ModelState
    """The model as loaded, with `onnx_path` set to its published FP32 ONNX export."""
    state: ModelState
    """The model after the last stage (lineage included)."""
    compressed: Path
    """The compressed model as a published ONNX file."""
    states: list[ModelState] = dataclasses.field(default_factory=list)
    """The model after each stage, in order (scored step by step in the report)."""


class Pipeline:
    """One recipe run: `check()` validates what is cheap; `run()` does the work and returns the
    report; `run_stages()` stops before measuring (for analysis)."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_path: Path,
        out_dir: Path | None = None,
        log: Callable[[str], None] = lambda _: None,
        *,
        resume: bool = False,
        force: bool = False,
        command: str = "compress",
        world: World | None = None,
    ) -> None:
        self.recipe = recipe
        self.world = world
        """The ranks of a torchrun launch (`distributed.start`), None in a single process."""
        self.recipe_path = recipe_path
        self.base_dirs = (recipe_path.resolve().parent,)
        self.log = log
        self.resume = resume
        """Say which stages came from an earlier run (and take over another recipe's folder)."""
        self.artifacts = Artifacts(default_out_dir(recipe.name, out_dir or recipe.output.dir))
        self.artifacts.identity = ownership.RecipeIdentity.of(recipe_path, recipe.name)
        self.artifacts.recipe_hash = ownership.recipe_hash(recipe)
        self.artifacts.command = command
        self.artifacts.take_over = force or resume
        self.reused: list[int] = []
        """Indexes of the stages taken from the cache in this run."""
        self.cache = cache.StageCache(self.artifacts.cache_dir, writes=self.artifacts.writes)
        self.plan = Plan(recipe, self.base_dirs, log)

    @property
    def out_dir(self) -> Path:
        return self.artifacts.out_dir

    @property
    def stages(self) -> list[Stage]:
        return self.plan.stages

    def check(self) -> list[str]:
        """What `--dry-run` prints: the checked plan (raises UserError on bad input)."""
        with step("planning"):
            lines = self.plan.check()
        return [*lines, f"output: {self.out_dir}"]

    # ------------------------------------------------------------------ export
    def export_config(self) -> ExportConfig:
        for stage in self.stages:
            if isinstance(stage.config, ExportConfig):
                return stage.config
        return ExportConfig()

    def export(self, state: ModelState, path: Path) -> str:
        """Export the state's torch module with the recipe's export settings, traced on
        evaluation data; returns the exporter's name."""
        cfg = self.export_config()
        sample = self.plan.data("evaluation").sample_batch(
            2 if cfg.dynamic_batch else cfg.batch_size
        )
        return export_state(
            state,
            sample,
            path,
            opset=cfg.opset,
            dynamic_batch=cfg.dynamic_batch,
            output_names=cfg.output_names,
        )

    def _export_cached(self, state: ModelState, previous: str, label: str) -> Path:
        cfg = self.export_config()
        assert state.module is not None
        key = cache.hash_parts(
            previous,
            cache.module_hash(state.module),
            cfg.model_dump(mode="json"),
            self.plan.data("evaluation").content_hash(),
            cache.library_versions(),
        )

        def make(path: Path) -> None:
            self.log(f"exporting the {label} model to ONNX")
            self.export(state, path)

        return self.cache.file(self.cache.root / f"{label}-{key[:16]}", "model.onnx", make)

    def context(self, baseline: ModelState) -> StageContext:
        """The context every stage of this run gets (each with its own work folder)."""
        return StageContext(
            seed=self.recipe.seed,
            data=self.plan.data,
            data_spec=self.plan.data_spec,
            baseline=baseline,
            base_dirs=self.base_dirs,
            targets=self.plan.targets,
            cache_dir=self.cache.scratch,
            log=self.log,
            task=self.recipe.metric_task,
            timing=self.plan.timing(),
            budget=self.plan.budget(),
            world=self.world,
        )

    # ------------------------------------------------------------------ run
    def run(self) -> Report:
        """Stages, then measurement; the report (written by `write_report`)."""
        from modelquant.pipeline.measure import measure

        result = self.run_stages()
        with step("measuring"):
            return measure(self, result)

    @property
    def follows(self) -> bool:
        """A rank other than 0 under torchrun: it trains alongside rank 0 and nothing else."""
        return self.world is not None and not self.world.leads

    def follow(self) -> None:
        """What a rank other than 0 does: check, load, and run the torch stages in lockstep with
        rank 0 (the first stage that is not one ends its part); it writes nothing."""
        self._stages()

    def run_stages(self) -> StagesResult:
        """Check, load the model, run every stage (or take it from the cache) and publish."""
        result = self._stages()
        assert result is not None
        return result

    def _stages(self) -> StagesResult | None:
        from modelquant.models import model_key

        self.check()
        self.artifacts.prepare()
        if self.resume:
            self.log(self._resume_line())
        with step("loading the model"):
            loaded = self.plan.model()
            key = model_key(self.recipe.model, list(self.base_dirs))
        baseline = loaded
        if not self.follows:
            with step("exporting the baseline"):
                if loaded.onnx_path is not None:
                    source = loaded.onnx_path
                else:
                    source = self._export_cached(loaded, key, "baseline")
                self.artifacts.publish_onnx("baseline", source, "baseline.onnx")
            baseline = loaded.replace(onnx_path=self.artifacts.path("baseline"))
        ctx = self.context(baseline)
        try:
            state, key, last_published, states = self._each_stage(ctx, loaded, key)
        finally:
            self.cache.close()
        if self.follows:
            return None
        if self.resume:
            self.log(self._resumed_line())
        with step("exporting the compressed model"):
            if not state.lineage:
                self.artifacts.alias("compressed", "baseline")
            elif state.onnx_path is not None and last_published:
                self.artifacts.published["compressed"] = last_published
            else:
                final = self._export_cached(state, key, "final")
                self.artifacts.publish_onnx("compressed", final, "model.compressed.onnx")
        return StagesResult(baseline, state, self.artifacts.path("compressed"), states)

    def _each_stage(
        self, ctx: StageContext, state: ModelState, key: str
    ) -> tuple[ModelState, str, str, list[ModelState]]:
        """Run (or take from the cache) the stages in order; (final state, its key, the name of
        the last published ONNX file, the state after each stage). A follower stops at the first
        stage that is not torch."""
        states: list[ModelState] = []
        last_published = ""
        for i, stage in enumerate(self.stages, 1):
            if self.follows and stage.produces != "torch":
                break  # rank 0 alone exports, quantizes and measures
            before = state
            with step(f"stage {i} {stage.name}"):  # publishing included: Ctrl-C names the stage
                key = cache.stage_key(
                    key,
                    cache.state_content_hash(state),
                    stage,
                    ctx,
                    {r: self.plan.data(r).content_hash() for r in stage.reads()},
                )
                state = self._run_stage(i, stage, state, ctx, key)
                states.append(state)
                if stage.produces == "onnx" and state.onnx_path is not None:
                    name = self.artifacts.unique(stage.artifact_name(), i)
                    last_published = self.artifacts.publish_onnx(
                        f"stage{i}.{stage.name}", state.onnx_path, name
                    )
                    for backend, path in state.variants.items():
                        if before.variants.get(backend) != path:
                            vname = self.artifacts.unique(stage.variant_name(backend), i)
                            self.artifacts.publish_onnx(f"variant.{backend}", path, vname)
        return state, key, last_published, states

    def _run_stage(
        self, index: int, stage: Stage, state: ModelState, ctx: StageContext, key: str
    ) -> ModelState:
        settings = stage.config.model_dump(mode="json")
        entry = self.cache.entry(index, stage.name, key)
        # Torch stages run on every rank of a torchrun launch, in lockstep (distributed.lockstep).
        together = self.world if stage.produces == "torch" else None
        with distributed.lockstep(together, stage.name):
            hit = self.cache.load(entry, stage, state, ctx)
            if together is not None:
                hit = self._agreed_hit(hit, entry, stage, state, ctx)
            if hit is None:
                return self._run_fresh(index, stage, state, ctx, entry, settings)
        cached, meta = hit
        self.reused.append(index)
        if self.resume:
            self.log(f"stage {index} {stage.name}: reused from the earlier run (key {key[:8]})")
        else:
            self.log(f"stage {index} {stage.name}: cached")
        record = StageRecord(stage.name, settings, meta["seconds"], meta["details"], cached=True)
        return cached.replace(lineage=(*state.lineage, record))

    def _agreed_hit(
        self,
        hit: tuple[ModelState, dict[str, Any]] | None,
        entry: Path,
        stage: Stage,
        state: ModelState,
        ctx: StageContext,
    ) -> tuple[ModelState, dict[str, Any]] | None:
        """Every rank takes rank 0's word on a torch stage's cache entry: rank 0 found none, so
        all train; rank 0 found one, so none trains, and a rank without it (another machine's
        disk) gets its files from rank 0."""
        assert self.world is not None
        flags = distributed.all_flags(self.world, hit is not None)
        if not flags[0]:
            return None
        if all(flags):
            return hit
        files = None
        if self.world.leads:
            files = {p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()}
        received = distributed.share_files(self.world, files)
        if hit is not None:
            return hit
        with tempfile.TemporaryDirectory(prefix="modelquant-entry-") as folder:
            for name, data in received.items():
                (Path(folder) / name).write_bytes(data)
            hit = self.cache.load(Path(folder), stage, state, ctx)
        if hit is None:
            raise StageError(stage.name, "rank 0's cached entry did not load on this rank")
        return hit

    def _run_fresh(
        self,
        index: int,
        stage: Stage,
        state: ModelState,
        ctx: StageContext,
        entry: Path,
        settings: dict[str, Any],
    ) -> ModelState:
        work = self.cache.begin(entry)
        try:  # from here until the entry is in place, any way out removes the work folder
            stage_ctx = dataclasses.replace(ctx, work_dir=work, details={})
            self.log(f"stage {index} {stage.name}: running")
            start = time.perf_counter()
            try:
                new = stage.run(state, stage_ctx)
            except (UserError, StageError):
                raise
            except Exception as exc:
                raise StageError(stage.name, f"{type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            record = StageRecord(stage.name, settings, seconds, stage_ctx.details)
            new = new.replace(lineage=(*state.lineage, record))
            if stage.produces == "torch":
                new = new.replace(onnx_path=None)
            return self.cache.commit(work, entry, new, record)
        except BaseException:  # errors, and Ctrl-C / SIGTERM: no half-made entry survives
            self.cache.abandon(work)
            raise

    def write_report(self, report: Report) -> None:
        """Every requested format through its renderer, each atomically; report.json last, so its
        presence means the whole run finished."""
        from modelquant.report import file_renderers

        renderers = file_renderers()
        try:
            for fmt in [f for f in self.recipe.output.formats if f != "json"] + ["json"]:
                name, render = renderers[fmt]
                self.artifacts.write_text(name, name, render(report))
        except BaseException:  # interrupted or failed half-way: no report.md without its json
            if self.artifacts.writes:
                clear_reports(self.out_dir)
            raise
        if self.artifacts.writes:  # GitHub Actions: the same Markdown on the run's page
            from modelquant.report.step_summary import append_step_summary

            append_step_summary(report)
        self.artifacts.finish()

    # ------------------------------------------------------------------ resume
    def _resume_line(self) -> str:
        """What --resume found in the folder, said before the stages run."""
        previous, where = self.artifacts.previous, self.out_dir
        assert self.artifacts.identity is not None
        if previous is None:
            if any(self.cache.root.glob("[0-9]*-*")):
                return f"resume: reusing the finished stages in {where} that match this recipe"
            return f"resume: nothing to resume in {where} (no earlier run); every stage runs"
        if not self.artifacts.identity.same_as(previous):
            return (
                f"resume: taking {where} over from recipe '{previous.get('recipe')}'; its "
                "finished stages that match this recipe's are reused"
            )
        if previous.get("recipe_sha256") != self.artifacts.recipe_hash:
            return (
                f"resume: the recipe changed since the run in {where}; the stages before the "
                "first changed one are reused, the rest rerun"
            )
        return f"resume: continuing the run in {where}"

    def _resumed_line(self) -> str:
        total = len(self.stages)
        if not self.reused:
            return f"resume: no finished stage matched; all {total} stage(s) ran"
        ran = [i for i in range(1, total + 1) if i not in self.reused]
        said = ", ".join(str(i) for i in self.reused)
        rest = f"; ran {', '.join(str(i) for i in ran)}" if ran else ""
        return f"resume: reused {len(self.reused)} of {total} stage(s) ({said}){rest}"
