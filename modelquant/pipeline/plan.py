"""Planning a run: recipe -> ordered stages, with files, packages and data checked before anything
runs (what `--dry-run` prints)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from modelquant.data import Dataset, load_dataset
from modelquant.errors import UserError
from modelquant.recipe import DataSpec, Recipe
from modelquant.stages import Stage, registered_stages
from modelquant.stages.base import Budget, Timing
from modelquant.state import ModelState

DATA_ROLES = ("train", "calibration", "validation", "evaluation")


class Plan:
    """The stages a recipe asks for and the data they read, checked without running anything."""

    def __init__(
        self, recipe: Recipe, base_dirs: tuple[Path, ...], log: Callable[[str], None]
    ) -> None:
        self.recipe = recipe
        self.base_dirs = base_dirs
        self.log = log
        self.stages: list[Stage] = [
            registered_stages()[name](cfg) for name, cfg in recipe.stage_list()
        ]
        for i, stage in enumerate(self.stages):
            stage.bind(self.stages[i + 1 :])
        self.targets: tuple[str, ...] = tuple(recipe.evaluate.backends)
        self._data: dict[str, Dataset] = {}
        self._model: ModelState | None = None

    def model(self) -> ModelState:
        """The model as the recipe names it, loaded once (the data checks and the run share it)."""
        from modelquant.models import load_model

        if self._model is None:
            self._model = load_model(self.recipe.model, list(self.base_dirs))
        return self._model

    def timing(self) -> Timing:
        """How the run times models, for stages that time candidates (`Stage.searches`)."""
        from modelquant.environment import cpu_description

        ev = self.recipe.evaluate
        cpu, flags = cpu_description()
        return Timing(
            batch_sizes=tuple(ev.batch_sizes),
            threads=ev.threads,
            block=ev.block,
            cpu=cpu,
            cpu_flags=tuple(flags),
        )

    def budget(self) -> Budget | None:
        """The metric drop the recipe's gates allow, for stages that choose by accuracy."""
        g = self.recipe.gates
        if g.max_accuracy_drop is not None:
            return Budget(g.max_accuracy_drop, "gates.max_accuracy_drop")
        if g.min_cosine is not None:
            return Budget(1.0 - g.min_cosine, "gates.min_cosine")
        return None

    # ------------------------------------------------------------------ data
    def data_spec(self, role: str) -> DataSpec | None:
        """The recipe's entry for a role; calibration falls back to train, validation to
        evaluation (said once in the log, and stages name the data their figures are on)."""
        d = self.recipe.data
        if role == "train":
            return d.train
        if role == "calibration":
            return d.calibration or d.train
        if role == "validation":
            return d.validation or d.evaluation
        if role == "evaluation":
            return d.evaluation
        raise ValueError(f"unknown data role {role!r} (known: {', '.join(DATA_ROLES)})")

    def data(self, role: str) -> Dataset:
        """The data of a role, loaded once per data entry (roles that fall back to another entry
        share its data set)."""
        key = self._key(role)
        if key not in self._data:
            self._data[key] = load_dataset(self.resolved_spec(role), self.base_dirs[0])
        return self._data[key]

    def _key(self, role: str) -> str:
        return self.resolved_spec(role).model_dump_json()

    def resolved_spec(self, role: str) -> DataSpec:
        """The entry a role reads, as loaded: defaults that depend on the model filled in."""
        spec = self.data_spec(role)
        if spec is None:
            raise UserError(f"a stage needs data.{role}, and the recipe has none")
        if spec.source == "text" and spec.tokenizer is None and self.recipe.model.hf is not None:
            # Text is tokenized by the model's own tokenizer unless the entry names another.
            from modelquant.models.hf import model_dir

            folder = model_dir(self.recipe.model.hf, list(self.base_dirs))
            spec = spec.model_copy(update={"tokenizer": str(folder)})
        return spec

    def roles(self) -> list[str]:
        """The data roles this run reads: evaluation always, plus what the stages read."""
        roles = {"evaluation"}
        for stage in self.stages:
            roles.update(stage.reads())
        return [r for r in DATA_ROLES if r in roles]

    # ------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        """Check files, packages, data and the stage chain; the plan as lines. Raises UserError."""
        self.model()  # a missing file, an unimportable factory, a checkpoint that does not fit
        m = self.recipe.model
        hf = self.model().hf
        named = f"{m.hf} (hf, {hf.task})" if hf is not None else m.factory or m.onnx
        lines = [f"model: {named}"]
        lines += self._check_chain()
        self._check_packages()
        self._check_data()
        for role in self.roles():
            data = self.data(role)
            lines.append(f"data.{role}: {data.description}, {len(data)} samples")
        ev = self.recipe.evaluate
        lines.append(f"evaluate: backends {', '.join(ev.backends)}; batch sizes {ev.batch_sizes}")
        return lines

    def _check_data(self) -> None:
        """Every data entry the run reads, checked against the model (cast or renamed where that
        is safe), then for overlap with the evaluation data."""
        from modelquant.data.checks import (
            ModelSignature,
            check_against_model,
            check_overlap,
            entry_names,
        )

        model = self.model()
        signature = (
            ModelSignature.from_onnx(model.onnx_path)
            if model.onnx_path is not None
            else ModelSignature.from_torch(model.module)
        )
        roles = self.roles()
        if "validation" in roles and self.recipe.data.validation is None:
            self.log(
                "no data.validation: stages report their accuracies on data.evaluation; "
                "add a validation entry so that settings are not chosen on gated data"
            )
        names = entry_names(self.recipe, roles)
        checked: set[str] = set()
        # Evaluation first: a torch model's ONNX export takes its input names from that data.
        for role in sorted(roles, key=lambda r: r != "evaluation"):
            key = self._key(role)
            if key not in checked:
                checked.add(key)
                self._data[key] = check_against_model(
                    role, self.data(role), signature, self.recipe.metric_task, self.log, names[role]
                )
            if role == "evaluation":
                signature = signature.named_after(self._data[key])
        own = [r for r in roles if r != "validation" or self.recipe.data.validation is not None]
        check_overlap({r: (self.resolved_spec(r), self.data(r)) for r in own}, names)

    def _check_chain(self) -> list[str]:
        onnx_model = self.recipe.model.onnx is not None
        form = "onnx" if onnx_model else "torch"
        exported_at: int | None = None
        lines = []
        for i, stage in enumerate(self.stages, 1):
            if stage.needs not in ("any", form):
                raise UserError(
                    f"stage {i} '{stage.name}' needs a {stage.needs} model: "
                    + (self._chain_fix(stage, onnx_model, exported_at))
                )
            if stage.produces != "any":
                if stage.produces == "onnx" and form == "torch":
                    exported_at = i
                form = stage.produces
            settings = stage.config.model_dump(mode="json", exclude_defaults=True)
            lines.append(
                f"stage {i}: {stage.name} {json.dumps(settings) if settings else ''}".rstrip()
            )
        return lines

    @staticmethod
    def _chain_fix(stage: Stage, onnx_model: bool, exported_at: int | None) -> str:
        if stage.needs == "onnx":
            return "add an export stage before it"
        if onnx_model:
            return (
                "the recipe's model is an ONNX file; give a torch model (model.factory and "
                f"model.checkpoint) to {stage.name} it, or drop the stage"
            )
        return f"move it before the export in stage {exported_at}"

    def _check_packages(self) -> None:
        from modelquant import extras

        for i, stage in enumerate(self.stages, 1):
            for module, purpose in stage.requires(self.targets).items():
                if not extras.available(module):
                    raise extras.missing(module, f"stage {i} {stage.name}: {purpose}")
