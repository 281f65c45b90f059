"""Run a recipe: stages in order (cached by content hash), then the evaluator, then the report."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelquant import __version__
from modelquant.data import Dataset, load_dataset
from modelquant.errors import StageError, UserError
from modelquant.recipe import DataSpec, Recipe
from modelquant.report.model import Report, StageEntry
from modelquant.stages import Stage, StageContext, registered_stages
from modelquant.stages.export import ExportConfig
from modelquant.state import ModelState, StageRecord, export_onnx

REPORT_FILES = ("report.json", "report.md")


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp name in the same folder, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Pipeline:
    """One recipe run: `plan()` checks what is cheap; `run()` does the work, returns the report."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_path: Path,
        out_dir: Path | None = None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.recipe = recipe
        self.recipe_path = recipe_path
        self.base_dirs = [recipe_path.resolve().parent]
        self.out_dir = (out_dir or recipe.output.dir or Path("runs") / recipe.name).absolute()
        self.cache_dir = self.out_dir / ".cache"
        self.log = log
        self._data: dict[str, Dataset] = {}
        self.stages: list[Stage] = [
            registered_stages()[name](cfg) for name, cfg in recipe.stage_list()
        ]

    # ------------------------------------------------------------------ data
    def data_spec(self, role: str) -> DataSpec:
        d = self.recipe.data
        spec = {
            "train": d.train,
            "validation": d.validation,
            "calibration": d.calibration or d.train,
            "evaluation": d.evaluation,
        }
        found = spec.get(role)
        if found is None:
            raise UserError(f"a stage needs data.{role}, and the recipe has none")
        return found

    def data(self, role: str) -> Dataset:
        if role not in self._data:
            self._data[role] = load_dataset(self.data_spec(role), self.base_dirs[0])
        return self._data[role]

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[str]:
        """Check files, data and the stage chain without running anything; the plan as lines."""
        from modelquant.models import check_model_spec

        check_model_spec(self.recipe.model, self.base_dirs)
        lines = [f"model: {self.recipe.model.factory or self.recipe.model.onnx}"]
        form = "onnx" if self.recipe.model.onnx else "torch"
        roles = {"evaluation"}
        for i, stage in enumerate(self.stages, 1):
            if stage.needs != "any" and stage.needs != form:
                fix = (
                    "add an export stage before it"
                    if stage.needs == "onnx"
                    else "move it before export"
                )
                raise UserError(f"stage {i} '{stage.name}' needs a {stage.needs} model: {fix}")
            if stage.produces != "any":
                form = stage.produces
            roles.update(stage.data_roles)
            settings = stage.config.model_dump(mode="json", exclude_defaults=True)
            lines.append(
                f"stage {i}: {stage.name} {json.dumps(settings) if settings else ''}".rstrip()
            )
        for role in sorted(roles):
            data = self.data(role)
            lines.append(f"data.{role}: {data.description}, {len(data)} samples")
        ev = self.recipe.evaluate
        lines.append(f"evaluate: backends {', '.join(ev.backends)}; batch sizes {ev.batch_sizes}")
        lines.append(f"output: {self.out_dir}")
        return lines

    # ------------------------------------------------------------------ run
    def run(self) -> Report:
        from modelquant.models import load_model, onnx_file

        self.plan()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:  # a stale report must not outlive a failed rerun
            (self.out_dir / name).unlink(missing_ok=True)
        baseline = load_model(self.recipe.model, self.base_dirs)
        key = self._model_key()
        baseline_onnx = self._baseline_onnx(baseline, key)
        ctx = StageContext(
            recipe=self.recipe,
            base_dir=self.base_dirs[0],
            out_dir=self.out_dir,
            cache_dir=self.cache_dir,
            baseline=baseline.replace(onnx_path=baseline_onnx),
            data=self.data,
            log=self.log,
        )
        state = baseline
        artifacts = {"baseline": "baseline.onnx"}
        used_names: set[str] = set(artifacts.values())
        last_published = ""
        for i, stage in enumerate(self.stages, 1):
            settings = stage.config.model_dump(mode="json")
            key = _hash(
                key,
                stage.name,
                settings,
                self.recipe.seed,
                [self.data_spec(r).model_dump(mode="json") for r in stage.data_roles],
            )
            before = state
            state = self._run_stage(i, stage, state, ctx, key, settings)
            if stage.produces == "onnx" and state.onnx_path is not None:
                name = self._unique(stage.artifact_name(), i, used_names)
                onnx_file.copy(state.onnx_path, self.out_dir / name)
                artifacts[f"stage{i}.{stage.name}"] = last_published = name
                for backend, path in state.variants.items():
                    if before.variants.get(backend) != path:
                        vname = self._unique(stage.variant_name(backend), i, used_names)
                        onnx_file.copy(path, self.out_dir / vname)
                        artifacts[f"variant.{backend}"] = vname
        compressed = self._final_onnx(state, key)
        if compressed == baseline_onnx:
            artifacts["compressed"] = "baseline.onnx"
        elif compressed == state.onnx_path and last_published:
            artifacts["compressed"] = last_published
        else:
            artifacts["compressed"] = self._publish(compressed, "model.compressed.onnx")
        return self._measure(state, baseline_onnx, compressed, artifacts)

    @staticmethod
    def _unique(name: str, index: int, used: set[str]) -> str:
        if name in used:
            name = name.replace(".onnx", f".{index}.onnx")
        used.add(name)
        return name

    def _model_key(self) -> str:
        """Hash of what the model is: spec, checkpoint/ONNX bytes, the factory's source."""
        from modelquant.models import factory, resolve_path

        spec = self.recipe.model
        parts: list[Any] = [spec.model_dump(mode="json"), __version__, _library_versions()]
        if spec.onnx is not None:
            parts.append(_file_hash(resolve_path(spec.onnx, self.base_dirs, "ONNX model")))
        else:
            assert spec.factory is not None
            func = factory.import_factory(spec.factory, self.base_dirs)
            source = inspect.getsourcefile(func)
            parts.append(_file_hash(Path(source)) if source else spec.factory)
            if spec.checkpoint is not None:
                parts.append(
                    _file_hash(resolve_path(spec.checkpoint, self.base_dirs, "checkpoint"))
                )
        return _hash(*parts)

    def export_config(self) -> ExportConfig:
        for stage in self.stages:
            if isinstance(stage.config, ExportConfig):
                return stage.config
        return ExportConfig()

    def export(self, module: Any, path: Path) -> Path:
        """Export a torch module with the recipe's export settings, traced on evaluation data."""
        cfg = self.export_config()
        sample = self.data("evaluation").sample_batch(2 if cfg.dynamic_batch else cfg.batch_size)
        return export_onnx(
            module,
            sample,
            path,
            opset=cfg.opset,
            dynamic_batch=cfg.dynamic_batch,
            output_names=cfg.output_names,
        )

    def _export_cached(self, module: Any, key: str, label: str) -> Path:
        cfg = self.export_config()
        entry = self.cache_dir / f"{label}-{_hash(key, cfg.model_dump(mode='json'))[:16]}"
        path = entry / "model.onnx"
        if not path.is_file():
            work = entry.with_name(entry.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            self.export(module, work / "model.onnx")
            os.replace(work, entry)
        return path

    def _baseline_onnx(self, baseline: ModelState, key: str) -> Path:
        """The baseline as an FP32 ONNX file, exported with the recipe's export settings."""
        from modelquant.models import onnx_file

        if baseline.onnx_path is not None:
            source = baseline.onnx_path
        else:
            self.log("exporting the baseline to ONNX")
            source = self._export_cached(baseline.module, key, "baseline")
        return onnx_file.copy(source, self.out_dir / "baseline.onnx")

    def _final_onnx(self, state: ModelState, key: str) -> Path:
        """The compressed model as ONNX: the last ONNX stage's output, or an export of it."""
        if state.onnx_path is not None:
            return state.onnx_path
        if not state.lineage:
            return self.out_dir / "baseline.onnx"
        self.log("exporting the compressed torch model to ONNX")
        return self._export_cached(state.module, key, "final")

    def _publish(self, path: Path, name: str) -> str:
        from modelquant.models import onnx_file

        onnx_file.copy(path, self.out_dir / name)
        return name

    def _run_stage(
        self,
        index: int,
        stage: Stage,
        state: ModelState,
        ctx: StageContext,
        key: str,
        settings: dict[str, Any],
    ) -> ModelState:
        entry = self.cache_dir / f"{index:02d}-{stage.name}-{key[:16]}"
        if stage.produces == "onnx" and (entry / "details.json").is_file():
            saved = json.loads((entry / "details.json").read_text())
            self.log(f"stage {index} {stage.name}: cached")
            record = StageRecord(
                stage.name, settings, saved["seconds"], saved["details"], cached=True
            )
            variants = {b: entry / name for b, name in saved.get("variants", {}).items()}
            return state.replace(
                onnx_path=entry / "model.onnx",
                variants={**state.variants, **variants},
                lineage=(*state.lineage, record),
            )
        work = entry.with_name(entry.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
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
        if stage.produces != "onnx":
            return new
        own_variants = {
            b: str(p.relative_to(work)) for b, p in new.variants.items() if p.is_relative_to(work)
        }
        (work / "details.json").write_text(
            json.dumps(
                {"seconds": seconds, "details": stage_ctx.details, "variants": own_variants},
                default=str,
            )
        )
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(work, entry)
        assert new.onnx_path is not None
        return new.replace(
            onnx_path=_moved(new.onnx_path, work, entry),
            variants={k: _moved(v, work, entry) for k, v in new.variants.items()},
        )

    def _measure(
        self, state: ModelState, baseline_onnx: Path, compressed: Path, artifacts: dict[str, str]
    ) -> Report:
        from modelquant import gates
        from modelquant.environment import environment
        from modelquant.evaluator import evaluate_models

        env = environment()
        self.log("measuring baseline and compressed")
        variants = {
            key.removeprefix("variant."): self.out_dir / name
            for key, name in artifacts.items()
            if key.startswith("variant.")
        }
        measured = evaluate_models(
            baseline_onnx,
            compressed,
            self.data("evaluation"),
            self.recipe.evaluate,
            env.backends,
            variants,
            self.log,
        )
        base, comp, deltas = measured.baseline, measured.compressed, measured.deltas
        base.path = "baseline.onnx"
        comp.path = artifacts["compressed"]
        for backend, result in measured.variants.items():
            result.path = artifacts[f"variant.{backend}"]
        judged = gates.judge(self.recipe, base, comp, deltas)
        artifacts = {**artifacts, "report.json": "report.json"}
        if "md" in self.recipe.output.formats:
            artifacts["report.md"] = "report.md"
        return Report(
            modelquant_version=__version__,
            status="passed" if all(g.passed for g in judged) else "gate_failed",
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            recipe=self.recipe.model_dump(mode="json"),
            environment=env,
            stages=[
                StageEntry(
                    name=r.name,
                    settings=r.settings,
                    seconds=r.seconds,
                    cached=r.cached,
                    details=r.details,
                )
                for r in state.lineage
            ],
            baseline=base,
            compressed=comp,
            variants=measured.variants,
            deltas=deltas,
            gates=judged,
            artifacts=artifacts,
        )

    def write_report(self, report: Report) -> None:
        """report.json (the source of truth) and the other requested formats, each atomically."""
        from modelquant.report.markdown import render_markdown

        if "md" in self.recipe.output.formats:
            write_atomic(self.out_dir / "report.md", render_markdown(report))
        # report.json last: its presence means the whole run finished.
        write_atomic(self.out_dir / "report.json", report.model_dump_json(indent=2))


def _moved(path: Path, old: Path, new: Path) -> Path:
    try:
        return new / path.relative_to(old)
    except ValueError:
        return path


def _library_versions() -> dict[str, str | None]:
    from modelquant.environment import package_version

    return {d: package_version(d) for d in ("torch", "onnx", "onnxruntime", "onnxruntime-qnn")}
